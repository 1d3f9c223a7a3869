"""The ViT backbone against a NumPy re-implementation, its attention paths, configs and presets."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from conftest import run_python
from vitkit.models.backbone import VisionTransformer
from vitkit.models.config import PRESETS, ViTConfig, auto_patch_size, resolve_config
from vitkit.errors import ConfigError

TINY = {"patch_size": 8, "num_layers": 2, "hidden_size": 32, "num_heads": 4, "mlp_dim": 64}


def _layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def numpy_vit(weights: dict[str, np.ndarray], images: np.ndarray, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """Reference forward pass in float64 from the variables by name: (features, attention)."""
    p, d, heads = config["patch_size"], config["hidden_size"], config["num_heads"]
    batch, height, width, _ = images.shape
    rows, cols = height // p, width // p
    patches = images.reshape(batch, rows, p, cols, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows * cols, -1)
    kernel = weights["embedding/kernel"].reshape(-1, d)
    tokens = patches @ kernel + weights["embedding/bias"]
    cls = np.broadcast_to(weights["class_token/cls"], (batch, 1, d))
    x = np.concatenate([cls, tokens], axis=1) + weights["posembed_input/pos_embedding"]
    maps = []
    for i in range(config["num_layers"]):
        prefix = f"encoderblock_{i}/"
        h = _layer_norm(x, weights[prefix + "LayerNorm_0/gamma"], weights[prefix + "LayerNorm_0/beta"])
        att = prefix + "MultiHeadDotProductAttention_1/"

        def project(name, h=h, att=att):
            return (h @ weights[att + name + "/kernel"] + weights[att + name + "/bias"]).reshape(batch, -1, heads, d // heads)

        q, k, v = project("query"), project("key"), project("value")
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        a = scores / scores.sum(-1, keepdims=True)
        maps.append(a)
        mixed = np.einsum("bhqk,bkhd->bqhd", a, v).reshape(batch, -1, d)
        x = x + mixed @ weights[att + "out/kernel"] + weights[att + "out/bias"]
        h = _layer_norm(x, weights[prefix + "LayerNorm_2/gamma"], weights[prefix + "LayerNorm_2/beta"])
        mlp = prefix + "MlpBlock_3/"
        h = _gelu(h @ weights[mlp + "Dense_0/kernel"] + weights[mlp + "Dense_0/bias"])
        x = x + h @ weights[mlp + "Dense_1/kernel"] + weights[mlp + "Dense_1/bias"]
    x = _layer_norm(x, weights["encoder_norm/gamma"], weights["encoder_norm/beta"])
    return x[:, 0], np.stack(maps, axis=1)


def _random_backbone(config: dict, image_size: tuple[int, int], seed: int = 0) -> VisionTransformer:
    backbone = VisionTransformer(**config, name="vit")
    backbone.build((None, *image_size, 3))
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    return backbone


@pytest.mark.parametrize("image_size", [(32, 32), (24, 40)])
def test_backbone_matches_numpy_reference(image_size):
    backbone = _random_backbone(TINY, image_size)
    images = np.random.default_rng(1).uniform(-1, 1, (3, *image_size, 3)).astype("float32")
    named = {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v).astype(np.float64) for v in backbone.weights}
    expected_features, expected_attention = numpy_vit(named, images.astype(np.float64), TINY)

    features = keras.ops.convert_to_numpy(backbone(images))
    explicit, attention = backbone(images, return_attention=True)
    tokens = 1 + (image_size[0] // 8) * (image_size[1] // 8)
    assert attention.shape == (3, 2, 4, tokens, tokens)
    np.testing.assert_allclose(features, expected_features, atol=2e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(explicit), features, atol=2e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(attention), expected_attention, atol=2e-5)


def test_variable_paths_follow_the_flax_names():
    backbone = _random_backbone(TINY, (32, 32))
    paths = {v.path: tuple(v.shape) for v in backbone.weights}
    assert paths["vit/embedding/kernel"] == (8, 8, 3, 32)
    assert paths["vit/class_token/cls"] == (1, 1, 32)
    assert paths["vit/posembed_input/pos_embedding"] == (1, 17, 32)
    assert paths["vit/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"] == (32, 32)
    assert paths["vit/encoderblock_1/MlpBlock_3/Dense_0/kernel"] == (32, 64)
    assert paths["vit/encoder_norm/gamma"] == (32,)


def test_config_round_trip():
    backbone = VisionTransformer(**TINY, dropout=0.1, drop_path=0.1, seed=3)
    clone = VisionTransformer.from_config(backbone.get_config())
    assert clone.config == backbone.config
    assert clone.seed == 3


def _parameter_count(config: ViTConfig, image_size: int) -> int:
    """Parameters of a ViT backbone, counted from its dimensions."""
    d, m, p = config.hidden_size, config.mlp_dim, config.patch_size
    tokens = (image_size // p) ** 2 + 1
    block = 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
    return p * p * 3 * d + d + d + tokens * d + config.num_layers * block + 2 * d


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_with_its_dimensions(name):
    image_size = 224 if PRESETS[name].patch_size else 48
    config = resolve_config(name, (image_size, image_size))
    backbone = VisionTransformer(**config.to_dict(), name="vit")
    backbone.build((None, image_size, image_size, 3))
    output = backbone.compute_output_spec(keras.KerasTensor((2, image_size, image_size, 3)))
    assert tuple(output.shape) == (2, config.hidden_size)
    assert sum(math.prod(v.shape) for v in backbone.weights) == _parameter_count(config, image_size)


def test_vit_b16_has_the_published_size():
    config = PRESETS["vit_b16"]
    assert (config.patch_size, config.num_layers, config.hidden_size, config.num_heads, config.mlp_dim) == \
        (16, 12, 768, 12, 3072)
    assert round(_parameter_count(config, 224) / 1e6, 1) == 85.8


@pytest.mark.parametrize("size, patch", [((32, 32), 4), ((48, 48), 6), ((28, 28), 2), ((64, 96), 8), ((8, 8), 1)])
def test_auto_patch_size(size, patch):
    assert auto_patch_size(size) == patch


@pytest.mark.parametrize("overrides, message", [
    ({"patch_size": 7}, "not a multiple of the patch size"),
    ({"num_heads": 5}, "not divisible by 5 heads"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"num_layers": 0}, "at least one layer"),
])
def test_bad_configurations_are_explained(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("vit_micro", (32, 32), **overrides)


def test_unknown_backbone_lists_the_presets():
    with pytest.raises(ConfigError, match="vit_b16"):
        resolve_config("vit_huge", (224, 224))


def test_patch_embedding_paths_agree():
    """Training uses a strided convolution, prediction a product over flattened patches: same numbers."""
    from vitkit.models.backbone import PatchEmbedding

    layer = PatchEmbedding(hidden_size=12, patch_size=4)
    images = np.random.default_rng(3).normal(size=(2, 16, 24, 3)).astype("float32")
    layer.build(images.shape)
    layer.bias.assign(np.random.default_rng(4).normal(size=12).astype("float32"))
    convolution = keras.ops.convert_to_numpy(layer(images, training=True))
    product = keras.ops.convert_to_numpy(layer(images, training=False))
    assert product.shape == (2, 4 * 6, 12)
    np.testing.assert_allclose(product, convolution, atol=1e-5)
    patch = images[:, 4:8, 8:12, :].reshape(2, -1)  # row 1, column 2 -> token 1 * 6 + 2
    expected = patch @ keras.ops.convert_to_numpy(layer.kernel).reshape(-1, 12) + keras.ops.convert_to_numpy(layer.bias)
    np.testing.assert_allclose(product[:, 8], expected, atol=1e-5)


def test_exact_gelu_matches_the_erf_definition():
    from vitkit.models.backbone import _erf, _gelu_exact

    x = np.linspace(-9, 9, 20001)
    expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(_gelu_exact(x.astype("float32"))), expected, atol=2e-6)
    # The written-out erf (the JAX backend's GELU) on its own, whatever backend runs the tests.
    erf = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(_erf(x.astype("float32"))), erf, atol=5e-7)


_GELU_GRADIENT_ON_JAX = """
import contextlib, io, math
import jax, jax.numpy as jnp, numpy as np
from vitkit.models.blocks import _gelu_exact

