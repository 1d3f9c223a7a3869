"""Position embeddings resampled to another patch grid, each family of checkpoints its own way.

A checkpoint's position embedding is trained for one grid of patches; a model at another image
size needs it on its own grid. The patch part is resampled as an image, the class and register
tokens' part (when the embedding covers them) is kept as it is. Two resamplings:

``bilinear``
    Bilinear with aligned corners, ``scipy.ndimage.zoom(order=1)``: what the original JAX ViT
    code and vit-keras apply to the Flax ``.npz`` checkpoints (2020 and AugReg).
``bicubic``
    timm's ``resample_abs_pos_embed``: ``torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False, antialias=True)``. With ``antialias`` PyTorch uses its separable
    anti-aliased kernel in both directions (Keys' cubic with ``a = -0.5``, the kernel widened by
    the scale when shrinking, weights renormalised at the borders, as Pillow does), which differs
    from plain bicubic (``a = -0.75``, edges clamped) when enlarging too.
"""

from __future__ import annotations

import math

import numpy as np

from vitkit.errors import WeightsError

RESAMPLINGS = ("bilinear", "bicubic")


def square_grid(tokens: int, what: str) -> tuple[int, int]:
    """The ``(side, side)`` grid of ``tokens`` patch tokens; an error when they are not a square."""
    side = int(round(math.sqrt(tokens)))
    if side * side != tokens:
        raise WeightsError(f"{what}: the position embedding has {tokens} patch tokens, not a square grid")
    return side, side


def resample_position_embedding(embedding: np.ndarray, grid: tuple[int, int], prefix_tokens: int,
                                method: str, old_grid: tuple[int, int] | None = None) -> np.ndarray:
    """``(1, prefix + rows * cols, D)`` -> ``(1, prefix + grid[0] * grid[1], D)``, float32.

    Args:
        embedding: the checkpoint's position embedding.
        grid: the model's patch grid (rows, columns).
        prefix_tokens: leading tokens that are not patches (1 for the class token; 0 when the
            embedding covers the patches only), kept unchanged.
        method: ``bilinear`` or ``bicubic`` (see the module's description).
        old_grid: the checkpoint's grid; by default the square one its patch tokens make.
    """
    prefix, patches = embedding[:, :prefix_tokens], embedding[:, prefix_tokens:]
    old_grid = tuple(old_grid) if old_grid is not None else square_grid(patches.shape[1], "checkpoint")
    if old_grid == tuple(grid):
        return embedding
    if old_grid[0] * old_grid[1] != patches.shape[1]:
        raise WeightsError(f"position embedding of {patches.shape[1]} patch tokens is not a {old_grid[0]}x{old_grid[1]} grid")
    matrix = _bilinear_aligned if method == "bilinear" else _bicubic_antialiased
    table = patches[0].reshape(old_grid[0], old_grid[1], -1).astype(np.float64)
    table = np.einsum("hr,rcd,wc->hwd", matrix(old_grid[0], grid[0]), table, matrix(old_grid[1], grid[1]))
    resized = table.reshape(1, grid[0] * grid[1], -1).astype(embedding.dtype)
    return np.concatenate([prefix, resized], axis=1)


def _bilinear_aligned(source: int, target: int) -> np.ndarray:
    """``(target, source)`` weights of linear interpolation with the corner samples aligned."""
    positions = np.linspace(0.0, source - 1.0, target) if target > 1 else np.zeros(1)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = positions - low
    matrix = np.zeros((target, source))
    np.add.at(matrix, (np.arange(target), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(target), high), weight)
    return matrix


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bicubic_antialiased(source: int, target: int) -> np.ndarray:
    """``(target, source)`` weights of PyTorch's anti-aliased bicubic resampling along one axis."""
    scale = source / target
    stretch = max(scale, 1.0)  # the kernel widens only when shrinking
    support = 2.0 * stretch
    matrix = np.zeros((target, source))
    for i in range(target):
        centre = scale * (i + 0.5)
        # PyTorch truncates these bounds towards zero, as int() does.
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), source)
        taps = np.arange(first, last)
        weights = _cubic((taps - centre + 0.5) / stretch)
        total = weights.sum()
        matrix[i, first:last] = weights / total if total != 0 else weights
    return matrix
