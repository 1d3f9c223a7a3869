"""Backbone options for training from scratch: conv stem, shifted patches, locality attention.

Each layer is checked for shapes, config round trips and against a NumPy re-implementation;
models using them must save, reload, predict identically and still return attention maps.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import TINY_BACKBONE, TINY_CLASSES, run_python
from vitkit.models.backbone import ConvStem, MultiHeadSelfAttention, ShiftedPatchTokenizer, VisionTransformer
from vitkit.models.config import ViTConfig, resolve_config
from vitkit.errors import ConfigError
from vitkit.models.modelfile import load_model, save_model
from vitkit.data.preprocessing import Augment, RandAugmentOps

SMALL_DATA_OPTIONS = [
    {"tokenizer": "shifted", "locality_attention": True},
    {"tokenizer": "conv", "locality_attention": True},
    {"tokenizer": "conv", "locality_attention": False},
]


def _layer_norm(x, gamma, beta, epsilon=1e-6):
    mean = x.mean(-1, keepdims=True)
    variance = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


@pytest.mark.parametrize("image_size, patch", [(32, 4), (48, 6), (8, 1), (30, 3)])
def test_conv_stem_gives_the_patch_grid(image_size, patch):
    stem = ConvStem(patch, 32)
    out = stem(np.zeros((2, image_size, image_size, 3), "float32"))
    assert tuple(out.shape) == (2, (image_size // patch) ** 2, 32)
    strides = [conv.strides[0] for conv in stem.convs]
    remaining = stem.projection.strides[0]
    assert int(np.prod(strides)) * remaining == patch


def test_shifted_patch_tokenizer_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 8, 12, 3)).astype("float32")
    layer = ShiftedPatchTokenizer(4, 16)
    out = np.asarray(layer(images))
    assert out.shape == (2, 6, 16)

    shift = 2
    padded = np.pad(images, [(0, 0), (shift, shift), (shift, shift), (0, 0)])
    shifted = [images] + [padded[:, shift - dy:shift - dy + 8, shift - dx:shift - dx + 12]
                          for dy, dx in ((-2, -2), (-2, 2), (2, -2), (2, 2))]
    # A shift moves content: the copy shifted by (+2, +2) shows at (y, x) the pixel (y-2, x-2).
    np.testing.assert_array_equal(shifted[4][:, 2:, 2:], images[:, :-2, :-2])
    np.testing.assert_array_equal(shifted[4][:, :2], 0)
    stacked = np.concatenate(shifted, axis=-1)
    patches = stacked.reshape(2, 2, 4, 3, 4, 15).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 240)
    gamma, beta = (np.asarray(w) for w in layer.norm.weights)
    kernel, bias = (np.asarray(w) for w in layer.projection.weights)
    expected = _layer_norm(patches, gamma, beta) @ kernel + bias
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_locality_attention_matches_numpy_and_fused_path():
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(2, 5, 16)).astype("float32")
    layer = MultiHeadSelfAttention(16, 4, locality=True)
    layer.build(tokens.shape)
    layer.temperature.assign(1.3)
    fused = np.asarray(layer(tokens))
    explicit, weights = layer(tokens, return_attention=True)
    np.testing.assert_allclose(fused, np.asarray(explicit), rtol=1e-5, atol=1e-5)

    def project(dense):
        kernel, bias = (np.asarray(w) for w in dense.weights)
        return (tokens @ kernel + bias).reshape(2, 5, 4, 4)

    q, k, v = project(layer.query), project(layer.key), project(layer.value)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / 1.3
    scores[:, :, np.arange(5), np.arange(5)] = -np.inf
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(weights)[:, :, np.arange(5), np.arange(5)] == 0)
    mixed = np.einsum("bhqk,bkhd->bqhd", expected, v).reshape(2, 5, 16)
    out_kernel, out_bias = (np.asarray(w) for w in layer.out.weights)
    np.testing.assert_allclose(fused, mixed @ out_kernel + out_bias, rtol=1e-4, atol=1e-5)


def test_locality_temperature_starts_at_the_usual_scale():
    layer = MultiHeadSelfAttention(32, 4, locality=True)
    layer.build((None, 5, 32))
    assert float(layer.temperature.numpy()) == pytest.approx(np.sqrt(8))


def test_default_backbone_variables_are_unchanged():
    """Without the options, the variables are exactly those the checkpoints map onto."""
    vit = VisionTransformer(**TINY_BACKBONE, name="vit")
    vit.build((None, 32, 32, 3))
    paths = sorted(w.path for w in vit.weights)
    assert "vit/embedding/kernel" in paths
    assert not any("temperature" in p or "conv_stem" in p or "shifted" in p for p in paths)
    assert len(paths) == 4 + 2 + 2 * 16  # embedding, class token, position, norm; 16 per block
    assert tuple(vit.embedding.kernel.shape) == (8, 8, 3, 32)


@pytest.mark.parametrize("layer", [
    ConvStem(6, 32, name="conv_stem"),
    ShiftedPatchTokenizer(4, 32, name="shifted_patches"),
    MultiHeadSelfAttention(32, 4, 0.1, locality=True),
    VisionTransformer(**TINY_BACKBONE, tokenizer="shifted", locality_attention=True, drop_path=0.1, seed=3),
    RandAugmentOps(num_ops=3, magnitude=0.7, seed=5),
    Augment({"randaugment_ops": 2, "randaugment_magnitude": 0.3, "flip": None}, seed=1),
], ids=lambda layer: type(layer).__name__)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    rebuilt = type(layer).from_config(json.loads(json.dumps(config)))
    assert rebuilt.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


def test_old_configs_without_the_new_fields_still_load():
    values = ViTConfig(8, 2, 32, 4, 64).to_dict()
    del values["tokenizer"], values["locality_attention"]
    config = ViTConfig.from_dict(values)
    assert (config.tokenizer, config.locality_attention) == ("patch", False)
    assert config.checkpoint_compatible


@pytest.mark.parametrize("options", SMALL_DATA_OPTIONS, ids=lambda o: f"{o['tokenizer']}-lsa{int(o['locality_attention'])}")
def test_save_load_predicts_the_same_and_keeps_attention(tiny_model, shape_arrays, tmp_path, options):
    images = shape_arrays[0][:4]
    model = tiny_model(augment={"randaugment_ops": 2}, **options)
    rng = np.random.default_rng(0)
    for variable in model.weights:  # every variable away from its initial value, BN statistics too
        value = variable.numpy() + rng.normal(0.0, 0.05, variable.shape)
        variable.assign(np.abs(value) if "variance" in variable.path else value)
    path = save_model(model, tmp_path / "m.weights.h5")
    loaded = load_model(path)
    assert loaded.spec == model.spec
    assert loaded.spec.backbone.tokenizer == options["tokenizer"]
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)

    probabilities, attention = loaded.attention_model()(images)
    np.testing.assert_allclose(np.asarray(probabilities), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    tokens = 1 + (32 // 8) ** 2
    assert tuple(attention.shape) == (4, 2, 4, tokens, tokens)
    np.testing.assert_allclose(np.asarray(attention).sum(-1), 1.0, rtol=1e-5)
    diagonal = np.asarray(attention)[..., np.arange(tokens), np.arange(tokens)]
    assert np.all(diagonal == 0) == options["locality_attention"]


def test_pretrained_weights_refuse_small_data_backbones(tiny_model):
    with pytest.raises(ConfigError, match="use --weights none, or --recipe plain"):
        tiny_model(weights="imagenet21k", tokenizer="shifted")


def test_small_images_errors_and_auto_patch():
    assert resolve_config("vit_micro", (8, 8)).patch_size == 1
    assert resolve_config("vit_micro", (32, 32), tokenizer="conv").patch_size == 4
    with pytest.raises(ConfigError, match="smaller than the patch size 16.*larger --image-size"):
        resolve_config("vit_b16", (8, 8))
    with pytest.raises(ConfigError, match="tokens"):
        resolve_config("vit_micro", (128, 128), patch_size=1)
    with pytest.raises(ConfigError, match="tokenizer must be one of"):
        resolve_config("vit_micro", (32, 32), tokenizer="overlapping")


@pytest.mark.slow
def test_jax_backend_forward_attention_and_training_step():
    code = f"""
import numpy as np, keras
assert keras.backend.backend() == "jax"
from vitkit.models.classifier import build_model
model = build_model({list(TINY_CLASSES)}, backbone={TINY_BACKBONE}, image_size=32, seed=0,
                    augment={{"randaugment_ops": 2, "zoom": 0.1}}, tokenizer="shifted", locality_attention=True)
conv = build_model(2, backbone={TINY_BACKBONE}, image_size=32, tokenizer="conv", augment=False)
images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
model.compile(optimizer="adamw", loss="categorical_crossentropy")
loss = model.fit(images, np.eye(3)[[0, 1, 2, 0]], epochs=1, verbose=0).history["loss"][0]
probabilities, attention = model.attention_model()(images)
assert tuple(attention.shape) == (4, 2, 4, 17, 17), attention.shape
np.testing.assert_allclose(np.asarray(probabilities), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
assert float(np.abs(np.asarray(attention)[..., np.arange(17), np.arange(17)]).max()) == 0.0
assert conv.predict(images, verbose=0).shape == (4, 2)
assert np.isfinite(loss)
import sys
assert "tensorflow" not in sys.modules, "the JAX path imported TensorFlow"
print("ok")
"""
    done = run_python(code, backend="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok" in done.stdout
