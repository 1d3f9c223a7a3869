"""The classifier: head, preprocessing, model file round trips on TensorFlow and JAX."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest

import vitkit
from vitkit.errors import ConfigError, OutputExistsError, WeightsError
from vitkit.models.spec import ModelSpec

from conftest import TINY_BACKBONE, TINY_CLASSES, run_python


def _images(count=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_head_is_the_original_recipe(tiny_model):
    model = tiny_model()
    head = [layer for layer in model.layers if layer.name.startswith("head_")]
    assert [type(layer).__name__ for layer in head] == [
        "BatchNormalization", "Dense", "BatchNormalization", "Dense"]
    assert head[1].units == 21 and head[3].units == 3
    x = np.linspace(-3, 3, 7).astype("float32")
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head[1].activation(x)), tanh_form, atol=1e-6)


def test_linear_head(tiny_model):
    model = tiny_model(head_width=0)
    assert [layer.name for layer in model.layers if layer.name.startswith("head_")] == ["head_norm_0", "head_output"]


def test_outputs_are_probabilities_for_uint8_images(tiny_model):
    model = tiny_model()
    assert model.input.dtype == "uint8"
    probabilities = model.predict(_images(), verbose=0)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_scaling_is_inside_the_model(tiny_model):
    """``tf`` maps 0..255 to [-1, 1] before the backbone; ``raw`` passes pixels unchanged."""
    scaled, raw = tiny_model(preprocess="tf"), tiny_model(preprocess="raw")
    raw.set_weights(scaled.get_weights())
    pixels = _images(2)
    as_floats = (pixels.astype("float32") / 127.5 - 1.0)
    backbone_in_tf = keras.ops.convert_to_numpy(scaled.get_layer("scale")(pixels))
    np.testing.assert_allclose(backbone_in_tf, as_floats, atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(raw.get_layer("scale")(pixels)), pixels)


def test_augmentation_only_when_training(tiny_model):
    model = tiny_model(augment=True, seed=1)
    pixels = _images(2).astype("float32")
    augment = model.get_layer("augment")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(pixels, training=False)), pixels)
    assert not np.allclose(keras.ops.convert_to_numpy(augment(pixels, training=True)), pixels)


def test_attention_model_shares_the_forward_pass(tiny_model):
    model = tiny_model()
    pixels = _images(3)
    probabilities, attention = model.attention_model()(pixels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probabilities), model.predict(pixels, verbose=0), atol=1e-5)
    assert attention.shape == (3, 2, 4, 17, 17)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(attention).sum(-1), 1.0, atol=1e-5)


def test_spec_round_trip_and_checks():
    spec = ModelSpec(("a", "b"), (32, 32), vitkit.ViTConfig(**TINY_BACKBONE), head_width=7, preprocess="raw",
                     resize_mode="pad", seed=4)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ConfigError, match="at least 2 classes"):
        ModelSpec(("a",), (32, 32), spec.backbone)
    with pytest.raises(ConfigError, match="unique"):
        ModelSpec(("a", "a"), (32, 32), spec.backbone)


def test_save_and_load_round_trip(tiny_model, tmp_path):
    model = tiny_model(classes=("ok", "scratch", "dent"), head_width=5)
    for variable in model.weights:  # BatchNorm statistics away from their defaults
        variable.assign(np.random.default_rng(2).uniform(0.5, 1.5, variable.shape).astype(variable.dtype))
    path = vitkit.save_model(model, tmp_path / "m.weights.h5")
    with h5py.File(path) as handle:
        metadata = json.loads(handle.attrs["vitkit"])
    assert metadata["spec"]["class_names"] == ["ok", "scratch", "dent"]
    assert metadata["versions"]["vitkit"] == vitkit.__version__
    loaded = vitkit.load_model(path)
    assert loaded.class_names == ["ok", "scratch", "dent"]
    assert loaded.spec == model.spec
    pixels = _images()
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6)


def test_save_refuses_to_overwrite_and_needs_the_suffix(tiny_model, tmp_path):
    model = tiny_model()
    vitkit.save_model(model, tmp_path / "m.weights.h5")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        vitkit.save_model(model, tmp_path / "m.weights.h5")
    vitkit.save_model(model, tmp_path / "m.weights.h5", overwrite=True)
    with pytest.raises(WeightsError, match=r"\.weights\.h5"):
        vitkit.save_model(model, tmp_path / "m.h5")


_PREDICT_IN_NEW_PROCESS = """
import sys, numpy as np, keras, vitkit
model = vitkit.load_model(sys.argv[1] if len(sys.argv) > 1 else {path!r})
pixels = np.load({pixels!r})
np.save({out!r}, np.asarray(model.predict(pixels, verbose=0)))
print(keras.backend.backend())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_reload_in_a_new_process_gives_the_same_predictions(tiny_model, tmp_path, backend):
    model = tiny_model(classes=TINY_CLASSES)
    path = vitkit.save_model(model, tmp_path / "m.weights.h5")
    pixels = _images(5)
    np.save(tmp_path / "pixels.npy", pixels)
    code = _PREDICT_IN_NEW_PROCESS.format(path=str(path), pixels=str(tmp_path / "pixels.npy"),
                                          out=str(tmp_path / "out.npy"))
    finished = run_python(code, backend=backend)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip().endswith(backend)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), model.predict(pixels, verbose=0), atol=1e-5)


def test_prediction_in_bfloat16_stays_near_float32(tiny_model, tmp_path, cli):
    model = tiny_model()
    rng = np.random.default_rng(3)
    for variable in model.weights:  # weights large enough that the classes are told apart
        values = rng.normal(0, 0.3, variable.shape)
        variable.assign((np.abs(values) + 0.5 if "variance" in variable.path else values).astype(variable.dtype))
    path = vitkit.save_model(model, tmp_path / "m.weights.h5")
    pixels = _images(count=16)
    exact = vitkit.predict(path, pixels, batch_size=8)
    halved = vitkit.predict(path, pixels, batch_size=8, precision="mixed_bfloat16")
    columns = [f"p_{name}" for name in TINY_CLASSES]
    difference = np.abs(exact[columns].to_numpy() - halved[columns].to_numpy()).max()
    assert 0 < difference < 0.05  # bfloat16 did run, and stayed close
    assert halved[columns].to_numpy().dtype == np.float32
    np.testing.assert_allclose(halved[columns].to_numpy().sum(axis=1), 1.0, atol=1e-5)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    with pytest.raises(ConfigError, match="precision must be one of float32"):
        vitkit.predict(path, pixels, precision="bf16")

    status, out, _ = cli("predict", path, *_write_photos(tmp_path, pixels[:2]), "--precision", "mixed_bfloat16")
    assert status == 0 and "predicted" in out


def _write_photos(folder, pixels):
    from PIL import Image

    paths = []
    for i, image in enumerate(pixels):
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_loading_skips_drawing_initial_weights_only_inside_the_block(tiny_model):
    from vitkit.models.initialvalues import initial_values_skipped

    with initial_values_skipped():
        skipped = tiny_model(augment=True, seed=5)
    drawn = tiny_model(augment=True, seed=5)
    kernels = [v for v in skipped.weights if v.path.endswith("kernel")]
    assert kernels and all(not np.any(v.numpy()) for v in kernels)
    assert any(np.any(v.numpy()) for v in drawn.weights if v.path.endswith("kernel"))
    # States made otherwise than by an initializer (the augmentation's seed) are made as usual.
    seeds = [(a.numpy(), b.numpy()) for a, b in zip(skipped.variables, drawn.variables) if "seed" in a.path]
    assert seeds and all(np.array_equal(a, b) for a, b in seeds)
