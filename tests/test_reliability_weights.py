"""Damaged, foreign and hostile weights files, and downloads cut off half way.

vitkit's own model files (``.weights.h5`` with vitkit metadata) must load completely or raise
:class:`WeightsError`; pickles are never unpickled; an interrupted download leaves nothing behind.
"""

from __future__ import annotations

import http.client
import json
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from badfiles import marker_pickle
from conftest import TINY_BACKBONE, run_python
from vitkit.models import weights as weights_module
from vitkit.errors import WeightsError
from vitkit.models.classifier import build_model
from vitkit.models.modelfile import load_model, read_metadata, save_model


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> Path:
    model = build_model(["circle", "square", "triangle"], backbone=dict(TINY_BACKBONE), image_size=32)
    return save_model(model, tmp_path_factory.mktemp("reference") / "shapes.weights.h5")


@pytest.fixture
def model_file(tmp_path, reference_file) -> Path:
    """A fresh copy of a small vitkit model file, free to damage."""
    copy = tmp_path / reference_file.name
    copy.write_bytes(reference_file.read_bytes())
    return copy


def test_model_file_round_trip_is_the_reference(tmp_path, tiny_model):
    """The undamaged file loads with identical weights (so the failures below are the damage)."""
    model = tiny_model()
    loaded = load_model(save_model(model, tmp_path / "shapes.weights.h5"))
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("fraction", [0.0, 0.002, 0.05, 0.3, 0.6, 0.9, 0.999])
def test_truncated_model_file(model_file, tmp_path, fraction):
    data = model_file.read_bytes()
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightsError, match=r"cut\.weights\.h5"):
        load_model(cut)


def test_model_file_of_a_compiled_model_holds_no_optimizer(tmp_path, tiny_model):
    """A compiled model's file keeps only the model: no optimizer moments (3x the size with Adam)."""
    model = tiny_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    assert len(model.optimizer.variables) > 2 * len(model.trainable_variables)
    path = save_model(model, tmp_path / "trained.weights.h5")
    with h5py.File(path) as handle:
        assert "optimizer" not in handle
    fresh = tiny_model()
    fresh.compile(optimizer="adam", loss="categorical_crossentropy")
    from vitkit.models.modelfile import load_weights_only

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_weights_only(fresh, path)  # into a compiled model: no "skipping optimizer" warning
    assert not [str(w.message) for w in caught]
    np.testing.assert_array_equal(np.asarray(fresh.weights[0]), np.asarray(model.weights[0]))


def test_h5_from_another_model_without_vitkit_metadata(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsError, match=r"other\.weights\.h5 holds no ViT weights"):
        load_model(path)


def test_h5_whose_metadata_describes_another_model(tmp_path, tiny_model):
    path = save_model(tiny_model(), tmp_path / "small.weights.h5")
    wider = build_model(["a", "b", "c"], backbone={**TINY_BACKBONE, "hidden_size": 48}, image_size=32)
    with h5py.File(path, "a") as handle:
        metadata = json.loads(handle.attrs["vitkit"])
        metadata["spec"] = wider.spec.to_dict()
        handle.attrs["vitkit"] = json.dumps(metadata)
    with pytest.raises(WeightsError, match=r"small\.weights\.h5: weights do not match the model described in the file"):
        load_model(path)


def test_class_count_mismatch_between_metadata_and_weights(model_file):
    with h5py.File(model_file, "a") as handle:
        metadata = json.loads(handle.attrs["vitkit"])
        metadata["spec"]["class_names"].append("hexagon")
        handle.attrs["vitkit"] = json.dumps(metadata)
    with pytest.raises(WeightsError, match="weights do not match the model described in the file"):
        load_model(model_file)


@pytest.mark.parametrize("damage", ["not json", '{"spec": {"class_names": 3}}', '{"format_version": 1}'])
def test_damaged_metadata(model_file, damage):
    with h5py.File(model_file, "a") as handle:
        handle.attrs["vitkit"] = damage
    with pytest.raises(WeightsError, match="metadata"):
        load_model(model_file)


def test_file_from_a_newer_vitkit(model_file):
    with h5py.File(model_file, "a") as handle:
        handle.attrs["vitkit"] = json.dumps({"format_version": 99})
    with pytest.raises(WeightsError, match="newer vitkit"):
        load_model(model_file)


@pytest.mark.parametrize("content", [b"", b"just some text\n", bytes(range(256)) * 40], ids=["empty", "text", "binary"])
def test_file_that_is_not_h5(tmp_path, content):
    path = tmp_path / "model.weights.h5"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"model\.weights\.h5 is not a weights file"):
        load_model(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "nothing.weights.h5")


