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

PREPROCESS_MODES = ("tf", "raw")


@keras.saving.register_keras_serializable(package="vitkit")
class ScaleImages(keras.layers.Layer):
    """Scale 0-255 pixels: ``tf`` maps to [-1, 1] (what ViT checkpoints expect); ``raw`` keeps 0-255.

    ``raw`` exists only to reproduce models whose original code fed unscaled pixels at
    prediction time.
    """

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ConfigError(f"preprocess must be one of {PREPROCESS_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        return images / 127.5 - 1.0 if self.mode == "tf" else images

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


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
    """

    flip: str | None = "horizontal"
    rotation: float = 0.05
    zoom: float = 0.1
    translation: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1

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
        return cls(None, 0.0, 0.0, 0.0, 0.0, 0.0)

    @property
    def enabled(self) -> bool:
        return bool(self.flip) or any(
            (self.rotation, self.zoom, self.translation, self.brightness, self.contrast)
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
    return steps
