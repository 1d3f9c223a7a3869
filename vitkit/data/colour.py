"""Colour augmentation with one amount per image, on 0-255 float images.

Each operation (listed in :func:`adjust`) is the one of a Keras preprocessing layer, given the
layer's own per-image amount; an image whose amount is the operation's identity (:data:`IDENTITY`) comes back
unchanged, so a batch can mix images that draw an operation with images that do not without
branching. Results are clipped to 0-255 as the layers clip them.

Brightness, contrast, colour and autocontrast are affine maps of each image's channels,
``pixel @ matrix + offset``; a step applies them all as one such map per image, written out as
element-wise products over the three channels. Sharpness and solarize follow.

Each step's result is computed once and kept (:func:`computed_once`): an XLA compiler would
otherwise fuse what produced it (the resampling's gathers, the previous step's blur) into every
operation that reads it, the per-image means and extremes and the map itself, and compute it
again for each of them.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
from keras import ops

# rgb_to_grayscale's weights (ITU-R BT.601).
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)
# Keras' RandomSharpness blur: centre 5/13, its eight neighbours 1/13 each, zeros beyond the border.
BLUR_CENTRE = 5.0 / 13.0
BLUR_NEIGHBOUR = 1.0 / 13.0

OPERATIONS = ("brightness", "contrast", "colour", "autocontrast", "sharpness", "solarize")
IDENTITY = {"brightness": 0.0, "contrast": 1.0, "colour": 0.0, "autocontrast": 0.0, "sharpness": 0.0,
            "solarize": 256.0}


def adjust(images, amounts: Mapping[str, Any]):
    """Apply one colour step: ``amounts`` maps operation names to ``(batch,)`` amounts.

    At most one operation of a step may act on an image (the others get their identity
    amount): the affine ones are summed into one map. The operations are:

    - ``brightness``: add the amount (``RandomBrightness``' ``rgb_delta``); identity 0.
    - ``contrast``: scale each channel's distance from its mean by the amount
      (``RandomContrast``); identity 1.
    - ``colour``: move the amount of the way to grey (``RandomColorDegeneration``; negative
      saturates); identity 0.
    - ``autocontrast``: stretch each channel to 0-255 where the amount is above 0
      (``AutoContrast``; flat channels stay as they are); identity 0.
    - ``sharpness``: move the amount of the way to a 3x3 blur (``RandomSharpness``' ``1 - 2 *
      factor``; negative sharpens); identity 0.
    - ``solarize``: invert the values at or above the amount (``Solarization``); identity
      anything above 255.
    """
    affine = [name for name in OPERATIONS[:4] if name in amounts]
    if affine:
        images = _channel_affine(images, affine, amounts)
    if "sharpness" in amounts:
        images = _clip(images + _per_image(amounts["sharpness"], images) * (blur(images) - images))
    if "solarize" in amounts:
        images = ops.where(images < _per_image(amounts["solarize"], images), images, 255.0 - images)
    return computed_once(images)


def computed_once(images):
    """``images``, computed once and stored before anything reads them (see the module); on
    backends that do not fuse across operations (TensorFlow without XLA) this changes nothing."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.lax.optimization_barrier(images)
    return images


def blur(images):
    """``RandomSharpness``' 3x3 blur, zeros beyond the border."""
    # Nine shifted slices rather than a depthwise convolution, which XLA runs slowly on the CPU.
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    padded = ops.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])
    window = sum(padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3))
    return BLUR_NEIGHBOUR * window + (BLUR_CENTRE - BLUR_NEIGHBOUR) * images


def _channel_affine(images, names, amounts):
    """``clip(pixel @ matrix + offset)`` per image, the matrix and offset summed over ``names``."""
    shape = ops.shape(images)
    channels = shape[3]
    eye = ops.eye(channels, dtype=images.dtype)[None]
    change = ops.zeros_like(eye)              # matrix - identity, (batch or 1, C, C)
    offset = ops.zeros_like(images[:, 0, 0])  # (batch, C)
    if "brightness" in names:
        offset = offset + _per_image(amounts["brightness"], images)[:, 0, 0]
    if "contrast" in names:
        factor = _per_image(amounts["contrast"], images)[:, 0]
        change = change + (factor - 1.0) * eye
        offset = offset + (1.0 - factor[:, 0]) * ops.mean(images, axis=(1, 2))
    if "colour" in names:
        factor = _per_image(amounts["colour"], images)[:, 0]
        grey = ops.convert_to_tensor(GREY_WEIGHTS, images.dtype)[None, :, None] * ops.ones((1, 1, channels))
        change = change + factor * (grey - eye)
    if "autocontrast" in names:
        low, high = ops.min(images, axis=(1, 2)), ops.max(images, axis=(1, 2))
        span = high - low
        stretch = ops.logical_and(_per_image(amounts["autocontrast"], images)[:, 0, 0] > 0, span > 0)
        scale = ops.where(stretch, 255.0 / ops.maximum(span, 1e-6), 1.0)
        change = change + (scale[:, None, :] - 1.0) * eye
        offset = offset - ops.where(stretch, low * scale, 0.0)
    matrix = ops.reshape(eye + change, (-1, 1, 1, channels, channels))
    mapped = offset[:, None, None, :] + sum(images[..., k:k + 1] * matrix[..., k, :] for k in range(3))
    return _clip(mapped)


def _per_image(amount, images):
    return ops.cast(ops.reshape(amount, (-1, 1, 1, 1)), images.dtype)


def _clip(images):
    return ops.clip(images, 0.0, 255.0)
