"""``vitkit weights list/download/convert`` and ``vitkit export``, end to end (no network: urlopen is faked)."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

import vitkit
from vitkit.cli import main
from vitkit.models.weights import CHECKPOINTS, checkpoint_named, weights_dirs

from conftest import FIXTURES, run_cli

LEGACY = FIXTURES / "legacy_keras2"
PRED = json.loads((LEGACY / "seed_tiny_pred.json").read_text())
NAME = "ViT-B_16_imagenet21k"
PAYLOAD = b"\x93NUMPY fake checkpoint bytes " * 1000


class FakeResponse:
    """What urlopen returns: ``headers`` and ``read``; ``fail_after`` bytes then the connection drops."""

    def __init__(self, payload: bytes, fail_after: int | None = None, length: int | None = None,
                 error: BaseException | None = None):
        self.stream = io.BytesIO(payload)
        self.headers = {"Content-Length": str(len(payload) if length is None else length)}
        self.fail_after, self.error = fail_after, error

    def read(self, size: int) -> bytes:
        if self.fail_after is not None and self.stream.tell() >= self.fail_after:
            raise self.error or ConnectionResetError("connection reset by peer")
        return self.stream.read(min(size, 4096))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


def cache_files() -> list:
    folder = weights_dirs()[0]
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_weights_list_shows_checkpoints_folders_and_what_is_present(capsys):
    cached = weights_dirs()[0] / checkpoint_named(NAME).file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert str(weights_dirs()[0]) in out and str(weights_dirs()[1]) in out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith("ViT-")}
    assert set(rows) == set(CHECKPOINTS)
    assert rows[cached.name] == str(cached)
    assert all(present == "-" for name, present in rows.items() if name != cached.name)


def test_download_offline_names_the_url_the_target_and_vitkit_home(monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["weights", "download", NAME]) == 2
    error = capsys.readouterr().err.strip()
    checkpoint = checkpoint_named(NAME)
    assert error.count("\n") == 0 and error.startswith("vitkit: error:")
    assert checkpoint.urls[0] in error
    assert str(weights_dirs()[0] / checkpoint.file_name) in error and "VITKIT_HOME" in error
    assert cache_files() == []


@pytest.mark.parametrize("failure", ["reset", "short", "interrupt"])
def test_an_interrupted_download_leaves_no_partial_file(failure, monkeypatch, capsys):
    responses = {
        "reset": lambda: FakeResponse(PAYLOAD, fail_after=8192),
        "short": lambda: FakeResponse(PAYLOAD[:10000], length=len(PAYLOAD)),
        "interrupt": lambda: FakeResponse(PAYLOAD, fail_after=8192, error=KeyboardInterrupt()),
    }
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: responses[failure]())
    status = main(["weights", "download", NAME])
    assert status == (130 if failure == "interrupt" else 2)
    assert cache_files() == []


def test_download_checks_the_checksum_and_records_it(monkeypatch, capsys):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(PAYLOAD))
    assert main(["weights", "download", NAME, "--sha256", "0" * 64]) == 2
    assert "has SHA-256" in capsys.readouterr().err and cache_files() == []
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert main(["weights", "download", NAME + ".npz", "--sha256", digest]) == 0
    target = weights_dirs()[0] / checkpoint_named(NAME).file_name
    assert target.read_bytes() == PAYLOAD
    assert target.with_name(target.name + ".sha256").read_text().split()[0] == digest
    assert str(target) in capsys.readouterr().out
    assert main(["weights", "download", NAME]) == 0
    assert "already present" in capsys.readouterr().out


def test_download_of_an_unknown_name_lists_the_known_ones(capsys):
    assert main(["weights", "download", "ViT-H_14"]) == 2
    error = capsys.readouterr().err
    assert "unknown checkpoint 'ViT-H_14'" in error and "ViT-L_32_imagenet21k" in error


def test_convert_then_everything_reads_the_converted_file(tmp_path, capsys):
    out = tmp_path / "models" / "old.weights.h5"
    classes = "bottle,can,carton,jar,mug"
    args = ["weights", "convert", str(LEGACY / "seed_tiny.h5"), "--classes", classes, "--heads", "4", "--out", str(out)]
    assert main(args) == 2
    assert "--preprocess" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--preprocess", "tf"]) == 0
    assert main(args + ["--preprocess", "tf"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--preprocess", "raw", "--overwrite"]) == 0
    model = vitkit.load_model(out)
    assert model.class_names == classes.split(",") and model.spec.preprocess == "raw"
    csv = tmp_path / "predictions.csv"
    images = [str(LEGACY / name) for name in PRED["images"]]
    assert main(["predict", str(out), *images, "--out", str(csv)]) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    assert np.abs(table[[f"p_{n}" for n in classes.split(",")]].to_numpy() - np.array(PRED["pred_raw"])).max() < 1e-5


# export -----------------------------------------------------------------------------------------

@pytest.fixture
def saved_model(tiny_model, tmp_path):
    model = tiny_model(augment=True)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.path.endswith("moving_variance"):
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))
        elif variable.path.endswith("moving_mean"):
            variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    path = vitkit.save_model(model, tmp_path / "tiny.weights.h5")
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    return path, images, model.predict(images, verbose=0)


def test_export_keras(saved_model, tmp_path):
    path, images, expected = saved_model
    out = tmp_path / "export" / "tiny.keras"
    assert main(["export", str(path), "--format", "keras", "--out", str(out)]) == 0
    import keras

    exported = keras.saving.load_model(out)
    assert np.abs(exported.predict(images, verbose=0) - expected).max() < 1e-6


def test_export_savedmodel(saved_model, tmp_path, capsys):
    path, images, expected = saved_model
    out = tmp_path / "serve" / "tiny"
    assert main(["export", str(path), "--format", "savedmodel", "--out", str(out)]) == 0
    import tensorflow as tf

    served = tf.saved_model.load(str(out))
    assert np.abs(served.serve(images).numpy() - expected).max() < 1e-6
    assert main(["export", str(path), "--format", "savedmodel", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(path), "--format", "savedmodel", "--out", str(out), "--overwrite"]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["tiny"], "no staging folder left behind"


def test_export_onnx(saved_model, tmp_path):
    pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    path, images, expected = saved_model
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out))
    (output,) = session.run(None, {"images": images})
    print(f"onnx export: max |difference| {np.abs(output - expected).max():.2e}")
    assert np.abs(output - expected).max() < 1e-5


def test_export_of_an_old_file_directly(tmp_path):
    out = tmp_path / "old_serve"
    assert main(["export", str(LEGACY / "seed_tiny.h5"), "--classes", "a,b,c,d,e", "--preprocess", "tf",
                 "--heads", "4", "--format", "savedmodel", "--out", str(out)]) == 0
    import tensorflow as tf
    from PIL import Image

    images = np.stack([np.asarray(Image.open(LEGACY / name).convert("RGB")) for name in PRED["images"]])
    assert np.abs(tf.saved_model.load(str(out)).serve(images).numpy() - np.array(PRED["pred"])).max() < 1e-5


def test_export_refuses_a_wrong_suffix(saved_model, tmp_path, capsys):
    assert main(["export", str(saved_model[0]), "--format", "onnx", "--out", str(tmp_path / "m.keras")]) == 2
    assert "ending in .onnx" in capsys.readouterr().err


@pytest.mark.slow
def test_export_on_jax(saved_model, tmp_path):
    path, images, expected = saved_model
    refused = run_cli("export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), backend="jax")
    assert refused.returncode == 2 and "needs the tensorflow backend" in refused.stderr
    out = tmp_path / "jax_serve"
    written = run_cli("export", str(path), "--format", "savedmodel", "--out", str(out), backend="jax")
    assert written.returncode == 0, written.stderr
    import tensorflow as tf

    assert np.abs(tf.saved_model.load(str(out)).serve(images).numpy() - expected).max() < 1e-5
