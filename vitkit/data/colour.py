"""Colour augmentation with one amount per image, as element-wise work on 0-255 float images.

Each operation is the one of the Keras layer named beside it, given the layer's own per-image
amount; an image whose amount is the operation's identity (:data:`IDENTITY`) comes back
unchanged, so a batch can mix images that draw an operation with images that do not without
branching. Results are clipped to 0-255 as the layers clip them.
"""

from __future__ import annotations

from typing import Any, Mapping

from keras import ops

# rgb_to_grayscale's weights (ITU-R BT.601).
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)
# Keras' RandomSharpness blur: centre 5/13, its eight neighbours 1/13 each, zeros beyond the border.
BLUR_CENTRE = 5.0 / 13.0
BLUR_NEIGHBOUR = 1.0 / 13.0


def _per_image(amount, images):
    return ops.cast(ops.reshape(amount, (-1, 1, 1, 1)), images.dtype)


def _clip(images):
    return ops.clip(images, 0.0, 255.0)


def brightness(images, delta):
    """Add ``delta`` (``RandomBrightness``' ``rgb_delta``); identity 0."""
    return _clip(images + _per_image(delta, images))


def contrast(images, factor):
    """Scale each channel's distance from its mean by ``factor`` (``RandomContrast``); identity 1."""
    mean = ops.mean(images, axis=(1, 2), keepdims=True)
    return _clip(images + (_per_image(factor, images) - 1.0) * (images - mean))


def colour(images, factor):
    """Move towards grey by ``factor`` (``RandomColorDegeneration``; negative saturates); identity 0."""
    grey = ops.sum(images * ops.convert_to_tensor(GREY_WEIGHTS, images.dtype), axis=-1, keepdims=True)
    return _clip(images + _per_image(factor, images) * (grey - images))


def sharpness(images, amount):
    """Move towards a 3x3 blur by ``amount`` (``RandomSharpness``' ``1 - 2 * factor``; negative sharpens); identity 0."""
    channels = ops.shape(images)[-1]
    kernel = ops.convert_to_tensor(
        [[BLUR_NEIGHBOUR] * 3, [BLUR_NEIGHBOUR, BLUR_CENTRE, BLUR_NEIGHBOUR], [BLUR_NEIGHBOUR] * 3], images.dtype
    )
    kernel = ops.tile(ops.reshape(kernel, (3, 3, 1, 1)), (1, 1, channels, 1))
    blurred = ops.depthwise_conv(images, kernel, strides=1, padding="same", data_format="channels_last")
    return _clip(images + _per_image(amount, images) * (blurred - images))


def solarize(images, threshold):
    """Invert the values at or above ``threshold`` (``Solarization``); identity anything above 255."""
    return ops.where(images < _per_image(threshold, images), images, 255.0 - images)


def autocontrast(images, on):
    """Stretch each channel to 0-255 where ``on`` (``AutoContrast``); flat channels stay as they are."""
    low = ops.min(images, axis=(1, 2), keepdims=True)
    high = ops.max(images, axis=(1, 2), keepdims=True)
    span = high - low
    stretched = _clip((images - low) * (255.0 / ops.maximum(span, 1e-6)))
    return ops.where(ops.logical_and(_per_image(on, images) > 0, span > 0), stretched, images)


# In the order they are applied when several are given at once.
OPERATIONS = {"brightness": brightness, "contrast": contrast, "colour": colour,
              "sharpness": sharpness, "solarize": solarize, "autocontrast": autocontrast}
IDENTITY = {"brightness": 0.0, "contrast": 1.0, "colour": 0.0, "sharpness": 0.0,
            "solarize": 256.0, "autocontrast": 0.0}


def adjust(images, amounts: Mapping[str, Any]):
    """Apply the operations named in ``amounts`` (name -> ``(batch,)`` amounts) in :data:`OPERATIONS` order."""
    for name, operation in OPERATIONS.items():
        if name in amounts:
            images = operation(images, amounts[name])
    return images
