"""The settings of a training run: the caller's options merged over a recipe's defaults, checked
and frozen.

They are what a resumed run must repeat and what the model file records (metadata ``training``,
see :meth:`RunSettings.record`). A checkpoint that tells its own architecture (see
:func:`~vitkit.models.sources.open_checkpoint`) gives the defaults of the image size and of how
images are prepared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from vitkit.errors import ConfigError
from vitkit.models.spec import image_size_pair
from vitkit.models.config import PRETRAINED_PRESETS, SMALL_DATA_OPTIONS
from vitkit.models.sources import Pretrained, weights_kind
from vitkit.training.recipes import choose_recipe, resolve_options

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
CNN_TEACHER = "cnn"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Every option that shapes a run's result, resolved (see :func:`vitkit.train` for each).

    The fields are in the order the model file lists them; ``backbone_options`` (the
    :class:`~vitkit.models.config.ViTConfig` overrides) follow them there, inline. When ``weights``
    is a checkpoint that tells its own architecture, ``backbone`` is the one given (None: the
    checkpoint's), and ``mean``, ``std`` and ``interpolation`` are recorded; other runs' model
    files never had those three. ``teacher`` (``cnn`` or a model file, see
    :mod:`~vitkit.training.teacher`) is recorded only when there is one, ``teacher_epochs`` only
    when the run trains the CNN teacher.
    """

    recipe: str
    backbone: str | None
    weights: str | None
    image_size: tuple[int, int]
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    weight_decay: float
    schedule: str
    warmup_epochs: int
    label_smoothing: float
    mixup: float
    cutmix: float
    class_weights: str | Mapping[str, float] | None
    freeze_backbone_epochs: int
    augment: bool | Mapping[str, Any]
    head_width: int
    resize_mode: str
    preprocess: str
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    interpolation: str
    patience: int
    reduce_lr_patience: int
    val_fraction: float
    seed: int
    precision: str
    classes: tuple[str, ...] | None
    backbone_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    teacher: str | None = None
    teacher_epochs: int | None = None

    def __post_init__(self):
        # Frozen all the way down: the mappings a caller passed become read-only views of copies.
        for field in ("class_weights", "augment", "backbone_options"):
            value = getattr(self, field)
            if isinstance(value, Mapping):
                object.__setattr__(self, field, MappingProxyType(_dicts(value)))

    def record(self) -> dict[str, Any]:
        """The settings as plain JSON values, as the model file and the resume state keep them."""
        left_out = {"backbone_options"} | ({"teacher"} if self.teacher is None else set())
        if self.teacher != CNN_TEACHER:
            left_out.add("teacher_epochs")
        if weights_kind(self.weights) != "checkpoint":
            left_out |= {"mean", "std", "interpolation"}
        recorded = {field.name: _json(getattr(self, field.name))
                    for field in dataclasses.fields(self) if field.name not in left_out}
        return {**recorded, **_json(self.backbone_options)}

    def model_options(self) -> dict[str, Any]:
        """The :func:`~vitkit.models.classifier.build_model` options besides classes, backbone, weights and size."""
        return dict(head_width=self.head_width, preprocess=self.preprocess, resize_mode=self.resize_mode,
                    augment=_dicts(self.augment), seed=self.seed, interpolation=self.interpolation,
                    **_dicts(self.backbone_options))