x = np.linspace(-9, 9, 20001)
expected = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
                     for v in x])
gradient = jax.vmap(jax.grad(_gelu_exact))(jnp.asarray(x, jnp.float32))
assert np.abs(np.asarray(gradient, np.float64) - expected).max() < 1e-5, "float32 derivative"
half = jnp.asarray(x, jnp.bfloat16)
value, pullback = jax.vjp(_gelu_exact, half)
(gradient,) = pullback(jnp.full_like(value, 3.0))
assert value.dtype == gradient.dtype == jnp.bfloat16
exact = 3 * jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(half.astype(jnp.float32))
assert np.abs(np.asarray(gradient, np.float64) - np.asarray(exact, np.float64)).max() <= 3 * 2 ** -7, "bfloat16"
kept = io.StringIO()
with contextlib.redirect_stdout(kept):
    jax.ad_checkpoint.print_saved_residuals(lambda v: _gelu_exact(v).sum(), half)
kept = kept.getvalue().strip().splitlines()
assert len(kept) == 1 and kept[0].startswith("bf16[20001] from the argument"), kept
print("OK")
"""


def test_exact_gelu_gradient_on_jax():
    """The JAX backend's GELU has its derivative written out: it must be GELU's derivative, in
    float32 and in the input's bfloat16, and keep only the input for the backward pass."""
    done = run_python(_GELU_GRADIENT_ON_JAX, backend="jax")
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


