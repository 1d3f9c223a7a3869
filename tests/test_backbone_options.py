"""The backbone options of later checkpoints (LayerScale, register tokens, ``no_embed_class``, mean
pooling, ``fc_norm``, DeiT's distillation token), mean/std normalisation and bicubic resizing: against a NumPy forward pass,
and off by default so earlier models and files are unchanged."""

from __future__ import annotations

import json
import math

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

import vitkit
from conftest import FIXTURES, TINY_BACKBONE
from test_backbone import _gelu, _layer_norm
from vitkit.data.cache import ImageStore
from vitkit.data.images import load_image
from vitkit.data.preprocessing import ScaleImages
from vitkit.errors import ConfigError
from vitkit.models.backbone import VisionTransformer
from vitkit.models.classifier import ImageClassifier
from vitkit.models.spec import ModelSpec
from vitkit.models.config import ViTConfig, resolve_config

V1 = FIXTURES / "vitkit_v1"
OPTIONS = {
    "registers, position over every token": dict(register_tokens=2),
    "deit3": dict(layer_scale=0.5, no_embed_class=True),
    "dinov2 with registers": dict(layer_scale=0.5, register_tokens=3, no_embed_class=True),
    "mean pooling with fc_norm": dict(pooling="mean", fc_norm=True),
    "mean pooling, final norm on tokens": dict(pooling="mean", register_tokens=1),
    "class token with fc_norm": dict(fc_norm=True),
    "deit distillation token": dict(distillation_token=True),
    "distillation token, registers, positions on patches": dict(distillation_token=True, register_tokens=2,
                                                                 no_embed_class=True, fc_norm=True),
}


def numpy_forward(weights: dict[str, np.ndarray], images: np.ndarray, config: ViTConfig,
                  distillation: bool = False) -> np.ndarray:
    """Pooled features (the distillation token's with ``distillation``) in float64 from the variables
    by name, every option written out."""
    p, d, heads = config.patch_size, config.hidden_size, config.num_heads
    batch, height, width, _ = images.shape
    patches = images.reshape(batch, height // p, p, width // p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, p * p * 3)
    x = patches @ weights["embedding/kernel"].reshape(-1, d) + weights["embedding/bias"]
    position = weights["posembed_input/pos_embedding"]
    prefix = [np.broadcast_to(weights["class_token/cls"], (batch, 1, d))]
    if config.distillation_token:
        prefix.append(np.broadcast_to(weights["dist_token/tokens"], (batch, 1, d)))
    if config.register_tokens:
        prefix.append(np.broadcast_to(weights["registers/tokens"], (batch, config.register_tokens, d)))
    x = np.concatenate(prefix + [x + position if config.no_embed_class else x], axis=1)
    if not config.no_embed_class:
        x = x + position
    for i in range(config.num_layers):
        block = f"encoderblock_{i}/"
        attention = block + "MultiHeadDotProductAttention_1/"
        h = _layer_norm(x, weights[block + "LayerNorm_0/gamma"], weights[block + "LayerNorm_0/beta"])
        q, k, v = ((h @ weights[attention + n + "/kernel"] + weights[attention + n + "/bias"]).reshape(batch, -1, heads, d // heads)
                   for n in ("query", "key", "value"))
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
        a = np.exp(scores - scores.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        mixed = np.einsum("bhqk,bkhd->bqhd", a, v).reshape(batch, -1, d) @ weights[attention + "out/kernel"] + weights[attention + "out/bias"]
        x = x + mixed * (weights[block + "LayerScale_attention/gamma"] if config.layer_scale else 1.0)
        h = _layer_norm(x, weights[block + "LayerNorm_2/gamma"], weights[block + "LayerNorm_2/beta"])
        h = _gelu(h @ weights[block + "MlpBlock_3/Dense_0/kernel"] + weights[block + "MlpBlock_3/Dense_0/bias"])
        h = h @ weights[block + "MlpBlock_3/Dense_1/kernel"] + weights[block + "MlpBlock_3/Dense_1/bias"]
        x = x + h * (weights[block + "LayerScale_mlp/gamma"] if config.layer_scale else 1.0)
    if not config.fc_norm:
        x = _layer_norm(x, weights["encoder_norm/gamma"], weights["encoder_norm/beta"])
    pooled = x[:, config.prefix_tokens:].mean(axis=1) if config.pooling == "mean" else x[:, 0]
    if distillation:
        pooled = x[:, 1]
    return _layer_norm(pooled, weights["fc_norm/gamma"], weights["fc_norm/beta"]) if config.fc_norm else pooled


@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
def test_options_match_numpy(options):
    config = resolve_config({**TINY_BACKBONE, **options}, (32, 32))
    backbone = VisionTransformer(**config.to_dict(), name="vit")
    backbone.build((None, 32, 32, 3))
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    named = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v).astype(np.float64) for v in backbone.weights}
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    expected = numpy_forward(named, images.astype(np.float64), config)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(images)), expected, atol=2e-4)
    features, attention = backbone(images, return_attention=True)
    assert attention.shape[-1] == backbone.token_count((32, 32)) == config.prefix_tokens + 16
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features), expected, atol=2e-4)
    if config.distillation_token:
        features, distilled = backbone(images, distillation=True)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(features), expected, atol=2e-4)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(distilled),
                                   numpy_forward(named, images.astype(np.float64), config, distillation=True), atol=2e-4)


