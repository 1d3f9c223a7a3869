"""Training recipes: named sets of default training options, kept as data.

``plain`` is the fine-tuning recipe of the original notebooks (and :func:`vitkit.train`'s
defaults before recipes existed). ``small-data`` trains a ViT from scratch on a few hundred to a
few thousand images. Its techniques were each measured on their own before they were kept
(``bench/ablation.py``, scikit-learn's digits):

- a convolutional stem in place of the linear patch embedding (Xiao et al. 2021; shifted patch
  tokenization, Lee et al. 2021, did as well within one test image and is ``tokenizer="shifted"``),
- locality self-attention (Lee et al. 2021),
- RandAugment-style augmentation inside the model, with scale jitter and without flips (mirrored
  digits, letters or parts change meaning; add ``flip`` to ``augment`` where they do not); the
  largest gain on its own, neutral on digits once the convolutional stem is there, kept for the
  colour, position and rotation variation of photos,
- label smoothing, AdamW with linear warm-up and cosine decay, stochastic depth (DeiT),
- a peak learning rate of 2e-3: on the generator's hard and severe sets, three generated sets and
  three training seeds each, it gained 3.7 and 7.3 points over 1e-3; 3e-3 lost on the severe set,
- a small backbone at a small input size (smaller images are upsampled when loaded, e.g. 8 px
  digits to 32 px), with the patch size chosen for an 8x8 token grid,
- 80 epochs: on varied product photos (``bench/photos.py``, the generator's hard set) a ViT from
  scratch keeps gaining well past the 40 epochs at which a small CNN levels off, and at the same
  wall time more epochs gained more than a CNN teacher (``--teacher cnn``) or masked-image
  pre-training on the same photos (``vitkit pretrain``); both stay available.

Mixup and CutMix (:mod:`vitkit.data.mixing`) are available but off: at budgets of tens of epochs
they cost accuracy in every measurement.

An option the caller gives explicitly always wins over the recipe's default. The recipe's name
and the resolved options are stored in the model file (metadata ``training``).

Kept free of Keras so the command line can describe recipes without starting a backend.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

from vitkit.models.config import PRETRAINED_PRESETS, ViTConfig
from vitkit.errors import ConfigError

PRETRAIN_METHODS = ("simmim", "dino")
"""``vitkit pretrain --method``: masked image modelling, or DINO's self-distillation."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Default training options under a name.

    Args:
        name: what ``--recipe`` takes.
        summary: one line for ``--help``.
        options: defaults of :func:`vitkit.train` keyword arguments.
        backbone_options: defaults of :class:`~vitkit.models.config.ViTConfig` fields (overriding the
            preset's).
        max_warmup_share: the recipe's warm-up is cut to at most this share of the epochs, so
            a short run still reaches the peak learning rate (an explicit warm-up is kept).
    """

    name: str
    summary: str
    options: Mapping[str, Any]
    backbone_options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    max_warmup_share: float = 1.0


PLAIN = Recipe(
    name="plain",
    summary="the original fine-tuning recipe: Adam 1e-4, constant rate halved on plateaus, light "
            "augmentation, early stopping; meant for pretrained weights",
    options=MappingProxyType({
        "backbone": "vit_b16",
        "weights": "auto",
        "image_size": 224,
        "epochs": 10,
        "batch_size": 16,
        "learning_rate": 1e-4,
        "optimizer": "adam",
        "weight_decay": 0.05,
        "schedule": "constant",
        "warmup_epochs": 0,
        "label_smoothing": 0.0,
        "augment": True,
        "mixup": 0.0,
        "cutmix": 0.0,
        "patience": 5,
    }),
)

SMALL_DATA = Recipe(
    name="small-data",
    summary="training from scratch on a few hundred to a few thousand images: small ViT with a "
            "convolutional stem and locality attention at 32 px, RandAugment, label smoothing, "
            "AdamW with warm-up and cosine decay, stochastic depth",
    options=MappingProxyType({
        "backbone": "vit_micro",
        "weights": "none",
        "image_size": 32,
        "epochs": 80,
        "batch_size": 32,
        "learning_rate": 2e-3,
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 5,
        "label_smoothing": 0.1,
        "augment": MappingProxyType({
            "flip": None, "rotation": 0.0, "zoom": 0.1, "translation": 0.0,
            "brightness": 0.0, "contrast": 0.0, "randaugment_ops": 2, "randaugment_magnitude": 0.5,
        }),
        "mixup": 0.0,
        "cutmix": 0.0,
        "patience": 0,
    }),
    backbone_options=MappingProxyType({
        "tokenizer": "conv",
        "locality_attention": True,
        "drop_path": 0.1,
    }),
    max_warmup_share=0.2,
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (PLAIN, SMALL_DATA)}
BACKBONE_OPTIONS = tuple(field.name for field in dataclasses.fields(ViTConfig))


def choose_recipe(recipe: str | None, weights: str | None, backbone: str | None) -> Recipe:
    """The recipe named, else ``small-data`` when training starts from random weights, else ``plain``.

    Random weights means ``weights`` is ``None``/``"none"``, or ``"auto"`` with a ``backbone``
    that has no pretrained checkpoint (``vit_small``, ``vit_micro``...).
    """
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        return RECIPES[recipe]
    from_scratch = weights in (None, "none") or (
        weights == "auto" and backbone is not None and backbone not in PRETRAINED_PRESETS
    )
    return SMALL_DATA if from_scratch else PLAIN


def resolve_options(recipe: Recipe, given: Mapping[str, Any],
                    backbone_given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge explicit options over a recipe's defaults.

    Args:
        recipe: the recipe.
        given: :func:`vitkit.train` options; ``None`` (and ``"auto"`` for ``weights``) means
            "not given".
        backbone_given: backbone overrides; ``None`` means "not given".

    Returns:
        ``(options, backbone_overrides)``, complete.

    Example:
        >>> options, backbone = resolve_options(SMALL_DATA, {"epochs": 5}, {})
        >>> options["epochs"], options["optimizer"], options["warmup_epochs"], backbone["tokenizer"]
        (5, 'adamw', 1, 'conv')
    """
    unknown = sorted(set(given) - set(recipe.options))
    if unknown:
        raise ConfigError(f"recipe options {unknown} are not training options")
    explicit = {key: value for key, value in given.items()
                if value is not None and not (key == "weights" and value == "auto")}
    options = {key: _plain(value) for key, value in recipe.options.items()}
    options.update(explicit)
    if "warmup_epochs" not in explicit:
        options["warmup_epochs"] = min(options["warmup_epochs"], int(options["epochs"] * recipe.max_warmup_share))
    backbone = {key: _plain(value) for key, value in recipe.backbone_options.items()}
    backbone.update({key: value for key, value in backbone_given.items() if value is not None})
    return options, backbone


def describe(recipe: Recipe) -> str:
    """The recipe's settings, one ``name=value`` list, for help texts and reports."""
    settings = {**recipe.options, **recipe.backbone_options}
    return ", ".join(f"{key}={_text(value)}" for key, value in settings.items())


def _plain(value: Any) -> Any:
    """Recipe values are read-only mappings; callers get ordinary dicts."""
    return dict(value) if isinstance(value, Mapping) else value


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items() if v) + "}"
    return str(value)