def test_pickle_payload_is_live(tmp_path):
    """The hostile pickle really creates its marker when unpickled (checked in another process)."""
    marker = tmp_path / "proof"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(marker_pickle(marker))
    done = run_python(f"import pickle; pickle.loads(open({str(payload)!r}, 'rb').read())")
    assert done.returncode == 0, done.stderr
    assert marker.exists()


@pytest.mark.parametrize("name", ["evil.weights.h5", "evil.h5", "evil.npz"])
def test_pickle_is_never_unpickled(tmp_path, name):
    marker = tmp_path / "unpickled"
    path = tmp_path / name
    path.write_bytes(marker_pickle(marker))
    with pytest.raises(WeightsError):
        if name.endswith(".weights.h5"):
            load_model(path)
        elif name.endswith(".npz"):
            build_model(["a", "b"], backbone=dict(TINY_BACKBONE), image_size=32, weights=str(path))
        else:
            read_metadata(path)
    assert not marker.exists()


def test_pickle_inside_an_npz_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "checkpoint.npz"
    from badfiles import TouchOnUnpickle

    np.savez(path, **{"embedding/kernel": np.array([TouchOnUnpickle(marker)], dtype=object)})
    with pytest.raises(WeightsError):
        build_model(["a", "b"], backbone=dict(TINY_BACKBONE), image_size=32, weights=str(path))
    assert not marker.exists()


# Downloads ---------------------------------------------------------------------------------------

class FakeResponse:
    """A urlopen response that delivers ``body`` in pieces, then does ``ending``."""

    def __init__(self, body: bytes, length: int | None, ending=None, piece: int = 1000):
        self.headers = {"Content-Length": str(length)} if length is not None else {}
        self.body, self.ending, self.piece, self.position = body, ending, piece, 0

    def read(self, size=-1):
        if self.position >= len(self.body):
            if self.ending is not None:
                raise self.ending
            return b""
        chunk = self.body[self.position:self.position + min(size, self.piece)]
        self.position += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


CHECKPOINT = weights_module.CHECKPOINTS["ViT-B_16_imagenet21k.npz"]
FULL = bytes(range(256)) * 40


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("ending,length", [
    (None, len(FULL)),                                             # server closes early
    (http.client.IncompleteRead(b"", 5000), None),                 # no length, read fails
    (ConnectionResetError(104, "Connection reset by peer"), len(FULL)),
    (TimeoutError("timed out"), len(FULL)),
])
def test_download_cut_off_half_way_leaves_no_file(monkeypatch, ending, length):
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return FakeResponse(FULL[: len(FULL) // 2], length, ending)

    monkeypatch.setattr(weights_module.urllib.request, "urlopen", urlopen)
    with pytest.raises(WeightsError, match="download failed"):
        weights_module.download_checkpoint(CHECKPOINT)
    assert calls == list(CHECKPOINT.urls)  # every address tried
    assert leftovers(weights_module.weights_dirs()[0]) == []


def test_download_interrupted_by_the_user_leaves_no_file(monkeypatch):
    monkeypatch.setattr(weights_module.urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse(FULL[:3000], len(FULL), KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        weights_module.download_checkpoint(CHECKPOINT)
    assert leftovers(weights_module.weights_dirs()[0]) == []


def test_download_falls_back_to_the_second_address_and_records_the_checksum(monkeypatch):
    responses = iter([FakeResponse(FULL[:100], len(FULL)), FakeResponse(FULL, len(FULL))])
    monkeypatch.setattr(weights_module.urllib.request, "urlopen", lambda url, timeout=None: next(responses))
    path = weights_module.download_checkpoint(CHECKPOINT)
    assert path.read_bytes() == FULL
    assert leftovers(path.parent) == sorted([path.name, path.name + ".sha256"])
    path.write_bytes(FULL[:-1])  # damaged later
    with pytest.raises(WeightsError, match="does not match the checksum recorded at download"):
        weights_module.verify_recorded_checksum(path)


def test_download_replaces_nothing_when_it_fails(monkeypatch):
    """A failed re-download keeps the earlier complete file."""
    target = weights_module.weights_dirs()[0] / CHECKPOINT.file_name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"earlier complete file")
    monkeypatch.setattr(weights_module.urllib.request, "urlopen",
                        lambda url, timeout=None: FakeResponse(FULL[:10], len(FULL)))
    with pytest.raises(WeightsError):
        weights_module.download_checkpoint(CHECKPOINT)
    assert target.read_bytes() == b"earlier complete file"
    assert leftovers(target.parent) == [target.name]


def test_no_network_message_says_where_to_put_the_file(monkeypatch):
    import urllib.error

    def urlopen(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights_module.urllib.request, "urlopen", urlopen)
    with pytest.raises(WeightsError, match=r"Download it on a connected machine from .* and put it at .*ViT-B_16"):
        weights_module.download_checkpoint(CHECKPOINT)
