"""In-model preprocessing: uint8 pixels -> training augmentation -> scaled floats.

Both run inside the model, on the accelerator, so training and prediction see exactly the
same scaling and nothing outside the model needs a framework. Augmentation draws its amounts
per image, resamples each image once (:mod:`vitkit.data.warp`) and applies the colour
operations as element-wise work (:mod:`vitkit.data.colour`), all in ``keras.ops``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from vitkit.data import colour, warp
from vitkit.data.inputconfig import AugmentConfig, check_normalization


@keras.saving.register_keras_serializable(package="vitkit")
class ScaleImages(keras.layers.Layer):
    """Scale 0-255 pixels: ``tf`` maps to [-1, 1] (what the original ViT checkpoints expect);
    ``normalize`` maps to ``(pixels / 255 - mean) / std`` per channel (what timm checkpoints
    record, e.g. ImageNet's mean and std); ``raw`` keeps 0-255.

    ``raw`` exists only to reproduce models whose original code fed unscaled pixels at
    prediction time.
    """

    def __init__(self, mode: str = "tf", mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        check_normalization(mode, mean, std)
        self.mode = mode
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "normalize":
            scale = ops.convert_to_tensor([1.0 / (255.0 * s) for s in self.std], self.compute_dtype)
            shift = ops.convert_to_tensor([m / s for m, s in zip(self.mean, self.std)], self.compute_dtype)
            return images * scale - shift
        return images

    def get_config(self):
        extra = {"mean": self.mean, "std": self.std} if self.mode == "normalize" else {}
        return {**super().get_config(), "mode": self.mode, **extra}


@keras.saving.register_keras_serializable(package="vitkit")
class Augment(keras.layers.Layer):
    """Applies :class:`AugmentConfig` to 0-255 float images when ``training``; identity otherwise."""

    def __init__(
        self,
        options: AugmentConfig | dict[str, Any] | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(options, AugmentConfig):
            options = AugmentConfig.from_dict(options or {})
        self.options = options
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or not self.options.enabled:
            return images
        draws = BatchDraws(images, self.seed_generator)
        draws.draw_options(self.options)
        for _ in range(self.options.randaugment_ops):
            draws.draw_randaugment_round(self.options.randaugment_magnitude)
        return draws.apply(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "options": self.options.to_dict(), "seed": self.seed}


# RandAugment operations (Cubuk et al. 2020) and what each does at magnitude m (the ranges of
# the Keras layers vitkit used for them before).
RANDAUGMENT_OPS: dict[str, str] = {
    "identity": "no change",
    "rotate": "turned U(-30 m, 30 m) degrees about the centre, black outside",
    "shear": "read at (x + U(-0.3 m, 0.3 m) y, y + U(-0.3 m, 0.3 m) x), black outside",
    "translate": "moved U(-0.3 m, 0.3 m) of the width and of the height, black outside",
    "brightness": "U(-0.5 m, 0.5 m) * 255 added",
    "contrast": "each channel's distance from its mean times U(1, 1 + 0.5 m)",
    "color": "moved U(-0.9 m, 0.9 m) of the way to grey (negative: more saturated)",
    "sharpness": "moved U(-0.9 m, 0.9 m) of the way to a 3x3 blur (negative: sharpened)",
    "solarize": "values at or above U(1 - 0.5 m, 255) inverted to 255 - value",
    "autocontrast": "each channel stretched to 0-255 (no magnitude)",
}
GEOMETRIC_OPS = ("rotate", "shear", "translate")


@keras.saving.register_keras_serializable(package="vitkit")
class RandAugmentOps(keras.layers.Layer):
    """RandAugment: ``num_ops`` rounds, each applying to every image one operation drawn for it.

    Each round draws, for every image of the batch independently and with equal chances, one
    operation of :data:`RANDAUGMENT_OPS` (identity included) and its amount up to
    ``magnitude``. Only the drawn operations act on an image: the rounds' geometric operations
    compose into one matrix per image and one resampling (:func:`vitkit.data.warp.warp`); each
    colour operation gets the drawn amount for the images that drew it and its identity amount
    for the others. Geometry comes first, then the rounds' colour operations in round order.
    Takes and returns 0-255 floats; identity outside training. This is RandAugment alone;
    :class:`Augment` runs the same rounds after its own options, in the same resampling.

    ============  ==========================================================================
    operation     at magnitude ``m``
    ============  ==========================================================================
    identity      no change
    rotate        turned ``U(-30 m, 30 m)`` degrees about the centre; black outside
    shear         read at ``(x + U(-0.3 m, 0.3 m) y, y + U(-0.3 m, 0.3 m) x)``, about the
                  top-left corner as ``keras.layers.RandomShear``; black outside
    translate     moved ``U(-0.3 m, 0.3 m)`` of the width and of the height; black outside
    brightness    ``U(-0.5 m, 0.5 m) * 255`` added
    contrast      each channel's distance from its mean times ``U(1, 1 + 0.5 m)``
    color         moved ``U(-0.9 m, 0.9 m)`` of the way to grey (negative: more saturated)
    sharpness     moved ``U(-0.9 m, 0.9 m)`` of the way to a 3x3 blur (negative: sharpened)
    solarize      values at or above ``U(1 - 0.5 m, 255)`` inverted to ``255 - value``
                  (Keras' ``Solarization`` scales only the upper end of its range to 0-255)
    autocontrast  each channel stretched to 0-255
    ============  ==========================================================================

    Example:
        >>> layer = RandAugmentOps(num_ops=2, magnitude=0.5, seed=0)
        >>> layer(keras.ops.zeros((4, 32, 32, 3)), training=True).shape
        (4, 32, 32, 3)
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or not self.num_ops:
            return images
        draws = BatchDraws(images, self.seed_generator)
        for _ in range(self.num_ops):
            draws.draw_randaugment_round(self.magnitude)
        return draws.apply(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_ops": self.num_ops, "magnitude": self.magnitude, "seed": self.seed}


class BatchDraws:
    """What one batch draws: the transforms of its single resampling, then its colour steps.

    ``reflected`` holds the matrices of :class:`AugmentConfig`'s transforms, ``blanked`` one
    ``(matrix, active)`` per RandAugment round, ``colour_steps`` the per-image amounts of each
    colour step (:func:`vitkit.data.colour.adjust`), ``choices`` the ``(batch,)`` index into
    :data:`RANDAUGMENT_OPS` each image drew in each round. :meth:`apply` applies them all.
    """

    def __init__(self, images, seed_generator):
        shape = ops.shape(images)
        self.batch, self.height, self.width = shape[0], shape[1], shape[2]
        self.seed_generator = seed_generator
        self.reflected: list = []
        self.blanked: list = []
        self.colour_steps: list[dict] = []
        self.choices: list = []

    def uniform(self, low: float, high: float):
        return keras.random.uniform((self.batch,), minval=low, maxval=high, seed=self.seed_generator)

    def draw_options(self, config: AugmentConfig) -> None:
        height, width = self.height, self.width
        if config.flip:
            flipped = ops.cast(self.uniform(0.0, 1.0) < 0.5, "float32")
            kept = ops.zeros_like(flipped)
            self.reflected.append(warp.flip(flipped if config.flip != "vertical" else kept,
                                            flipped if config.flip != "horizontal" else kept, height, width))
        if config.rotation:
            turn = 360.0 * config.rotation
            self.reflected.append(warp.rotation(self.uniform(-turn, turn), height, width))
        if config.zoom:
            low, high = 1.0 - config.zoom, 1.0 + config.zoom
            self.reflected.append(warp.zoom(self.uniform(low, high), self.uniform(low, high), height, width))
        if config.translation:
            t = config.translation
            self.reflected.append(warp.translation(self.uniform(-t, t) * ops.cast(width, "float32"),
                                                   self.uniform(-t, t) * ops.cast(height, "float32")))
        if config.brightness:
            self.colour_steps.append({"brightness": self.uniform(-config.brightness, config.brightness) * 255.0})
        if config.contrast:
            self.colour_steps.append({"contrast": self.uniform(1.0, 1.0 + config.contrast)})

    def draw_randaugment_round(self, m: float) -> None:
        choice = keras.random.randint((self.batch,), 0, len(RANDAUGMENT_OPS), seed=self.seed_generator)
        self.choices.append(choice)
        index = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}

        def drawn(name: str):
            return ops.equal(choice, index[name])

        def amount(name: str, low: float, high: float, identity: float):
            return ops.where(drawn(name), self.uniform(low, high), identity)

        width, height = ops.cast(self.width, "float32"), ops.cast(self.height, "float32")
        matrix = warp.compose(
            warp.rotation(amount("rotate", -30.0 * m, 30.0 * m, 0.0), self.height, self.width),
            warp.shear(amount("shear", -0.3 * m, 0.3 * m, 0.0), amount("shear", -0.3 * m, 0.3 * m, 0.0)),
            warp.translation(amount("translate", -0.3 * m, 0.3 * m, 0.0) * width,
                             amount("translate", -0.3 * m, 0.3 * m, 0.0) * height),
        )
        active = ops.any(ops.stack([drawn(name) for name in GEOMETRIC_OPS]), axis=0)
        self.blanked.append((matrix, active))
        identity = colour.IDENTITY
        self.colour_steps.append({
            "brightness": amount("brightness", -127.5 * m, 127.5 * m, identity["brightness"]),
            "contrast": amount("contrast", 1.0, 1.0 + 0.5 * m, identity["contrast"]),
            "colour": amount("color", -0.9 * m, 0.9 * m, identity["colour"]),
            "sharpness": amount("sharpness", -0.9 * m, 0.9 * m, identity["sharpness"]),
            "solarize": amount("solarize", 1.0 - 0.5 * m, 255.0, identity["solarize"]),
            "autocontrast": ops.cast(drawn("autocontrast"), "float32"),
        })

    def apply(self, images):
        if self.reflected or self.blanked:
            reflected = warp.compose(*self.reflected) if self.reflected else None
            images = colour.computed_once(warp.warp(images, reflected, self.blanked))
        for amounts in self.colour_steps:
            images = colour.adjust(images, amounts)
        return images
