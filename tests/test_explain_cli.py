"""``vitkit explain`` end to end, and the same maps on the JAX backend."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import make_photo_tree, run_cli, run_python
from test_explain import sharpen, shapes
from vitkit.explanation.explain import explain
from vitkit.models.modelfile import save_model


@pytest.fixture
def model_file(tiny_model, tmp_path):
    return save_model(sharpen(tiny_model()), tmp_path / "tiny.weights.h5")


@pytest.fixture
def few_photos(tmp_path):
    """3 classes x 3 shapes: enough for every output, quick to draw."""
    return make_photo_tree(tmp_path / "photos", per_class=3)


@pytest.mark.slow
def test_cli_writes_every_output(model_file, few_photos, tmp_path):
    (few_photos / "circle" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "explained"
    extra = {"report": tmp_path / "report.html", "pdf": tmp_path / "maps.pdf",
             "save-maps": tmp_path / "maps.npz", "export-attention": tmp_path / "attention.json"}
    options = [item for key, path in extra.items() for item in (f"--{key}", str(path))]
    done = run_cli("explain", str(model_file), str(few_photos), "--out", str(out), "--focus", "square_01.png",
                   *options)
    assert done.returncode == 0, done.stderr
    assert "9 images explained (integrated)" in done.stdout
    assert "warning: skipped 1 of" in done.stderr and "broken.png" in done.stderr
    assert pd.read_csv(out / "skipped.csv")["image"].str.endswith("broken.png").all()
    images = sorted(str(p) for p in few_photos.rglob("*.png") if p.name != "broken.png")
    assert len(list((out / "figures").glob("*.png"))) == 9
    table = pd.read_csv(out / "explanations.csv")
    assert sorted(table["image"]) == images
    with np.load(extra["save-maps"]) as maps:
        assert sorted(maps.files) == images
        for key in maps.files:
            assert maps[key].shape == (32, 32) and maps[key].dtype == np.float32
            assert 0 <= maps[key].min() and maps[key].max() == 1  # the default's maps per pixel, as computed
    attention = json.loads(extra["export-attention"].read_text())
    assert attention["image"].endswith("square_01.png")
    assert np.array(attention["attention"][0]["attn"]).shape == (2, 4, 17, 17)
    assert attention["tokens"][:2] == ["CLS", "patch_0_0"] and len(attention["tokens"]) == 17
    assert extra["pdf"].read_bytes().startswith(b"%PDF")
    assert extra["report"].read_text().count("<tr data-index=") == 9

    again = run_cli("explain", str(model_file), str(few_photos), "--out", str(out))
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr


@pytest.mark.slow
def test_cli_explains_one_class_and_refuses_bad_options(model_file, few_photos, tmp_path):
    files = [str(p) for p in sorted((few_photos / "circle").glob("*.png"))[:2]]
    done = run_cli("explain", str(model_file), *files, "--out", str(tmp_path / "one"), "--method", "gradient",
                   "--class", "triangle")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "one" / "explanations.csv")
    assert list(table["explained"]) == ["triangle", "triangle"]
    wrong = run_cli("explain", str(model_file), *files, "--out", str(tmp_path / "two"), "--method", "rollout",
                    "--class", "triangle")
    assert wrong.returncode == 2
    assert "use method integrated or gradient" in wrong.stderr and "Traceback" not in wrong.stderr
    help_text = run_cli("explain", "--help").stdout
    assert "--discard-ratio" in help_text and "examples:" in help_text


@pytest.mark.slow
def test_jax_backend_gives_the_same_maps(model_file, tmp_path):
    images, labels = shapes(count=4)
    np.save(tmp_path / "images.npy", images)
    methods = ("integrated", "rollout", "gradient")
    expected = {method: explain(model_file, images, method=method, progress=False) for method in methods}
    code = f"""
import json, sys
import numpy as np
from vitkit.explanation.explain import explain
images = np.load({str(tmp_path / 'images.npy')!r})
found = {{}}
for method in {methods!r}:
    result = explain({str(model_file)!r}, images, method=method, discard_ratio=0.0, progress=False)
    found[method] = {{"maps": result.native_maps.tolist(), "probabilities": result.probabilities.tolist()}}
found["tensorflow_imported"] = any(name.split(".")[0] == "tensorflow" for name in sys.modules)
print(json.dumps(found))
"""
    done = run_python(code, backend="jax")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["tensorflow_imported"] is False
    for method, result in expected.items():
        np.testing.assert_allclose(found[method]["probabilities"], result.probabilities, atol=1e-5)
        np.testing.assert_allclose(found[method]["maps"], result.native_maps, atol=1e-4)