def test_the_distillation_token_follows_the_class_token_and_has_a_position():
    for no_embed_class, positions in ((False, 1 + 1 + 3 + 16), (True, 16)):
        backbone = VisionTransformer(**TINY_BACKBONE, distillation_token=True, register_tokens=3,
                                     no_embed_class=no_embed_class, name="vit")
        backbone.build((None, 32, 32, 3))
        shapes = {v.path: tuple(v.shape) for v in backbone.weights}
        assert shapes["vit/posembed_input/pos_embedding"] == (1, positions, 32)
        assert shapes["vit/dist_token/tokens"] == (1, 1, 32)
        assert backbone.token_count((32, 32)) == backbone.config.prefix_tokens + 16 == 21
    sequence = keras.ops.convert_to_numpy(backbone._sequence(np.zeros((1, 32, 32, 3), "float32")))
    weights = {v.path: keras.ops.convert_to_numpy(v) for v in backbone.weights}
    np.testing.assert_array_equal(sequence[0, 0], weights["vit/class_token/cls"][0, 0])
    np.testing.assert_array_equal(sequence[0, 1], weights["vit/dist_token/tokens"][0, 0])
    np.testing.assert_array_equal(sequence[0, 2:5], weights["vit/registers/tokens"][0])
    with pytest.raises(ConfigError, match="distillation token"):
        VisionTransformer(**TINY_BACKBONE, name="vit")(np.zeros((1, 32, 32, 3), "float32"), distillation=True)


def test_position_embedding_shape_follows_no_embed_class():
    shapes = {}
    for no_embed_class in (False, True):
        backbone = VisionTransformer(**TINY_BACKBONE, register_tokens=4, no_embed_class=no_embed_class, name="vit")
        backbone.build((None, 32, 32, 3))
        shapes[no_embed_class] = {v.path: tuple(v.shape) for v in backbone.weights}["vit/posembed_input/pos_embedding"]
    assert shapes == {False: (1, 1 + 4 + 16, 32), True: (1, 16, 32)}


def test_layer_scale_starts_at_its_value_and_registers_differ():
    backbone = VisionTransformer(**TINY_BACKBONE, layer_scale=1e-5, register_tokens=4, name="vit")
    backbone.build((None, 32, 32, 3))
    weights = {v.path: keras.ops.convert_to_numpy(v) for v in backbone.weights}
    np.testing.assert_array_equal(weights["vit/encoderblock_1/LayerScale_mlp/gamma"], np.full(32, 1e-5, np.float32))
    registers = weights["vit/registers/tokens"][0]
    assert min(np.abs(registers[i] - registers[j]).max() for i in range(4) for j in range(i)) > 0


# Earlier models and files --------------------------------------------------------------------------

def test_a_model_without_the_options_is_described_as_before():
    with h5py.File(V1 / "tiny.weights.h5") as handle:
        spec = json.loads(handle.attrs["vitkit"])["spec"]
    model = vitkit.build_model(["circle", "square", "triangle"], backbone=dict(TINY_BACKBONE), image_size=32, seed=0)
    assert model.spec.to_dict() == spec
    assert [v.path for v in model.weights] == [v.path for v in vitkit.load_model(V1 / "tiny.weights.h5").weights]


