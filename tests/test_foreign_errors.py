"""Files that do not fit give one clear line saying what differs, and never a partial load."""

from __future__ import annotations

import dataclasses
import pickle

import h5py
import numpy as np
import pytest

import vitkit
from vitkit.models.convert import flax_arrays, load_foreign_weights
from vitkit.models.foreign import flax_name_of

from conftest import FIXTURES, TINY_BACKBONE

LEGACY = FIXTURES / "legacy_keras2" / "seed_tiny.h5"
CLASSES = ["circle", "square", "triangle"]


def snapshot(model) -> list[np.ndarray]:
    return [np.array(variable.numpy()) for variable in model.weights]


def assert_untouched(model, before) -> None:
    after = snapshot(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "a failed load changed the model"


def linear_top(model) -> vitkit.ImageClassifier:
    """The same model with a plain Dense top, like a checkpoint's classifier."""
    return vitkit.ImageClassifier(dataclasses.replace(model.spec, head_width=0, head_norm=False))


def checkpoint_of(tiny_model, path, classes=CLASSES, **overrides):
    """A Flax .npz written from a vitkit model of other dimensions (its own top for ``classes``)."""
    np.savez(path, **flax_arrays(linear_top(tiny_model(classes, **overrides))))
    return path


@pytest.mark.parametrize("overrides, message", [
    ({"num_layers": 3}, "encoder blocks 3, the model has 2"),
    ({"hidden_size": 48, "num_heads": 4}, "width 48, the model has 32"),
    ({"patch_size": 4}, "patch size 4, the model has 8"),
    ({"mlp_dim": 96}, "MLP width 96, the model has 64"),
    ({"num_heads": 2}, "attention heads 2, the model has 4"),
])
def test_other_dimensions_are_refused_before_anything_is_loaded(overrides, message, tiny_model, tmp_path):
    path = checkpoint_of(tiny_model, tmp_path / "other.npz", **overrides)
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(vitkit.WeightsError, match=message) as error:
        load_foreign_weights(model, path, include_top=False)
    assert "\n" not in str(error.value)
    assert_untouched(model, before)


def test_other_class_count_is_refused(tiny_model, tmp_path):
    path = checkpoint_of(tiny_model, tmp_path / "five.npz", classes=list("abcde"))
    model = linear_top(tiny_model())
    before = snapshot(model)
    with pytest.raises(vitkit.WeightsError, match="has 5 classes, the model has 3"):
        load_foreign_weights(model, path)
    assert_untouched(model, before)
    load_foreign_weights(model, path, include_top=False)  # the backbone alone fits
    assert not all(np.array_equal(a, b) for a, b in zip(before, snapshot(model)))


def test_legacy_recipe_into_a_model_of_other_classes_or_head(tiny_model):
    model = vitkit.build_model(CLASSES, backbone={**TINY_BACKBONE, "hidden_size": 48, "mlp_dim": 96, "patch_size": 16},
                               image_size=64, augment=False)
    before = snapshot(model)
    with pytest.raises(vitkit.WeightsError, match="has 5 classes, the model has 3"):
        load_foreign_weights(model, LEGACY)
    assert_untouched(model, before)


def test_an_incomplete_file_loads_nothing(tiny_model, tmp_path):
    arrays = flax_arrays(tiny_model())
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    np.savez(tmp_path / "cut.npz", **arrays)
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(vitkit.WeightsError, match="no 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias'"):
        load_foreign_weights(model, tmp_path / "cut.npz")
    assert_untouched(model, before)


def not_weights(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("these are not weights\n")
    image = tmp_path / "photo.npz"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image, format="PNG")
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps({"embedding/kernel": np.zeros((8, 8, 3, 32))}))
    other_h5 = tmp_path / "table.h5"
    with h5py.File(other_h5, "w") as handle:
        handle["numbers"] = np.arange(5)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    foreign_npz = tmp_path / "other.npz"
    np.savez(foreign_npz, weights=np.zeros(3))
    return {
        "text": (text, "is not a weights file"),
        "image": (image, "is not a weights file"),
        "pickle": (pickled, "is a Python pickle; vitkit never unpickles"),
        "other hdf5": (other_h5, "not a Keras weights file"),
        "single array": (single, "is not a weights file"),
        "other npz": (foreign_npz, "not part of a ViT checkpoint"),
        "missing": (tmp_path / "nothing.h5", "not found"),
    }


