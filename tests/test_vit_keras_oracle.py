"""vit-keras as the reference: its models, saved every way Keras 3 can, load into vitkit and agree.

Small vit-keras models get random weights (and random BatchNorm statistics in the recipe
head), are saved as Keras 3 ``.weights.h5``, as a ``.keras`` model and in the legacy HDF5
layout (``model.save("x.h5")`` and the ``save_weights("x.h5")`` layout of Keras 2), and are
loaded into vitkit; outputs and every layer's attention weights must agree to 1e-5. Flax
``.npz`` files written here in the checkpoint's exact names and shapes are loaded by both,
also at another image size. The other way, a vitkit model's weights load into vit-keras.
"""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest

vit_keras = pytest.importorskip("vit_keras", reason="vit-keras is the reference (compat extra)")

import keras  # noqa: E402
from vit_keras import layers as vk_layers  # noqa: E402
from vit_keras import utils as vk_utils  # noqa: E402
from vit_keras import vit as vk_vit  # noqa: E402

import vitkit  # noqa: E402
from vitkit.models.convert import flax_arrays, load_foreign_weights  # noqa: E402

pytestmark = pytest.mark.oracle

TOLERANCE = 1e-5
DIMS = {"patch_size": 8, "num_layers": 2, "hidden_size": 32, "num_heads": 4, "mlp_dim": 64}
IMAGE = 32
CLASSES = ["bottle", "can", "carton"]


@keras.saving.register_keras_serializable(package="vitkit_tests")
def tfa_gelu(x):
    """tensorflow-addons' default gelu (tanh form), the original recipe's head activation."""
    return keras.activations.gelu(x, approximate=True)


def randomise(model: keras.Model, seed: int) -> None:
    """Random weights everywhere, BatchNorm statistics included (variances kept positive)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif variable.path.endswith("gamma"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.3 * rng.standard_normal(shape)
        variable.assign(value.astype("float32"))


def vit_keras_backbone(include_top=False, classes=3, representation_size=None, image_size=IMAGE):
    return vk_vit.build_model(
        image_size=image_size, name="vit-b16", classes=classes, dropout=0.0, activation="softmax",
        include_top=include_top, representation_size=representation_size, **DIMS,
    )


def recipe(backbone: keras.Model, classes: int = 3) -> keras.Sequential:
    """The original recipe: backbone -> Flatten -> BN -> Dense(21, gelu) -> BN -> Dense(n, softmax)."""
    model = keras.Sequential([
        backbone, keras.layers.Flatten(), keras.layers.BatchNormalization(),
        keras.layers.Dense(21, activation=tfa_gelu), keras.layers.BatchNormalization(),
        keras.layers.Dense(classes, activation="softmax"),
    ], name="vision_transformer")
    model.build((None, IMAGE, IMAGE, 3))
    return model


def attention_of(backbone: keras.Model, x: np.ndarray) -> np.ndarray:
    """Every TransformerBlock's attention weights ``(batch, layers, heads, tokens, tokens)``."""
    outputs = [layer.output[1] for layer in backbone.layers if isinstance(layer, vk_layers.TransformerBlock)]
    return np.stack(keras.Model(backbone.inputs, outputs).predict(x, verbose=0), axis=1)


def save_legacy_weights(model: keras.Model, path) -> None:
    """The layout Keras 2's ``save_weights("x.h5")`` writes, through Keras 3's legacy saving code."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


SAVERS = {
    "keras3 .weights.h5": lambda model, folder: (model.save_weights(folder / "m.weights.h5"), folder / "m.weights.h5")[1],
    "keras3 .keras": lambda model, folder: (model.save(folder / "m.keras"), folder / "m.keras")[1],
    "legacy model.save .h5": lambda model, folder: (model.save(folder / "m.h5"), folder / "m.h5")[1],
    "legacy save_weights .h5": lambda model, folder: (save_legacy_weights(model, folder / "w.h5"), folder / "w.h5")[1],
}


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and the same scaled as vit-keras' ``preprocess_inputs`` does."""
    pixels = np.random.default_rng(7).integers(0, 256, (4, IMAGE, IMAGE, 3), dtype=np.uint8)
    return pixels, vk_vit.preprocess_inputs(pixels.astype("float32"))


@pytest.fixture(scope="module")
def references(images):
    """vit-keras models of each kind, random weights, with their outputs and attention."""
    _, scaled = images
    built = {}
    recipe_model = recipe(vit_keras_backbone())
    randomise(recipe_model, 1)
    built["recipe"] = (recipe_model, recipe_model.layers[0])
    top = vit_keras_backbone(include_top=True)
    randomise(top, 2)
    built["backbone with top"] = (top, top)
    represented = vit_keras_backbone(include_top=True, representation_size=24)
    randomise(represented, 3)
    built["backbone with pre_logits and top"] = (represented, represented)
    bare = vit_keras_backbone()
    randomise(bare, 4)
    built["backbone alone"] = (bare, bare)
    return {kind: (model, model.predict(scaled, verbose=0), attention_of(backbone, scaled))
            for kind, (model, backbone) in built.items()}