_PADDED_ONCE_ON_JAX = """
import jax, keras, numpy as np
from vitkit.models.backbone import VisionTransformer

keras.utils.set_random_seed(0)
vit = VisionTransformer(patch_size=8, num_layers=2, hidden_size=32, num_heads=4, mlp_dim=64, pooling=POOLING)
images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")  # 17 tokens
vit.build(images.shape)
weights = np.random.default_rng(1).normal(size=(3, 32)).astype("float32")
trainable = [v.value for v in vit.trainable_variables]
non_trainable = [v.value for v in vit.non_trainable_variables]

def loss(trainable):
    features = vit.stateless_call(trainable, non_trainable, images, training=True)[0]
    return (features * weights).sum(), features

def run():
    step = jax.value_and_grad(lambda t: loss(t), has_aux=True)  # a new function: no cached trace
    return "18,32]" in str(jax.make_jaxpr(step)(trainable)), step(trainable)

padded_once, ((_, padded), padded_grads) = run()
VisionTransformer._pads_once = lambda *args: False
padded_once_too, ((_, plain), plain_grads) = run()
assert padded_once and not padded_once_too
np.testing.assert_allclose(padded, vit(images, training=False), rtol=1e-5, atol=1e-5)  # the prediction path
np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-6)
for a, b in zip(padded_grads, plain_grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("OK")
"""


@pytest.mark.parametrize("pooling", ["token", "mean"])
def test_training_sequence_padded_once_gives_the_same_features_and_gradients_on_jax(pooling):
    """On JAX the blocks carry one padding token through training steps (cuDNN needs an even
    length): it must change neither the pooled features nor any weight's gradient."""
    done = run_python(_PADDED_ONCE_ON_JAX.replace("POOLING", repr(pooling)), backend="jax")
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


def test_training_and_prediction_paths_give_the_same_features_without_dropout():
    """Training computes query, key and value in one matrix product, prediction in three (and on
    JAX training pads the sequence once): without dropout both give the same features."""
    vit = VisionTransformer(**TINY)
    images = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype("float32")
    trained, predicted = (keras.ops.convert_to_numpy(vit(images, training=mode)) for mode in (True, False))
    np.testing.assert_allclose(trained, predicted, rtol=1e-5, atol=1e-6)
