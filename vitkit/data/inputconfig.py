"""What the model does to its input, as plain data: the scaling modes and the augmentation options.

The layers that carry them out are in :mod:`vitkit.data.preprocessing`; nothing here needs Keras.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vitkit.errors import ConfigError, dataclass_from_dict


PREPROCESS_MODES = ("tf", "raw", "normalize")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


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


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random training augmentation; every factor 0 (or ``flip`` None) turns that part off.

    Every amount is drawn per image, uniformly in the range shown (``U(a, b)``); these are the
    distributions of the Keras layers vitkit used before (``RandomFlip``, ``RandomRotation``,
    ``RandomZoom``, ``RandomTranslation``, ``RandomBrightness``, ``RandomContrast``):

    ===============  ==============================================================  =========
    option           per image                                                       outside
    ===============  ==============================================================  =========
    flip             mirrored with probability 1/2 (both axes at once for            -
                     ``horizontal_and_vertical``)
    rotation r       turned ``U(-360 r, 360 r)`` degrees about the centre             reflected
    zoom z           width and height each read ``U(1 - z, 1 + z)`` times the size   reflected
                     about the centre (above 1 zooms out)
    translation t    moved ``U(-t, t)`` of the width and ``U(-t, t)`` of the height   reflected
    brightness b     ``U(-b, b) * 255`` added                                         clipped
    contrast c       each channel's distance from its mean times ``U(1, 1 + c)``      clipped
                     (Keras' ``RandomContrast`` draws only above 1 for one factor)
    ===============  ==============================================================  =========

    Then ``randaugment_ops`` rounds of RandAugment (:class:`~vitkit.data.preprocessing.RandAugmentOps` has their table).
    The geometric parts of all of these (flip, rotation, zoom, translation and RandAugment's
    rotate, shear, translate) compose into one matrix per image and each image is resampled
    once, bilinearly; the colour operations follow: brightness, contrast, then each RandAugment
    round's colour operation.

    Args:
        flip: ``"horizontal"``, ``"vertical"``, ``"horizontal_and_vertical"`` or ``None``.
        rotation: maximum rotation as a fraction of a full turn (0.05 = 18 degrees).
        zoom: maximum zoom in or out as a fraction of the image size.
        translation: maximum shift as a fraction of the image size.
        brightness: maximum brightness change as a fraction of the value range.
        contrast: maximum contrast increase, as a factor above 1.
        randaugment_ops: RandAugment rounds applied after the steps above; each round draws,
            per image, one operation of :data:`~vitkit.data.preprocessing.RANDAUGMENT_OPS` (0 turns it off).
        randaugment_magnitude: strength of those operations, 0 to 1 (each op's range at
            magnitude ``m`` is in :data:`~vitkit.data.preprocessing.RANDAUGMENT_OPS`).
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
        if self.flip is not None and self.flip not in FLIP_MODES:
            raise ConfigError(f"augmentation flip must be one of {FLIP_MODES} or None, got {self.flip!r}")
        for name in ("rotation", "zoom", "translation", "brightness", "contrast"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        if self.randaugment_ops < 0:
            raise ConfigError(f"randaugment_ops must be >= 0, got {self.randaugment_ops}")
        if not 0.0 <= self.randaugment_magnitude <= 1.0:
            raise ConfigError(f"randaugment_magnitude must be in [0, 1], got {self.randaugment_magnitude}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AugmentConfig":
        return dataclass_from_dict(cls, values, "augmentation")

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(None, 0.0, 0.0, 0.0, 0.0, 0.0, randaugment_ops=0)

    @property
    def enabled(self) -> bool:
        return bool(self.flip) or any(
            (self.rotation, self.zoom, self.translation, self.brightness, self.contrast,
             self.randaugment_ops)
        )