def differences(model: vitkit.ImageClassifier, pixels, reference_output, reference_attention, kind):
    """Largest |difference| of the outputs (features for a bare backbone) and of the attention weights."""
    probabilities, attention = (np.asarray(a) for a in model.attention_model()(pixels))
    if kind == "backbone alone":
        output = np.asarray(model.backbone(model._parts[1](pixels.astype("float32"))))
    else:
        output = probabilities
    assert output.shape == reference_output.shape and attention.shape == reference_attention.shape
    return float(np.abs(output - reference_output).max()), float(np.abs(attention - reference_attention).max())


@pytest.mark.parametrize("kind", ["recipe", "backbone with top", "backbone with pre_logits and top", "backbone alone"])
@pytest.mark.parametrize("saver", sorted(SAVERS))
def test_vit_keras_files_load_into_vitkit(kind, saver, references, images, tmp_path, record_property):
    model, reference_output, reference_attention = references[kind]
    path = SAVERS[saver](model, tmp_path)
    options = {"include_top": False} if kind == "backbone alone" else {}
    loaded = vitkit.load_model(path, classes=CLASSES, preprocess="tf", num_heads=4, **options)
    assert loaded.spec.backbone.num_layers == 2 and loaded.spec.image_size == (IMAGE, IMAGE)
    output, attention = differences(loaded, images[0], reference_output, reference_attention, kind)
    record_property("max_abs_difference", max(output, attention))
    print(f"vit-keras {kind} via {saver}: max |difference| outputs {output:.2e}, attention {attention:.2e}")
    assert output < TOLERANCE and attention < TOLERANCE
    assert reference_output.std(axis=0).max() > 1e-3, "reference outputs should differ between images"
    assert reference_attention.max(axis=-1).mean() < 0.9, "reference attention should not be one-hot"


def test_keras3_file_without_stored_layer_names_loads(references, images, tmp_path):
    """Keras 3 versions that did not store layer names are read through vit-keras' attribute names."""
    model, reference_output, reference_attention = references["recipe"]
    path = SAVERS["keras3 .weights.h5"](model, tmp_path)
    with h5py.File(path, "a") as handle:
        handle.visititems(lambda key, item: item.attrs.__delitem__("name") if "name" in item.attrs else None)
    loaded = vitkit.load_model(path, classes=CLASSES, preprocess="tf", num_heads=4)
    assert max(differences(loaded, images[0], reference_output, reference_attention, "recipe")) < TOLERANCE


@pytest.mark.parametrize("saver", ["legacy model.save .h5", "keras3 .keras"])
def test_heads_come_from_a_saved_model_configuration(saver, references, tmp_path):
    """A whole-model file records num_heads; 32 wide is no published width, so weights alone cannot tell."""
    model = references["recipe"][0]
    from_config = vitkit.load_model(SAVERS[saver](model, tmp_path), classes=CLASSES, preprocess="tf")
    assert from_config.spec.backbone.num_heads == 4
    with pytest.raises(vitkit.WeightsError, match="has 4 attention heads, not 8"):
        vitkit.load_model(SAVERS[saver](model, tmp_path), classes=CLASSES, preprocess="tf", num_heads=8)
    with pytest.raises(vitkit.ConfigError, match="--heads"):
        vitkit.load_model(SAVERS["keras3 .weights.h5"](model, tmp_path), classes=CLASSES, preprocess="tf", num_heads=None)


