"""Geometric augmentation as one bilinear resampling per image, whatever the chain of transforms.

Matrices follow :func:`keras.ops.image.affine_transform`: a ``(batch, 3, 3)`` matrix maps an
output pixel ``(x, y, 1)`` to the input position it is read from. Applying transforms ``A`` then
``B`` reads the input at ``A @ B @ p``, so a whole chain composes into one matrix and the image is
resampled once, however many transforms are drawn (Keras' layers resample once per layer).

Pixels read from outside the image are filled the way Keras' layers fill them: ``reflect``
(``d c b a | a b c d | d c b a``, the default of ``RandomRotation``, ``RandomZoom`` and
``RandomTranslation``) or ``constant`` 0 (what RandAugment's geometric operations use).
Everything is ``keras.ops``, so it runs on every backend and device.
"""

from __future__ import annotations

import math
from typing import Sequence

from keras import ops


def affine(a0, a1, a2, b0, b1, b2):
    """``(batch, 3, 3)`` matrices ``[[a0, a1, a2], [b0, b1, b2], [0, 0, 1]]`` from ``(batch,)`` entries."""
    zero = ops.zeros_like(a0)
    rows = [ops.stack([a0, a1, a2], axis=-1), ops.stack([b0, b1, b2], axis=-1),
            ops.stack([zero, zero, ops.ones_like(a0)], axis=-1)]
    return ops.stack(rows, axis=1)


def flip(horizontal, vertical, height: int, width: int):
    """Mirror left-right where ``horizontal`` and top-bottom where ``vertical`` (``(batch,)`` 0/1 floats)."""
    zero = ops.zeros_like(horizontal)
    return affine(1.0 - 2.0 * horizontal, zero, horizontal * (width - 1.0),
                  zero, 1.0 - 2.0 * vertical, vertical * (height - 1.0))


def rotation(degrees, height: int, width: int):
    """Rotate about the image centre, as ``keras.layers.RandomRotation`` does for the same angle."""
    radians = degrees * (math.pi / 180.0)
    cos, sin = ops.cos(radians), ops.sin(radians)
    cx, cy = 0.5 * (width - 1.0), 0.5 * (height - 1.0)
    return affine(cos, -sin, cx - cx * cos + cy * sin,
                  sin, cos, cy - cx * sin - cy * cos)


def zoom(x_factor, y_factor, height: int, width: int):
    """Read a region ``x_factor`` by ``y_factor`` times the image about its centre (above 1 zooms out)."""
    zero = ops.zeros_like(x_factor)
    return affine(x_factor, zero, 0.5 * (width - 1.0) * (1.0 - x_factor),
                  zero, y_factor, 0.5 * (height - 1.0) * (1.0 - y_factor))


def translation(dx, dy):
    """Move the image content ``dx`` pixels right and ``dy`` pixels down."""
    zero, one = ops.zeros_like(dx), ops.ones_like(dx)
    return affine(one, zero, -dx, zero, one, -dy)


def shear(x_factor, y_factor):
    """Read ``(x + x_factor * y, y + y_factor * x)``: ``keras.layers.RandomShear``'s matrix (about the top-left corner)."""
    one = ops.ones_like(x_factor)
    zero = ops.zeros_like(x_factor)
    return affine(one, x_factor, zero, y_factor, one, zero)


def compose(*matrices):
    """One matrix for the transforms applied in the order given."""
    result = matrices[0]
    for matrix in matrices[1:]:
        result = ops.matmul(result, matrix)
    return result


def warp(images, reflected=None, blanked: Sequence[tuple] = (), size: tuple[int, int] | None = None):
    """Resample ``(batch, H, W, C)`` float images once through a chain of affine transforms.

    Args:
        images: the images.
        reflected: ``(batch, 3, 3)`` transforms applied first, whose outside pixels are
            reflected in from the image; ``None`` for none.
        blanked: ``(matrix, active)`` pairs applied after, in order, whose outside pixels are 0;
            ``active`` ``(batch,)`` says which images the stage transforms, the others pass
            through it untouched (nor blanked where an earlier stage moved them).
        size: ``(height, width)`` of the output grid the matrices map from; default the images'.

    Returns:
        The images, bilinearly interpolated, with the fill of every stage. Each blanked stage
        fades its border over one pixel, as a constant-fill bilinear resampling does.
    """
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    out_height, out_width = size or (height, width)
    x = ops.cast(ops.arange(out_width), "float32")[None, None, :] + ops.zeros((1, out_height, 1))
    y = ops.cast(ops.arange(out_height), "float32")[None, :, None] + ops.zeros((1, 1, out_width))
    coverage = None
    for matrix, active in reversed(list(blanked)):
        active = ops.reshape(active, (-1, 1, 1))
        x, y = _apply(ops.where(active, matrix, ops.eye(3, dtype=matrix.dtype)), x, y)
        inside = ops.where(active, _inside(x, width) * _inside(y, height), 1.0)
        coverage = inside if coverage is None else coverage * inside
    if reflected is not None:
        x, y = _apply(reflected, x, y)
    x = x + ops.zeros((shape[0], 1, 1))
    y = y + ops.zeros((shape[0], 1, 1))
    out = _bilinear_reflect(images, x, y)
    return out if coverage is None else out * ops.cast(coverage[..., None], out.dtype)


def _apply(matrix, x, y):
    def entry(row: int, column: int):
        return ops.reshape(matrix[:, row, column], (-1, 1, 1))

    return (entry(0, 0) * x + entry(0, 1) * y + entry(0, 2),
            entry(1, 0) * x + entry(1, 1) * y + entry(1, 2))


def _inside(position, size):
    """The share of a bilinear sample at ``position`` that falls on pixels ``0 .. size-1``."""
    return ops.clip(ops.minimum(position + 1.0, ops.cast(size, "float32") - position), 0.0, 1.0)


def _reflect(index, size):
    """Integer pixel indices folded back into ``0 .. size-1`` by half-sample reflection."""
    period = ops.mod(index, 2 * size)
    return ops.where(period >= size, 2 * size - 1 - period, period)


def _bilinear_reflect(images, x, y):
    """Read ``images`` at float positions ``x``, ``y`` ``(batch, H, W)``: four gathers on the flat pixels."""
    shape = ops.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    flat = ops.reshape(images, (-1, channels))
    x_floor, y_floor = ops.floor(x), ops.floor(y)
    x_weight = ops.cast((x - x_floor)[..., None], images.dtype)
    y_weight = ops.cast((y - y_floor)[..., None], images.dtype)
    x0, y0 = ops.cast(x_floor, "int32"), ops.cast(y_floor, "int32")
    columns = (_reflect(x0, width), _reflect(x0 + 1, width))
    rows = (_reflect(y0, height) * width, _reflect(y0 + 1, height) * width)
    start = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))

    def row_values(row):
        left, right = (ops.take(flat, start + row + column, axis=0) for column in columns)
        return left + x_weight * (right - left)

    top, bottom = (row_values(row) for row in rows)
    return top + y_weight * (bottom - top)
