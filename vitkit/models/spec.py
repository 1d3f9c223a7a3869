"""A classifier's description as plain data: what :func:`vitkit.load_model` rebuilds a model from.

A model file keeps its :class:`ModelSpec` beside the weights; nothing here needs Keras.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from vitkit.data.images import INTERPOLATIONS
from vitkit.data.inputconfig import AugmentConfig, check_normalization
from vitkit.errors import ConfigError
from vitkit.models.config import ViTConfig

RESIZE_MODES = ("stretch", "pad", "crop")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier.

    Args:
        class_names: class names in output order.
        image_size: model input (height, width) in pixels.
        backbone: backbone dimensions.
        head_width: width of the head's hidden GELU layer (21 in the original recipe);
            0 for a linear head. A backbone with the distillation token has a second head of
            the same structure.
        head_norm: BatchNormalization before each Dense layer of the head (the recipe's);
            False for plain Dense layers, such as a checkpoint's pretrained classification top.
        preprocess: ``"tf"`` (scale to [-1, 1]), ``"normalize"`` (``(x / 255 - mean) / std``)
            or ``"raw"`` (feed 0-255).
        resize_mode: how images are brought to ``image_size`` before they reach the model:
            ``stretch``, ``pad`` (keep aspect, letterbox) or ``crop`` (keep aspect, centre crop).
        augment: training augmentation, ``AugmentConfig.off()`` for none.
        seed: seed of the random layers (augmentation, dropout).
        mean, std: per-channel mean and standard deviation of ``normalize`` (on the 0-1 scale).
        interpolation: how images are resampled to ``image_size``: ``bilinear`` or ``bicubic``.
    """

    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    backbone: ViTConfig
    head_width: int = 21
    head_norm: bool = True
    preprocess: str = "tf"
    resize_mode: str = "stretch"
    augment: AugmentConfig = AugmentConfig()
    seed: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        if len(self.class_names) < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class names must be unique, got {list(self.class_names)}")
        check_normalization(self.preprocess, self.mean, self.std)
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.head_width < 0:
            raise ConfigError(f"head width must be >= 0, got {self.head_width}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON data; options added later appear only when they are used."""
        later = {"mean": list(self.mean), "std": list(self.std)} if self.preprocess == "normalize" else {}
        if self.interpolation != "bilinear":
            later["interpolation"] = self.interpolation
        return {
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "backbone": self.backbone.to_dict(),
            "head_width": self.head_width,
            "head_norm": self.head_norm,
            "preprocess": self.preprocess,
            "resize_mode": self.resize_mode,
            "augment": self.augment.to_dict(),
            "seed": self.seed,
            **later,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelSpec":
        return cls(
            class_names=tuple(values["class_names"]),
            image_size=tuple(values["image_size"]),
            backbone=ViTConfig.from_dict(values["backbone"]),
            head_width=int(values.get("head_width", 21)),
            head_norm=bool(values.get("head_norm", True)),
            preprocess=values.get("preprocess", "tf"),
            resize_mode=values.get("resize_mode", "stretch"),
            augment=AugmentConfig.from_dict(values.get("augment") or {}),
            seed=values.get("seed"),
            mean=_triple(values.get("mean")),
            std=_triple(values.get("std")),
            interpolation=values.get("interpolation", "bilinear"),
        )


def _triple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def image_size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` or ``(224, 224)`` -> ``(224, 224)``, checked."""
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or any(int(side) != side or side < 1 for side in pair):
        raise ConfigError(f"image size must be a positive integer or (height, width), got {image_size!r}")
    return int(pair[0]), int(pair[1])