def test_vitkit_weights_load_into_vit_keras(tiny_model, images, tmp_path):
    """The other way: a vitkit model's weights, through vit-keras' own loader and layer names."""
    pixels, scaled = images
    model = tiny_model(CLASSES)
    randomise(model, 5)
    np.savez(tmp_path / "vitkit.npz", **flax_arrays(model))
    reference = recipe(vit_keras_backbone())
    vk_utils.load_weights_numpy(reference.layers[0], str(tmp_path / "vitkit.npz"), pretrained_top=False,
                                num_x_patches=IMAGE // 8, num_y_patches=IMAGE // 8)
    head = {layer.name: layer for layer in model._parts[3]}
    for vitkit_name, layer in zip(("head_norm_0", "head_hidden", "head_norm_1", "head_output"), reference.layers[2:]):
        layer.set_weights(head[vitkit_name].get_weights())
    probabilities, attention = (np.asarray(a) for a in model.attention_model()(pixels))
    output = np.abs(reference.predict(scaled, verbose=0) - probabilities).max()
    attention = np.abs(attention_of(reference.layers[0], scaled) - attention).max()
    print(f"vitkit -> vit-keras: max |difference| outputs {output:.2e}, attention {attention:.2e}")
    assert output < TOLERANCE and attention < TOLERANCE


def test_vit_keras_file_loads_into_an_existing_model(references, images, tiny_model, tmp_path):
    model, reference_output, reference_attention = references["recipe"]
    target = tiny_model(CLASSES)
    load_foreign_weights(target, SAVERS["legacy save_weights .h5"](model, tmp_path))
    assert max(differences(target, images[0], reference_output, reference_attention, "recipe")) < TOLERANCE


# Flax .npz checkpoints ----------------------------------------------------------------------

def flax_checkpoint(path, classes=10, representation_size=None, grid=4, seed=0, **dims):
    """A checkpoint with the original files' array names and shapes (random values)."""
    dims = {**DIMS, **dims}
    patch, width, heads, mlp = dims["patch_size"], dims["hidden_size"], dims["num_heads"], dims["mlp_dim"]
    head_dim = width // heads
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.3):
        return (scale * rng.standard_normal(shape)).astype("float32")

    arrays = {
        "cls": normal(1, 1, width),
        "embedding/kernel": normal(patch, patch, 3, width, scale=0.05),
        "embedding/bias": normal(width),
        "Transformer/posembed_input/pos_embedding": normal(1, grid * grid + 1, width),
        "Transformer/encoder_norm/scale": 1 + normal(width, scale=0.1),
        "Transformer/encoder_norm/bias": normal(width),
    }
    for i in range(dims["num_layers"]):
        block = f"Transformer/encoderblock_{i}"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            arrays[f"{block}/{norm}/scale"] = 1 + normal(width, scale=0.1)
            arrays[f"{block}/{norm}/bias"] = normal(width)
        for part in ("query", "key", "value"):
            arrays[f"{block}/MultiHeadDotProductAttention_1/{part}/kernel"] = normal(width, heads, head_dim)
            arrays[f"{block}/MultiHeadDotProductAttention_1/{part}/bias"] = normal(heads, head_dim)
        arrays[f"{block}/MultiHeadDotProductAttention_1/out/kernel"] = normal(heads, head_dim, width)
        arrays[f"{block}/MultiHeadDotProductAttention_1/out/bias"] = normal(width)
        arrays[f"{block}/MlpBlock_3/Dense_0/kernel"] = normal(width, mlp)
        arrays[f"{block}/MlpBlock_3/Dense_0/bias"] = normal(mlp)
        arrays[f"{block}/MlpBlock_3/Dense_1/kernel"] = normal(mlp, width)
        arrays[f"{block}/MlpBlock_3/Dense_1/bias"] = normal(width)
    features = width
    if representation_size:
        arrays["pre_logits/kernel"] = normal(width, representation_size)
        arrays["pre_logits/bias"] = normal(representation_size)
        features = representation_size
    arrays["head/kernel"] = normal(features, classes)
    arrays["head/bias"] = normal(classes)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("image_size", [32, 48, 24])
@pytest.mark.parametrize("representation_size", [None, 24])
def test_flax_checkpoint_equals_vit_keras(image_size, representation_size, tmp_path):
    """With the top: the 10-class classifier; at 48 and 24 px the position embedding is resampled."""
    path = flax_checkpoint(tmp_path / "ViT-tiny.npz", representation_size=representation_size)
    pixels = np.random.default_rng(3).integers(0, 256, (3, image_size, image_size, 3), dtype=np.uint8)
    scaled = vk_vit.preprocess_inputs(pixels.astype("float32"))
    reference = vit_keras_backbone(include_top=True, classes=10, representation_size=representation_size,
                                   image_size=image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # vit-keras announces the resampling
        vk_utils.load_weights_numpy(reference, str(path), pretrained_top=True,
                                    num_x_patches=image_size // 8, num_y_patches=image_size // 8)
    names = [f"class_{i}" for i in range(10)]
    model = vitkit.load_model(path, classes=names, image_size=image_size)
    assert model.spec.preprocess == "tf" and not model.spec.head_norm and model.spec.head_width == 0
    probabilities, attention = (np.asarray(a) for a in model.attention_model()(pixels))
    output = np.abs(reference.predict(scaled, verbose=0) - probabilities).max()
    attention = np.abs(attention_of(reference, scaled) - attention).max()
    print(f"npz at {image_size} px, pre_logits {representation_size}: max |difference| outputs {output:.2e}, "
          f"attention {attention:.2e}")
    assert output < TOLERANCE and attention < TOLERANCE


def test_flax_checkpoint_backbone_only(tmp_path, images):
    """include_top=False: the checkpoint's backbone under a new recipe head, features equal vit-keras'."""
    pixels, scaled = images
    path = flax_checkpoint(tmp_path / "ViT-tiny.npz")
    reference = vit_keras_backbone()
    vk_utils.load_weights_numpy(reference, str(path), pretrained_top=False, num_x_patches=4, num_y_patches=4)
    model = vitkit.load_model(path, classes=CLASSES, include_top=False)
    assert model.spec.head_width == 21 and model.spec.head_norm
    features = np.asarray(model.backbone(model._parts[1](pixels.astype("float32"))))
    assert np.abs(reference.predict(scaled, verbose=0) - features).max() < TOLERANCE
