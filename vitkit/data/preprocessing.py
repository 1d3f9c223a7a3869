"""In-model preprocessing: uint8 pixels -> training augmentation -> scaled floats.

Both run inside the model, on the accelerator, so training and prediction see exactly the
same scaling and nothing outside the model needs a framework.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

from vitkit.errors import ConfigError

PREPROCESS_MODES = ("tf", "raw", "normalize")


def check_normalization(mode: str, mean, std) -> None:
    """A preprocessing mode with the mean and std it needs (``normalize``) or none (the others)."""
    if mode not in PREPROCESS_MODES:
        raise ConfigError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}")
    if mode != "normalize":
        if mean is not None or std is not None:
            raise ConfigError(f"mean and std apply only to preprocess 'normalize', not {mode!r}")
        return
    for name, values in (("mean", mean), ("std", std)):
        if values is None or len(values) != 3:
            raise ConfigError(f"preprocess 'normalize' needs a {name} of 3 values (red, green, blue), got {values!r}")
    if min(std) <= 0:
        raise ConfigError(f"std must be positive, got {list(std)}")


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


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random training augmentation; every factor 0 (or ``flip`` None) turns that part off.

    Args:
        flip: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` or ``None``.
        rotation: maximum rotation as a fraction of a full turn (0.05 = 18 degrees).
        zoom: maximum zoom in or out as a fraction of the image size.
        translation: maximum shift as a fraction of the image size.
        brightness: maximum brightness change as a fraction of the value range.
        contrast: maximum contrast change factor.
        randaugment_ops: RandAugment-style operations applied to each image after the steps
            above, each drawn per image from :data:`RANDAUGMENT_OPS` (0 turns it off).
        randaugment_magnitude: strength of those operations, 0 to 1 (each op's range at
            magnitude 1 is in :data:`RANDAUGMENT_OPS`).
    """

    flip: str | None = "horizontal"
    rotation: float = 0.05
    zoom: float = 0.1
    translation: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    randaugment_ops: int = 0
    randaugment_magnitude: float = 0.5

    def __post_init__(self):
        if self.randaugment_ops < 0:
            raise ConfigError(f"randaugment_ops must be >= 0, got {self.randaugment_ops}")
        if not 0.0 <= self.randaugment_magnitude <= 1.0:
            raise ConfigError(f"randaugment_magnitude must be in [0, 1], got {self.randaugment_magnitude}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown augmentation option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(None, 0.0, 0.0, 0.0, 0.0, 0.0, randaugment_ops=0)

    @property
    def enabled(self) -> bool:
        return bool(self.flip) or any(
            (self.rotation, self.zoom, self.translation, self.brightness, self.contrast,
             self.randaugment_ops)
        )


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
        self.steps = _augmentation_steps(self.options, seed)

    def build(self, input_shape):
        for step in self.steps:
            step.build(input_shape)

    def call(self, images, training=None):
        if not training:
            return images
        for step in self.steps:
            images = step(images, training=True)
        return images

    def get_config(self):
        return {**super().get_config(), "options": self.options.to_dict(), "seed": self.seed}


def _augmentation_steps(config: AugmentConfig, seed: int | None) -> list[keras.layers.Layer]:
    def step_seed(offset: int) -> int | None:
        return None if seed is None else seed + offset

    steps: list[keras.layers.Layer] = []
    if config.flip:
        steps.append(keras.layers.RandomFlip(config.flip, seed=step_seed(0)))
    if config.rotation:
        steps.append(keras.layers.RandomRotation(config.rotation, seed=step_seed(1)))
    if config.zoom:
        steps.append(keras.layers.RandomZoom(config.zoom, config.zoom, seed=step_seed(2)))
    if config.translation:
        steps.append(
            keras.layers.RandomTranslation(config.translation, config.translation, seed=step_seed(3))
        )
    if config.brightness:
        steps.append(
            keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=step_seed(4))
        )
    if config.contrast:
        steps.append(
            keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=step_seed(5))
        )
    if config.randaugment_ops:
        steps.append(RandAugmentOps(config.randaugment_ops, config.randaugment_magnitude, seed=step_seed(6)))
    return steps