@pytest.mark.parametrize("kind", ["text", "image", "pickle", "other hdf5", "single array", "other npz", "missing"])
def test_not_a_weights_file(kind, tmp_path, tiny_model):
    path, message = not_weights(tmp_path)[kind]
    with pytest.raises(vitkit.WeightsError, match=message) as error:
        vitkit.load_model(path, classes=CLASSES, preprocess="tf")
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(vitkit.WeightsError):
        load_foreign_weights(model, path)
    assert_untouched(model, before)


def test_a_file_with_an_unplaceable_layer_is_refused(tmp_path):
    broken = tmp_path / "extra.h5"
    with h5py.File(LEGACY, "r") as source, h5py.File(broken, "w") as target:
        for key in source:
            source.copy(key, target)
        for key, value in source.attrs.items():
            target.attrs[key] = value
        group = target.create_group("conv_extra")
        group["conv_extra/kernel:0"] = np.zeros((3, 3, 21, 4), "float32")
        group.attrs["weight_names"] = np.array([b"conv_extra/kernel:0"])
        names = [n.encode() if isinstance(n, str) else n for n in source.attrs["layer_names"]]
        target.attrs["layer_names"] = np.array(names + [b"conv_extra"])
    with pytest.raises(vitkit.WeightsError, match="'conv_extra' .* vitkit cannot place it"):
        vitkit.load_model(broken, classes=list("abcde"), preprocess="tf", num_heads=4)


def test_vitkit_model_file_refuses_contradicting_options(tiny_model, tmp_path):
    path = vitkit.save_model(tiny_model(), tmp_path / "m.weights.h5")
    assert vitkit.load_model(path, classes=list(CLASSES), preprocess="tf").class_names == list(CLASSES)
    with pytest.raises(vitkit.WeightsError, match="made with preprocess 'tf'"):
        vitkit.load_model(path, preprocess="raw")
    with pytest.raises(vitkit.WeightsError, match="names its classes"):
        vitkit.load_model(path, classes=["a", "b", "c"])
    with pytest.raises(vitkit.WeightsError, match="num_heads apply only to files of other tools"):
        vitkit.load_model(path, num_heads=4)


@pytest.mark.parametrize("name, expected", [
    ("vit-b16/Transformer/encoderblock_3/Dense_0/kernel:0", "Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel"),
    ("vit-b16/Transformer_encoderblock_0/MlpBlock_3/Transformer_encoderblock_0_Dense_1/bias",
     "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias"),
    ("Transformer/encoderblock_11/LayerNorm_2/scale", "Transformer/encoderblock_11/LayerNorm_2/scale"),
    ("vit-b16/Transformer_encoderblock_2/LayerNorm_0/gamma", "Transformer/encoderblock_2/LayerNorm_0/scale"),
    ("Transformer_encoder_norm/beta", "Transformer/encoder_norm/bias"),
    ("vit-b16/Transformer/posembed_input/pos_embedding:0", "Transformer/posembed_input/pos_embedding"),
    ("vit-b16/class_token/cls:0", "cls"),
    ("embedding/kernel", "embedding/kernel"),
    ("dense_1/dense_1/kernel:0", None),
    ("batch_normalization/batch_normalization/moving_mean:0", None),
])
def test_names_of_every_tool_map_to_the_checkpoint_names(name, expected):
    assert flax_name_of(name) == expected