def test_a_file_of_the_first_format_loads_and_predicts_the_same():
    model = vitkit.load_model(V1 / "tiny.weights.h5")
    expected = np.array(json.loads((V1 / "predictions.json").read_text())["probabilities"])
    found = model.predict(np.load(V1 / "images.npy"), verbose=0)
    assert np.abs(found - expected).max() < 1e-5
    assert (model.spec.preprocess, model.spec.interpolation, model.spec.mean) == ("tf", "bilinear", None)


def test_every_option_is_recorded_and_rebuilt_from_the_file(tmp_path):
    options = dict(layer_scale=0.1, register_tokens=2, no_embed_class=True, pooling="mean", fc_norm=True,
                   distillation_token=True)
    model = vitkit.build_model(["a", "b"], backbone={**TINY_BACKBONE, **options}, image_size=32, augment=False)
    spec = ModelSpec(model.spec.class_names, (32, 32), model.spec.backbone, preprocess="normalize",
                     mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), interpolation="bicubic")
    model = ImageClassifier(spec)
    path = vitkit.save_model(model, tmp_path / "options.weights.h5")
    with h5py.File(path) as handle:
        recorded = json.loads(handle.attrs["vitkit"])["spec"]
    assert {k: recorded["backbone"][k] for k in options} == options
    assert (recorded["mean"], recorded["std"], recorded["interpolation"]) == ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], "bicubic")
    loaded = vitkit.load_model(path)
    assert loaded.spec == spec
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


# Input preparation ----------------------------------------------------------------------------------

def test_normalize_is_the_mean_and_std_of_pixels_on_the_unit_scale():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 4, 4, 3)).astype("float32")
    found = keras.ops.convert_to_numpy(ScaleImages("normalize", mean, std)(pixels))
    np.testing.assert_allclose(found, (pixels / 255.0 - np.array(mean)) / np.array(std), atol=1e-5)
    tf_like = keras.ops.convert_to_numpy(ScaleImages("normalize", (0.5,) * 3, (0.5,) * 3)(pixels))
    np.testing.assert_allclose(tf_like, keras.ops.convert_to_numpy(ScaleImages("tf")(pixels)), atol=1e-6)


@pytest.mark.parametrize("preprocess, mean, std, message", [
    ("normalize", None, (0.5, 0.5, 0.5), "needs a mean of 3 values"),
    ("normalize", (0.5, 0.5), (0.5, 0.5, 0.5), "needs a mean of 3 values"),
    ("normalize", (0.5,) * 3, (0.5, 0.0, 0.5), "std must be positive"),
    ("tf", (0.5,) * 3, (0.5,) * 3, "only to preprocess 'normalize'"),
])
def test_bad_normalisation_is_refused(preprocess, mean, std, message):
    with pytest.raises(ConfigError, match=message):
        ModelSpec(("a", "b"), (32, 32), resolve_config(dict(TINY_BACKBONE), (32, 32)), preprocess=preprocess, mean=mean, std=std)


def test_bicubic_images_are_pillows_and_cached_apart(tmp_path):
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(source)
    expected = np.asarray(Image.open(source).convert("RGB").resize((24, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(load_image(source, (16, 24), "stretch", "bicubic"), expected)
    assert not np.array_equal(load_image(source, (16, 24), "stretch", "bilinear"), expected)
    bilinear = ImageStore((16, 24), "stretch", tmp_path / "cache")
    bicubic = ImageStore((16, 24), "stretch", tmp_path / "cache", interpolation="bicubic")
    assert bilinear.folder.name == "16x24-stretch" and bicubic.folder.name == "16x24-stretch-bicubic"
    frames, _ = bicubic.frames([source], progress=False)
    np.testing.assert_array_equal(bicubic.read(frames)[0], expected)


def test_a_patch_size_that_does_not_divide_names_sizes_that_do():
    with pytest.raises(ConfigError, match="e.g. --image-size 210 or 224"):
        resolve_config({**TINY_BACKBONE, "patch_size": 14}, (220, 220))
