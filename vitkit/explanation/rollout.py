"""The maths of the maps, in ``keras.ops``: it runs inside a compiled step and on NumPy arrays
alike.

Every attention map is one row of a ``(tokens, tokens)`` matrix read over the patch tokens
only: the class token, the distillation token and the register tokens (the first
``prefix_tokens``) are never part of a map.
Which row depends on how the model pools: with ``pooling="token"`` the class token's row (what
the classifier reads), with ``pooling="mean"`` the mean of the patch tokens' rows (the classifier
reads the mean of the patch tokens, so the map is how much that mean draws from each patch).
Integrated gradients work on the pixels instead and stay there: their positive part is blurred
with a Gaussian of half a patch (:func:`positive_pixel_map`), so that method's maps have one value
per pixel and the attention methods' one per patch (:func:`map_resolution`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from keras import ops

from vitkit.errors import ConfigError

METHODS = ("integrated", "rollout", "gradient", "layer")
PIXEL_METHODS = ("integrated",)
INTEGRATED_STEPS = 8
HEAD_FUSIONS = ("mean", "max", "min")


def map_resolution(method: str) -> str:
    """``pixels`` for a method whose maps have one value per pixel of the image the model sees,
    ``patches`` for one whose maps have one value per patch (on the backbone's patch grid)."""
    return "pixels" if method in PIXEL_METHODS else "patches"


def fuse_heads(attention, head_fusion: str = "mean"):
    """Fuse the heads of attention weights: ``(..., heads, queries, keys)`` -> ``(..., queries, keys)``."""
    _check_choice(head_fusion, HEAD_FUSIONS, "head fusion")
    reduce = {"mean": ops.mean, "max": ops.max, "min": ops.min}[head_fusion]
    return reduce(attention, axis=-3)


def discard_lowest(fused, discard_ratio: float):
    """Set the lowest ``discard_ratio`` share of each ``(tokens, tokens)`` matrix to zero.

    Exactly ``int(tokens**2 * discard_ratio)`` entries are dropped per matrix, chosen among all
    entries except ``[0, 0]`` (the class token's attention to itself), which is always kept.
    """
    _check_ratio(discard_ratio)
    tokens = fused.shape[-1]
    count = min(int(tokens * tokens * discard_ratio), tokens * tokens - 1)
    if count <= 0:
        return fused
    flat = ops.reshape(fused, (-1, tokens * tokens))
    is_class_self = ops.arange(tokens * tokens) == 0
    ranked = ops.where(is_class_self, ops.cast(np.inf, flat.dtype), flat)
    ranks = ops.argsort(ops.argsort(ranked, axis=-1), axis=-1)
    kept = ops.where(ranks >= count, flat, ops.zeros_like(flat))
    return ops.reshape(kept, ops.shape(fused))


def attention_rollout(attention, head_fusion: str = "mean", discard_ratio: float = 0.0,
                      prefix_tokens: int = 1, pooling: str = "token"):
    """Attention rollout: the pooled row of the rolled-out attention over the patches, before normalisation.

    Args:
        attention: ``(batch, layers, heads, tokens, tokens)`` attention weights: class token,
            then ``prefix_tokens - 1`` distillation and register tokens, then the patches.
        head_fusion: ``mean``, ``max`` or ``min`` over the heads.
        discard_ratio: share of the lowest fused weights per layer set to zero (0 keeps all).
        prefix_tokens: tokens before the patches (1 + distillation token + registers), left out of the map.
        pooling: ``token`` reads the class token's row, ``mean`` the mean of the patch rows.

    Returns:
        ``(batch, patches)`` relevance of every patch token.
    """
    fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
    mixed = fused + ops.eye(fused.shape[-1], dtype=fused.dtype)
    mixed = mixed / ops.sum(mixed, axis=-1, keepdims=True)
    return _pooled_row_of_product(mixed, prefix_tokens, pooling)[:, prefix_tokens:]


def gradient_rollout(attention, gradients, prefix_tokens: int = 1, pooling: str = "token"):
    """Class-specific relevance (Chefer et al. 2021) from attention weights and their gradients.

    ``R = I``; per layer, first to last, ``R += mean_heads(max(gradients * attention, 0)) @ R``.

    Args:
        attention: ``(batch, layers, heads, tokens, tokens)`` attention weights.
        gradients: gradients of the explained class's score with respect to ``attention``.
        prefix_tokens, pooling: as for :func:`attention_rollout`.

    Returns:
        ``(batch, patches)``: the pooled row of ``R`` over the patches.
    """
    weighted = ops.mean(ops.relu(gradients * attention), axis=2)
    eye = ops.eye(weighted.shape[-1], dtype=weighted.dtype)
    return _pooled_row_of_product(weighted + eye, prefix_tokens, pooling)[:, prefix_tokens:]


def mean_colour(images):
    """The baseline of integrated gradients: every pixel of each image set to the image's mean
    colour, ``(batch, H, W, channels)`` -> ``(batch, 1, 1, channels)`` (broadcasts over the pixels).

    A flat image of the photo's own colour carries no shape; unlike black it does not credit a
    pixel for being bright or coloured.
    """
    return ops.mean(images, axis=(1, 2), keepdims=True)


def integrated_gradients(images, baseline, gradient_sum, steps: int):
    """Integrated gradients (Sundararajan et al. 2017) from ``baseline``, summed over the channels.

    Args:
        images: ``(batch, H, W, channels)`` pixels 0-255.
        baseline: where the path starts, broadcastable to ``images`` (:func:`mean_colour`).
        gradient_sum: the sum, over ``steps`` points of the straight path from the baseline to
            the image, of the gradients of the explained score with respect to the pixels there.
        steps: how many points the sum covers.

    Returns:
        ``(batch, H, W)``: ``(images - baseline) * gradient_sum / steps``, summed over the channels.
    """
    difference = ops.cast(images, gradient_sum.dtype) - ops.cast(baseline, gradient_sum.dtype)
    return ops.sum(difference * gradient_sum, axis=-1) / steps


def path_points(steps: int) -> np.ndarray:
    """The ``steps`` points of the path from the baseline (0) to the image (1) where integrated
    gradients are taken: the midpoints of equal intervals of ``(0, 1]`` (the midpoint rule)."""
    return (np.arange(steps, dtype=np.float32) + 0.5) / steps


def positive_pixel_map(attribution, patch_size: int):
    """The map of a pixel attribution: its positive part (the evidence for the class), blurred with
    a Gaussian of half a patch (sigma ``patch_size / 2`` pixels, :func:`gaussian_blur`);
    ``(batch, H, W)`` -> ``(batch, H, W)``.

    The blur spreads a pixel's credit over about the area a patch token sees, so the map's
    maximum falls on a region the model uses rather than on one sharp pixel, without the patch
    grid's steps.
    """
    return gaussian_blur(ops.relu(attribution), patch_size / 2)


def gaussian_blur(maps, sigma: float):
    """Separable Gaussian blur of ``(batch, H, W)`` maps, ``sigma`` in pixels, as two matrix
    products (:func:`blur_matrix`): the kernel is cut at the map's edges and renormalised there,
    so every output pixel is a weighted mean of the map's own pixels."""
    vertical = ops.convert_to_tensor(blur_matrix(maps.shape[1], sigma), maps.dtype)
    horizontal = ops.convert_to_tensor(blur_matrix(maps.shape[2], sigma), maps.dtype)
    return ops.einsum("hr,brc,wc->bhw", vertical, maps, horizontal)


def blur_matrix(size: int, sigma: float) -> np.ndarray:
    """``(size, size)`` float32 weights of a 1-D Gaussian blur along an axis of ``size`` pixels:
    row ``i`` holds ``exp(-(i - j)**2 / (2 sigma**2))`` over the pixels ``j``, divided by its sum."""
    pixels = np.arange(size, dtype=np.float64)
    weights = np.exp(-(pixels[:, None] - pixels[None, :]) ** 2 / (2.0 * sigma ** 2))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def class_token_attention(attention, prefix_tokens: int = 1, pooling: str = "token"):
    """How much the pooled token attends to each patch: ``(..., tokens, tokens)`` -> ``(..., patches)``:
    the class token's row, or with ``pooling="mean"`` the mean of the patch tokens' rows."""
    if pooling == "mean":
        return ops.mean(attention[..., prefix_tokens:, prefix_tokens:], axis=-2)
    return attention[..., 0, prefix_tokens:]


def _pooled_row_of_product(matrices, prefix_tokens: int, pooling: str):
    """The pooled row of ``matrices[:, L-1] @ ... @ matrices[:, 0]`` for ``(batch, L, T, T)``, as
    ``(batch, T)``: row 0, or with ``pooling="mean"`` the mean of the patch rows.

    Carrying one row through the layers costs ``T**2`` per layer instead of a ``T**3`` product.
    """
    layers = matrices.shape[1]
    last = matrices[:, layers - 1]
    row = ops.mean(last[:, prefix_tokens:, :], axis=1) if pooling == "mean" else last[:, 0, :]
    for layer in range(layers - 2, -1, -1):
        row = ops.einsum("bt,bts->bs", row, matrices[:, layer])
    return row


# From patch rows to image maps (NumPy) ---------------------------------------------------------

def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Divide every map (first axis = map) by its maximum; all-zero maps stay zero. Float32 in [0, 1]."""
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    top = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(len(maps), np.float32)
    scale = np.where(top > 0, top, 1.0).reshape((-1,) + (1,) * (maps.ndim - 1))
    return np.clip(maps / scale, 0.0, 1.0)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(n, rows, cols)`` maps to ``(n, height, width)``.

    Pixel centres are aligned (the ``cv2.INTER_LINEAR`` / half-pixel convention), so a patch's
    value sits at its centre and edges are clamped.
    """
    maps = np.asarray(maps, dtype=np.float32)
    vertical = _interpolation_matrix(maps.shape[1], size[0])
    horizontal = _interpolation_matrix(maps.shape[2], size[1])
    return np.einsum("hr,nrc,wc->nhw", vertical, maps, horizontal, optimize=True).astype(np.float32)


def _interpolation_matrix(source: int, target: int) -> np.ndarray:
    """``(target, source)`` weights of half-pixel linear interpolation with clamped edges."""
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    position = np.clip(position, 0.0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = (position - low).astype(np.float32)
    matrix = np.zeros((target, source), dtype=np.float32)
    np.add.at(matrix, (np.arange(target), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(target), high), weight)
    return matrix


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}; got {value!r}")


def _check_ratio(discard_ratio: float) -> None:
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard ratio must be at least 0 and below 1, got {discard_ratio}")
