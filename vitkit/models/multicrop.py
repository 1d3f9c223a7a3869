"""DINO's multi-crop views (Caron et al. 2021), drawn on the accelerator in one layer.

From a batch of uint8 images, :class:`MultiCrop` draws two global views at the image size and
``local_crops`` local views at a smaller size. Each view is one bilinear resampling
(:func:`vitkit.data.warp.warp`: a random resized crop and a horizontal flip composed into one
matrix), then DINO's colour steps as vitkit's colour operations (:mod:`vitkit.data.colour`), each
drawn per image:

=====================  ================================================================
step                   per view
=====================  ================================================================
crop                   global: 40-100% of the area; local: 5-40%; aspect ratio 3/4-4/3
                       (log-uniform), clipped to the image
flip                   left-right, half of the images
colour jitter (p 0.8)  brightness ``U(-0.2, 0.2) * 255`` added, then contrast
                       ``U(0.6, 1.4)``, then saturation ``U(-0.2, 0.2)`` (each its own step)
greyscale (p 0.2)      all the way to grey
blur                   the 3x3 blur of ``RandomSharpness``; first global view always, second
                       0.1, local views 0.5
solarize               at 128, second global view only, 0.2
=====================  ================================================================

DINO adds hue jitter and a Gaussian blur of 0.1-2 pixels at 224 px; vitkit has no hue operation
and its 3x3 blur is of that order at the 32-64 px these models see. Views come out as 0-255
floats: the model scales them as it scales any input.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from vitkit.data import colour, warp

GLOBAL_SCALE = (0.4, 1.0)
LOCAL_SCALE = (0.05, 0.4)
ASPECT = (3.0 / 4.0, 4.0 / 3.0)
# (blur, solarize) probabilities of the first global view, the second, and every local view.
GLOBAL_EFFECTS = ((1.0, 0.0), (0.1, 0.2))
LOCAL_EFFECTS = (0.5, 0.0)
JITTER = 0.8
GREYSCALE = 0.2
SOLARIZE_AT = 128.0


def local_crop_size(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Local views' size: half the image's sides, in whole patches, at least two patches a side."""
    return tuple(max(side // 2 // patch_size, 2) * patch_size for side in image_size)


class MultiCrop(keras.layers.Layer):
    """``call(uint8 images)`` -> ``(global views, local views)``: lists of 0-255 float batches,
    2 at ``image_size`` and ``local_crops`` at ``local_size`` (see the module).

    Draws from Keras' seeded random stream: reproducible, and resumed with the run.
    """

    def __init__(self, image_size: tuple[int, int], local_size: tuple[int, int], local_crops: int,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(image_size)
        self.local_size = tuple(local_size)
        self.local_crops = local_crops
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        images = ops.cast(images, "float32")
        global_views = [self.view(images, self.image_size, GLOBAL_SCALE, *effects) for effects in GLOBAL_EFFECTS]
        local_views = [self.view(images, self.local_size, LOCAL_SCALE, *LOCAL_EFFECTS)
                       for _ in range(self.local_crops)]
        return global_views, local_views

    def view(self, images, size: tuple[int, int], scale: tuple[float, float], blur: float, solarize: float):
        """One view of every image: crop and flip in one resampling, then the colour steps."""
        height, width = images.shape[1], images.shape[2]
        crop = self._crop(ops.shape(images)[0], (height, width), size, scale)
        flipped = ops.cast(self._uniform(images) < 0.5, "float32")
        matrix = warp.compose(crop, warp.flip(flipped, ops.zeros_like(flipped), *size))
        view = colour.computed_once(warp.warp(images, matrix, size=size))
        jitter = self._chosen(images, JITTER)
        view = colour.adjust(view, {"brightness": jitter * self._uniform(images, -0.2, 0.2) * 255.0})
        view = colour.adjust(view, {"contrast": 1.0 + jitter * (self._uniform(images, 0.6, 1.4) - 1.0)})
        view = colour.adjust(view, {"colour": jitter * self._uniform(images, -0.2, 0.2)})
        view = colour.adjust(view, {"colour": self._chosen(images, GREYSCALE)})
        if blur:
            view = colour.adjust(view, {"sharpness": self._chosen(images, blur)})
        if solarize:
            view = colour.adjust(view, {"solarize": ops.where(self._chosen(images, solarize) > 0, SOLARIZE_AT,
                                                              colour.IDENTITY["solarize"])})
        return view

    def _crop(self, batch, image_size: tuple[int, int], size: tuple[int, int], scale: tuple[float, float]):
        """Matrices reading a random region of ``scale`` of the image's area into a ``size`` grid."""
        height, width = (float(side) for side in image_size)
        area = keras.random.uniform((batch,), scale[0], scale[1], seed=self.seed_generator)
        log_ratio = keras.random.uniform((batch,), math.log(ASPECT[0]), math.log(ASPECT[1]), seed=self.seed_generator)
        ratio = ops.exp(log_ratio)
        crop_width = ops.minimum(width * ops.sqrt(area * ratio), width)
        crop_height = ops.minimum(height * ops.sqrt(area / ratio), height)
        left = keras.random.uniform((batch,), seed=self.seed_generator) * (width - crop_width)
        top = keras.random.uniform((batch,), seed=self.seed_generator) * (height - crop_height)
        x_step, y_step = crop_width / size[1], crop_height / size[0]
        zero = ops.zeros_like(x_step)
        # Output pixel centre (x + 0.5) * step from the region's left edge, in input pixel coordinates.
        return warp.affine(x_step, zero, left + 0.5 * x_step - 0.5, zero, y_step, top + 0.5 * y_step - 0.5)

    def _uniform(self, images, low: float = 0.0, high: float = 1.0):
        return keras.random.uniform((ops.shape(images)[0],), low, high, seed=self.seed_generator)

    def _chosen(self, images, probability: float):
        """``(batch,)`` 1.0 for the images that take a step of ``probability``, else 0.0."""
        return ops.cast(self._uniform(images) < probability, "float32")
