"""Attention maps of models with register tokens and of mean-pooled models: maps read the patch
tokens only, the class token's row or the mean of the patch rows, against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

import vitkit
from conftest import TINY_BACKBONE, make_photo_tree
from vitkit.explanation.attention import attention_weights
from vitkit.explanation.outputs import bertviz_attention, token_names
from vitkit.explanation.rollout import attention_rollout, class_token_attention, gradient_rollout, normalise_maps

READOUTS = [(1, "token"), (3, "token"), (1, "mean"), (5, "mean")]


def random_attention(prefix: int, patches: int = 9, layers: int = 3, heads: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = prefix + patches
    scores = rng.normal(0, 2, (2, layers, heads, tokens, tokens))
    weights = np.exp(scores)
    return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def readout(tokens: int, prefix: int, pooling: str) -> np.ndarray:
    """The row vector that pools the tokens: the class token, or the mean of the patches."""
    vector = np.zeros(tokens)
    if pooling == "mean":
        vector[prefix:] = 1.0 / (tokens - prefix)
    else:
        vector[0] = 1.0
    return vector


def numpy_rollout(attention: np.ndarray, prefix: int, pooling: str) -> np.ndarray:
    fused = attention.astype(np.float64).mean(axis=2)
    tokens = fused.shape[-1]
    mixed = fused + np.eye(tokens)
    mixed /= mixed.sum(-1, keepdims=True)
    product = np.stack([np.linalg.multi_dot(list(m[::-1])) for m in mixed])  # layer L-1 @ ... @ layer 0
    return (readout(tokens, prefix, pooling) @ product)[:, prefix:]


def numpy_gradient_rollout(attention: np.ndarray, gradients: np.ndarray, prefix: int, pooling: str) -> np.ndarray:
    tokens = attention.shape[-1]
    maps = []
    for a, g in zip(attention.astype(np.float64), gradients.astype(np.float64)):
        relevance = np.eye(tokens)
        for layer in range(a.shape[0]):
            relevance = relevance + np.maximum(g[layer] * a[layer], 0).mean(axis=0) @ relevance
        maps.append(readout(tokens, prefix, pooling) @ relevance)
    return np.stack(maps)[:, prefix:]


@pytest.mark.parametrize("prefix, pooling", READOUTS)
def test_rollout_reads_the_pooled_row_over_the_patches(prefix, pooling):
    attention = random_attention(prefix)
    found = ops.convert_to_numpy(attention_rollout(attention, "mean", 0.0, prefix, pooling))
    assert found.shape == (2, 9)
    np.testing.assert_allclose(found, numpy_rollout(attention, prefix, pooling), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prefix, pooling", READOUTS)
def test_gradient_relevance_reads_the_pooled_row_over_the_patches(prefix, pooling):
    attention = random_attention(prefix, seed=1)
    gradients = np.random.default_rng(2).normal(size=attention.shape).astype(np.float32)
    found = ops.convert_to_numpy(gradient_rollout(attention, gradients, prefix, pooling))
    np.testing.assert_allclose(found, numpy_gradient_rollout(attention, gradients, prefix, pooling), rtol=1e-4, atol=1e-6)


def test_layer_maps_leave_the_prefix_tokens_out():
    attention = random_attention(5)[:, 0]  # (batch, heads, tokens, tokens)
    np.testing.assert_array_equal(ops.convert_to_numpy(class_token_attention(attention, 5, "token")), attention[..., 0, 5:])
    mean = ops.convert_to_numpy(class_token_attention(attention, 5, "mean"))
    np.testing.assert_allclose(mean, attention[..., 5:, 5:].mean(axis=-2), rtol=1e-6)
    assert not np.allclose(mean, attention[..., 0, 5:]), "mean pooling must not read the class token's row"


def test_token_names_and_bertviz_attention_name_the_registers():
    assert token_names((1, 2), registers=2) == ["CLS", "REG_0", "REG_1", "patch_0_0", "patch_0_1"]
    data = bertviz_attention(random_attention(3, patches=4)[0], (2, 2), registers=2)
    assert data["tokens"][:4] == ["CLS", "REG_0", "REG_1", "patch_0_0"] and len(data["tokens"]) == 7


@pytest.fixture(scope="module")
def register_model():
    options = dict(register_tokens=2, no_embed_class=True, layer_scale=0.5, pooling="mean", fc_norm=True)
    model = vitkit.build_model(["circle", "square", "triangle"], backbone={**TINY_BACKBONE, **options},
                               image_size=32, augment=False, seed=0)
    rng = np.random.default_rng(0)
    for variable in model.backbone.weights:  # sharper attention than the initial weights give
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    return model


@pytest.mark.parametrize("method", ["rollout", "layer", "gradient"])
def test_explain_a_mean_pooled_model_with_registers(register_model, method, tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=1, size=32)
    report = tmp_path / "report.html"
    result = vitkit.explain(register_model, photos, method=method, layer=-1, report=report, progress=False)
    assert result.native_maps.shape == (3, 4, 4) and result.layer_maps.shape == (3, 2, 4, 4)
    _, attention = attention_weights(register_model, result.pixels(range(3)))
    assert attention.shape[-1] == 1 + 2 + 16
    expected_layers = attention.mean(axis=2)[..., 3:, 3:].mean(axis=-2).reshape(3, 2, 4, 4)
    np.testing.assert_allclose(result.layer_maps, expected_layers, rtol=1e-4, atol=1e-6)
    if method == "rollout":
        expected = normalise_maps(numpy_rollout(attention, 3, "mean").reshape(3, 4, 4))
        np.testing.assert_allclose(result.native_maps, expected, atol=1e-4)
    page = report.read_text()
    assert "the mean of the patch tokens&#x27; rows" in page or "the mean of the patch tokens' rows" in page
    assert "left out: the class token and 2 register tokens" in page


def test_a_class_token_model_says_only_the_class_token_is_left_out(tiny_model, tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=1, size=32)
    result = vitkit.explain(tiny_model(), photos, method="rollout", progress=False)
    assert result.tokens_read() == "the class token's row over the 16 patch tokens; left out: the class token"
