"""The settings of a pre-training run (:func:`vitkit.pretrain`): the caller's options over the
defaults below, checked and frozen. A resumed run must repeat them; the backbone file records them
(metadata ``pretraining``).

Two methods (``method``): ``simmim``, masked image modelling (:mod:`vitkit.models.masked`, the
default), and ``dino``, self-distillation (:mod:`vitkit.models.dino`). Each has its own options;
those of the other method are refused, and recorded as ``None``.

Defaults, for a few hundred to a few thousand photos on a CPU or one GPU:

- the backbone of the ``small-data`` recipe (``vit_micro`` with a convolutional stem, locality
  attention and stochastic depth 0.1, at 32 px), so that ``vitkit train --weights FILE`` fine-tunes
  the backbone that recipe trains from scratch;
- 100 epochs of AdamW (learning rate 1e-3, weight decay 0.05) at batch 32, 10 epochs of linear
  warm-up (at most a fifth of the epochs unless given) then cosine decay: SimMIM's schedule, with
  the learning rate of the small-data recipe, which trains these backbones from scratch;
- 60% of the patch grid hidden per image in squares of the patch size (SimMIM's ratio; its 32 px
  squares would cover a whole 32 px image), L1 error on per-patch normalized pixels;
- light augmentation: horizontal flips, zoom 0.2, translation 0.1 (SimMIM: random resized crops
  and flips); nothing of colour, which the reconstruction target would have to follow;
- ``dino``: AdamW 5e-4 with weight decay 0.04 (DINO's values for ViTs; its learning rate is for
  larger batches), 1024 prototypes, 2 global and 4 local views (DINO's multi-crop is its
  augmentation, so ``augment`` is refused).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from vitkit.data.inputconfig import AugmentConfig
from vitkit.errors import ConfigError
from vitkit.models.spec import RESIZE_MODES, image_size_pair
from vitkit.models.config import ViTConfig, resolve_config
from vitkit.models.masked import LOSSES, check_masking
from vitkit.training.recipes import PRETRAIN_METHODS, SMALL_DATA

DEFAULTS: Mapping[str, Any] = {
    "epochs": 100, "batch_size": 32, "learning_rate": 1e-3, "weight_decay": 0.05, "warmup_epochs": 10,
}
METHOD_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "simmim": {"mask_ratio": 0.6, "loss": "l1", "normalize_target": True},
    "dino": {"learning_rate": 5e-4, "weight_decay": 0.04, "prototypes": 1024, "local_crops": 4},
}
# The options only one method takes (mask_patch_size and augment are resolved apart).
METHOD_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "simmim": ("mask_ratio", "mask_patch_size", "loss", "normalize_target", "augment"),
    "dino": ("prototypes", "local_crops"),
}
DEFAULT_AUGMENT = AugmentConfig(flip="horizontal", rotation=0.0, zoom=0.2, translation=0.1, brightness=0.0,
                                contrast=0.0, randaugment_ops=0)
MAX_WARMUP_SHARE = 0.2


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Every option that shapes a pre-training run's result, resolved (see :func:`vitkit.pretrain`).

    ``optimizer`` and ``schedule`` are fixed (AdamW, cosine), as
    :func:`~vitkit.training.fitting.make_optimizer` reads them.
    """

    backbone: str
    architecture: ViTConfig
    image_size: tuple[int, int]
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_epochs: int
    mask_ratio: float | None
    mask_patch_size: int | None
    loss: str | None
    normalize_target: bool | None
    augment: AugmentConfig | None
    resize_mode: str
    interpolation: str
    seed: int
    precision: str
    method: str = "simmim"
    prototypes: int | None = None
    local_crops: int | None = None
    preprocess: str = "tf"
    optimizer: str = dataclasses.field(default="adamw", init=False)
    schedule: str = dataclasses.field(default="cosine", init=False)

    def record(self) -> dict[str, Any]:
        """The settings as plain JSON values, as the backbone file and the resume state keep them."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {**values, "architecture": self.architecture.to_dict(), "image_size": list(self.image_size),
                "augment": self.augment.to_dict() if self.augment else None}


def resolve_pretrain_settings(
    *,
    method: str = "simmim",
    backbone: str | None = None,
    image_size: int | Sequence[int] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    warmup_epochs: int | None = None,
    mask_ratio: float | None = None,
    mask_patch_size: int | None = None,
    loss: str | None = None,
    normalize_target: bool | None = None,
    augment: bool | Mapping[str, Any] | None = None,
    prototypes: int | None = None,
    local_crops: int | None = None,
    resize_mode: str = "stretch",
    interpolation: str = "bilinear",
    seed: int = 0,
    precision: str = "auto",
    **backbone_overrides: Any,
) -> PretrainSettings:
    """:func:`vitkit.pretrain`'s options resolved: ``None`` takes the default (see the module).

    Raises:
        ConfigError: an unknown method, an option of the other method, an option out of range,
            an unknown backbone option or a mask that does not fit the patch grid.

    Example:
        >>> settings = resolve_pretrain_settings(image_size=64, epochs=20)
        >>> settings.architecture.tokenizer, settings.architecture.patch_size, settings.warmup_epochs
        ('conv', 8, 4)
    """
    if method not in PRETRAIN_METHODS:
        raise ConfigError(f"method must be one of {', '.join(PRETRAIN_METHODS)}, got {method!r}")
    method_given = {"mask_ratio": mask_ratio, "mask_patch_size": mask_patch_size, "loss": loss,
                    "normalize_target": normalize_target, "augment": augment, "prototypes": prototypes,
                    "local_crops": local_crops}
    other = next(name for name in PRETRAIN_METHODS if name != method)
    foreign = [key for key in METHOD_OPTIONS[other] if method_given[key] is not None]
    if foreign:
        raise ConfigError(f"{', '.join(foreign)} belong(s) to method {other}, not {method}")
    given = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
             "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
             **{key: value for key, value in method_given.items() if key not in ("mask_patch_size", "augment")}}
    unset = {key: None for options in METHOD_DEFAULTS.values() for key in options}
    options = {**unset, **DEFAULTS, **METHOD_DEFAULTS[method],
               **{key: value for key, value in given.items() if value is not None}}
    if warmup_epochs is None:
        options["warmup_epochs"] = min(options["warmup_epochs"], int(options["epochs"] * MAX_WARMUP_SHARE))
    unknown = sorted(set(backbone_overrides) - {field.name for field in dataclasses.fields(ViTConfig)})
    if unknown:
        raise ConfigError(f"unknown backbone option(s) {unknown}")
    size = image_size_pair(image_size if image_size is not None else SMALL_DATA.options["image_size"])
    name = backbone or SMALL_DATA.options["backbone"]
    overrides = {**SMALL_DATA.backbone_options, **{k: v for k, v in backbone_overrides.items() if v is not None}}
    architecture = resolve_config(name, size, **overrides)
    simmim = method == "simmim"
    settings = PretrainSettings(
        backbone=name, architecture=architecture, image_size=size, method=method,
        mask_patch_size=(mask_patch_size or architecture.patch_size) if simmim else None,
        augment=_augment(augment) if simmim else None,
        resize_mode=resize_mode, interpolation=interpolation, seed=seed, precision=precision, **options,
    )
    _check(settings)
    return settings


def _augment(augment: bool | Mapping[str, Any] | None) -> AugmentConfig:
    if augment is None or augment is True:
        return DEFAULT_AUGMENT
    if augment is False:
        return AugmentConfig.off()
    return AugmentConfig.from_dict({**DEFAULT_AUGMENT.to_dict(), **augment})


def _check(settings: PretrainSettings) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(settings, name)}")
    if not settings.learning_rate > 0:
        raise ConfigError(f"learning rate must be positive, got {settings.learning_rate}")
    if settings.weight_decay < 0 or settings.warmup_epochs < 0:
        raise ConfigError("weight decay and warm-up epochs must be >= 0")
    if settings.resize_mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {RESIZE_MODES}, got {settings.resize_mode!r}")
    if settings.method == "dino":
        if settings.prototypes < 2 or settings.local_crops < 0:
            raise ConfigError(f"DINO needs at least 2 prototypes and 0 or more local crops, got "
                              f"{settings.prototypes} and {settings.local_crops}")
        return
    if settings.loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {settings.loss!r}")
    check_masking(settings.mask_ratio, settings.mask_patch_size, settings.architecture.patch_size, settings.image_size)