# RandAugment-style operations (Cubuk et al. 2020) and their strength at magnitude 1; each is a
# Keras layer that draws its own amount per image, so they run on every backend.
RANDAUGMENT_OPS: dict[str, str] = {
    "identity": "no change",
    "rotate": "rotation up to +-30 degrees",
    "shear": "shear up to 30% along x and y",
    "translate": "shift up to 30% of the size along x and y",
    "brightness": "brightness change up to +-50% of the value range",
    "contrast": "contrast change up to +-50%",
    "color": "desaturation up to 90% grey",
    "sharpness": "blur or sharpen up to 90%",
    "solarize": "invert the pixels above a threshold from 100% down to 50% of the range",
    "autocontrast": "stretch the values to the full range (no magnitude)",
}


def _randaugment_layer(name: str, magnitude: float, seed: int | None) -> keras.layers.Layer:
    m = magnitude
    value_range = (0, 255)
    if name == "identity":
        return keras.layers.Identity()
    if name == "rotate":
        return keras.layers.RandomRotation(30.0 / 360.0 * m, fill_mode="constant", seed=seed)
    if name == "shear":
        return keras.layers.RandomShear(0.3 * m, 0.3 * m, fill_mode="constant", seed=seed)
    if name == "translate":
        return keras.layers.RandomTranslation(0.3 * m, 0.3 * m, fill_mode="constant", seed=seed)
    if name == "brightness":
        return keras.layers.RandomBrightness(0.5 * m, value_range=value_range, seed=seed)
    if name == "contrast":
        return keras.layers.RandomContrast(0.5 * m, value_range=value_range, seed=seed)
    if name == "color":
        return keras.layers.RandomColorDegeneration(0.9 * m, value_range=value_range, seed=seed)
    if name == "sharpness":
        return keras.layers.RandomSharpness((0.5 - 0.45 * m, 0.5 + 0.45 * m), value_range=value_range, seed=seed)
    if name == "solarize":
        return keras.layers.Solarization(threshold_factor=(1.0 - 0.5 * m, 1.0), value_range=value_range, seed=seed)
    if name == "autocontrast":
        return keras.layers.AutoContrast(value_range=value_range)
    raise ConfigError(f"unknown RandAugment operation {name!r}; known: {sorted(RANDAUGMENT_OPS)}")


@keras.saving.register_keras_serializable(package="vitkit")
class RandAugmentOps(keras.layers.Layer):
    """RandAugment-style augmentation: ``num_ops`` rounds, each applying one operation per image.

    Each round draws, for every image of the batch independently, one operation of
    :data:`RANDAUGMENT_OPS` (identity included); the amount of each operation is drawn per
    image up to ``magnitude``. Every operation runs on the whole batch and each image keeps the
    result of its own draw, which on small images costs less than per-image branching and
    needs no backend-specific control flow. Takes and returns 0-255 floats; identity outside
    training.

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
        self.ops_layers = [
            _randaugment_layer(name, magnitude, None if seed is None else seed + 1 + i)
            for i, name in enumerate(RANDAUGMENT_OPS)
        ]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        for layer in self.ops_layers:
            layer.build(input_shape)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        count = len(self.ops_layers)
        for _ in range(self.num_ops):
            choice = keras.random.randint((batch,), 0, count, seed=self.seed_generator)
            chosen = ops.reshape(ops.one_hot(choice, count, dtype=images.dtype), (-1, 1, 1, 1, count))
            results = ops.stack([layer(images, training=True) for layer in self.ops_layers], axis=-1)
            images = ops.clip(ops.sum(results * chosen, axis=-1), 0.0, 255.0)
        return images

    def get_config(self):
        return {**super().get_config(), "num_ops": self.num_ops, "magnitude": self.magnitude, "seed": self.seed}