def resolve_settings(
    *,
    recipe: str | None = None,
    backbone: str | None = None,
    weights: str | Path | None = "auto",
    image_size: int | Sequence[int] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    warmup_epochs: int | None = None,
    label_smoothing: float | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
    class_weights: str | Mapping[str, float] | None = None,
    freeze_backbone_epochs: int = 0,
    augment: bool | Mapping[str, Any] | None = None,
    head_width: int = 21,
    preprocess: str | None = None,
    resize_mode: str = "stretch",
    patience: int | None = None,
    reduce_lr_patience: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
    precision: str = "auto",
    classes: Sequence[str] | None = None,
    pretrained: Pretrained | None = None,
    teacher: str | Path | None = None,
    teacher_epochs: int | None = None,
    **backbone_overrides: Any,
) -> RunSettings:
    """:func:`vitkit.train`'s options (same names and defaults) resolved into the run's settings.

    The recipe is chosen (:func:`~vitkit.training.recipes.choose_recipe`), its defaults fill the
    options left at ``None``, ``weights="auto"`` becomes the backbone's checkpoint (or none) and
    the choices are checked. ``pretrained`` is the checkpoint ``weights`` names, opened
    (:func:`~vitkit.models.sources.open_checkpoint`): its image size and architecture come before
    the recipe's, and its preparation (``preprocess`` unless given, ``mean``, ``std``,
    ``interpolation``) is the run's; without one, ``preprocess`` is ``tf`` unless given and the
    recipe's image size applies. A ``teacher`` turns on the backbone's distillation token;
    ``teacher_epochs`` (the CNN teacher's, default half the run's ``epochs``) needs ``teacher="cnn"``.

    Raises:
        ConfigError: an unknown recipe, optimizer or schedule, no epochs, a negative
            ``freeze_backbone_epochs``, a batch size below 1, or class weights of another form.

    Example:
        >>> settings = resolve_settings(weights="none", epochs=5)
        >>> settings.recipe, settings.epochs, settings.warmup_epochs, settings.backbone_options["tokenizer"]
        ('small-data', 5, 1, 'conv')
    """
    chosen = choose_recipe(recipe, weights, backbone)
    teacher = check_teacher(teacher)
    if teacher is not None:
        backbone_overrides = {**backbone_overrides, "distillation_token": True}
    if pretrained is not None:
        # The checkpoint's size and architecture, so the recipe's defaults do not replace them.
        image_size = image_size or pretrained.image_size
    options, backbone_options = resolve_options(chosen, {
        "backbone": backbone, "weights": weights, "image_size": image_size, "epochs": epochs,
        "batch_size": batch_size, "learning_rate": learning_rate, "optimizer": optimizer,
        "weight_decay": weight_decay, "schedule": schedule, "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing, "augment": augment, "mixup": mixup, "cutmix": cutmix,
        "patience": patience,
    }, backbone_overrides)
    if pretrained is not None and pretrained.full_architecture:
        # The file sets its tokenizer and attention: the recipe's defaults for them do not apply.
        backbone_options = {key: value for key, value in backbone_options.items()
                            if key not in SMALL_DATA_OPTIONS or backbone_overrides.get(key) is not None}
    preparation = pretrained.preparation(preprocess) if pretrained else {
        "preprocess": preprocess or "tf", "mean": None, "std": None, "interpolation": "bilinear"}
    settings = RunSettings(
        # A checkpoint's own architecture is built from it, not from the recipe's backbone.
        **{**options, "recipe": chosen.name, "image_size": image_size_pair(options["image_size"]),
           "backbone": backbone if pretrained else options["backbone"],
           "weights": _resolve_weights(options["weights"], options["backbone"])},
        class_weights=class_weights, freeze_backbone_epochs=freeze_backbone_epochs, head_width=head_width,
        resize_mode=resize_mode, **preparation, reduce_lr_patience=reduce_lr_patience,
        val_fraction=val_fraction, seed=seed, precision=precision,
        classes=tuple(classes) if classes else None, backbone_options=backbone_options, teacher=teacher,
        teacher_epochs=_teacher_epochs(teacher, teacher_epochs, options["epochs"]),
    )
    check_settings(settings)
    if settings.teacher is not None and settings.weights is not None and not (pretrained and pretrained.full_architecture):
        raise ConfigError(f"--teacher distils into a model trained from random weights or a backbone from vitkit "
                          f"pretrain; the pretrained weights ({settings.weights}) have no distillation token: add "
                          f"--weights none")
    return settings


def _teacher_epochs(teacher: str | None, given: int | None, epochs: int) -> int | None:
    """The CNN teacher's epochs: ``given``, else half the run's (the small CNN levels off sooner than a
    ViT from random weights, and its time counts in the run's); None without a CNN teacher."""
    if teacher != CNN_TEACHER:
        if given is not None:
            raise ConfigError("--teacher-epochs sets how long the CNN teacher trains: add --teacher cnn "
                              "(a teacher model file is used as it is)")
        return None
    if given is not None and given < 1:
        raise ConfigError(f"teacher epochs must be >= 1, got {given}")
    return given or max(1, epochs // 2)


def check_settings(settings: RunSettings) -> None:
    """Refuse settings no run can use, before any data is read.

    Raises:
        ConfigError: naming the option and the accepted values.
    """
    if settings.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {settings.optimizer!r}")
    if settings.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {settings.schedule!r}")
    if settings.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {settings.epochs}")
    if settings.freeze_backbone_epochs < 0:
        raise ConfigError(f"freeze_backbone_epochs must be >= 0, got {settings.freeze_backbone_epochs}")
    if settings.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {settings.batch_size}")
    if settings.class_weights is not None and not (
            settings.class_weights == "balanced" or isinstance(settings.class_weights, Mapping)):
        raise ConfigError(f"class_weights must be 'balanced' or a dict, got {settings.class_weights!r}")


def check_teacher(teacher: str | Path | None) -> str | None:
    """``teacher`` as the run records it: None, ``cnn`` or the path of an existing ``.keras`` file.

    Raises:
        ConfigError: a path that is not there or is not a ``.keras`` file.
    """
    if teacher is None or str(teacher) == CNN_TEACHER:
        return None if teacher is None else CNN_TEACHER
    path = Path(teacher)
    if path.suffix != ".keras":
        raise ConfigError(f"teacher {path} is not a .keras model file; give one, or --teacher cnn to train the small CNN")
    if not path.is_file():
        raise ConfigError(f"teacher model {path} not found; give a .keras model file, or --teacher cnn")
    return str(path)


def _resolve_weights(weights: str | Path | None, backbone: str) -> str | None:
    if weights == "auto":
        return "imagenet21k" if backbone in PRETRAINED_PRESETS else None
    return None if weights in (None, "none") else str(weights)


def _dicts(value: Any) -> Any:
    """``value`` with its mappings (at any depth) as new, ordinary dicts."""
    if isinstance(value, Mapping):
        return {key: _dicts(item) for key, item in value.items()}
    return value


def _json(value: Any) -> Any:
    """``value`` as JSON gives it back: mappings as dicts, tuples as lists (at any depth)."""
    if isinstance(value, Mapping):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json(item) for item in value]
    return value
