"""timm's Vision Transformer architectures: the ones vitkit builds, and a checkpoint's
``config.json`` (or its tensor shapes) turned into a vitkit backbone configuration.

A checkpoint timm pushes to the Hugging Face Hub has a ``config.json`` with ``architecture`` (a
timm model name such as ``vit_small_patch14_reg4_dinov2``), ``model_args`` and
``pretrained_cfg``. As in ``timm.create_model``, the architecture gives the defaults and
``model_args`` override them; the input size is ``model_args["img_size"]`` when given (the
checkpoint was made at that size), else the ``pretrained_cfg``'s ``input_size``. The mean, std and
interpolation the weights were trained with come from ``pretrained_cfg``.

Kept free of Keras, so the command line lists the architectures without starting a backend.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from vitkit.errors import ConfigError, WeightsError
from vitkit.models.config import ViTConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

# Width, depth and heads of timm's sizes.
_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "medium": (512, 12, 8), "base": (768, 12, 12),
          "large": (1024, 24, 16), "huge": (1280, 32, 16)}
# Family -> (model arguments beyond the size, default input side, mean, std).
_FAMILIES = {
    "vit": ({}, None, INCEPTION_MEAN, INCEPTION_STD),
    "deit3": ({"no_embed_class": True, "init_values": 1e-6}, None, IMAGENET_MEAN, IMAGENET_STD),
    "dinov2": ({"init_values": 1e-5}, 518, IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_reg4": ({"init_values": 1e-5, "reg_tokens": 4, "no_embed_class": True}, 518, IMAGENET_MEAN, IMAGENET_STD),
}
_NAMES = {
    "vit": ("vit_tiny_patch16_224", "vit_tiny_patch16_384", "vit_small_patch32_224", "vit_small_patch32_384",
            "vit_small_patch16_224", "vit_small_patch16_384", "vit_small_patch8_224", "vit_base_patch32_224",
            "vit_base_patch32_384", "vit_base_patch16_224", "vit_base_patch16_384", "vit_base_patch8_224",
            "vit_large_patch32_224", "vit_large_patch32_384", "vit_large_patch16_224", "vit_large_patch16_384",
            "vit_large_patch14_224"),
    "deit3": ("deit3_small_patch16_224", "deit3_small_patch16_384", "deit3_medium_patch16_224",
              "deit3_base_patch16_224", "deit3_base_patch16_384", "deit3_large_patch16_224",
              "deit3_large_patch16_384", "deit3_huge_patch14_224"),
    "dinov2": ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2"),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", "vit_base_patch14_reg4_dinov2", "vit_large_patch14_reg4_dinov2"),
}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A timm architecture vitkit builds: its model arguments and its default data configuration."""

    name: str
    family: str
    model_args: Mapping[str, Any]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


def _architecture(name: str, family: str) -> Architecture:
    parts = name.split("_")
    width, depth, heads = _SIZES[parts[1]]
    patch = int(parts[2].removeprefix("patch"))
    extra, side, mean, std = _FAMILIES[family]
    side = side or int(parts[3])
    args = {"patch_size": patch, "embed_dim": width, "depth": depth, "num_heads": heads, **extra}
    return Architecture(name, family, args, (side, side), mean, std)


ARCHITECTURES: dict[str, Architecture] = {
    name: _architecture(name, family) for family, names in _NAMES.items() for name in names
}

# timm model arguments read into the configuration, and those without effect on the weights
# or on inference at a fixed size; any other argument is refused.
_READ = {"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "init_values", "reg_tokens",
         "no_embed_class", "global_pool", "fc_norm", "class_token", "qkv_bias", "proj_bias", "qk_norm",
         "pre_norm", "final_norm", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "in_chans"}
_NO_EFFECT = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "weight_init", "fix_init", "dynamic_img_size",
              "dynamic_img_pad", "num_classes"}
# Arguments that must keep these values: vitkit's backbone has no other form.
_FIXED = {"class_token": True, "qkv_bias": True, "proj_bias": True, "qk_norm": False, "pre_norm": False,
          "final_norm": True, "in_chans": 3}


@dataclasses.dataclass(frozen=True)
class TimmModel:
    """What a timm checkpoint describes: the backbone, the size and the input preparation.

    Attributes:
        architecture: the timm architecture name, or None when read from tensor shapes alone.
        config: the vitkit backbone configuration.
        image_size: (height, width) the checkpoint's position embedding was made for.
        num_classes: width of the checkpoint's classifier (0 for none).
        mean, std: per-channel normalisation of pixels scaled to 0-1.
        interpolation: how images were resized (``bicubic`` or ``bilinear``).
    """

    architecture: str | None
    config: ViTConfig
    image_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def architecture_named(name: str) -> Architecture:
    """A supported timm architecture by name; a pretrained tag (``.lvd142m``) is ignored."""
    base = name.split(".")[0]
    if base not in ARCHITECTURES:
        raise ConfigError(
            f"timm architecture {name!r} is not one vitkit builds; supported: vit_{{tiny,small,base,large}}_"
            f"patch{{8,14,16,32}}_*, deit3_*, vit_*_patch14_dinov2, vit_*_patch14_reg4_dinov2 "
            f"(`vitkit weights list` shows them all)"
        )
    return ARCHITECTURES[base]


def from_hub_config(config: Mapping[str, Any], source: str) -> TimmModel:
    """The model a timm ``config.json`` describes (``architecture``, ``model_args``, ``pretrained_cfg``)."""
    if "architecture" not in config:
        raise WeightsError(f"{source} has no 'architecture'; it is not a timm config.json")
    architecture = architecture_named(str(config["architecture"]))
    pretrained = dict(config.get("pretrained_cfg") or {})
    args = {**architecture.model_args, **dict(config.get("model_args") or {})}
    size = args.get("img_size") or (pretrained.get("input_size") or [None, *architecture.input_size])[-2:]
    num_classes = config.get("num_classes", pretrained.get("num_classes", 0))
    return TimmModel(
        architecture.name, backbone_config(args, source), _pair(size), int(num_classes or 0),
        _triple(pretrained.get("mean", architecture.mean)), _triple(pretrained.get("std", architecture.std)),
        _interpolation(pretrained.get("interpolation", architecture.interpolation), source),
    )


def from_architecture(name: str, source: str) -> TimmModel:
    """The model of a timm architecture name with its defaults (no ``config.json``)."""
    return from_hub_config({"architecture": name}, source)


def backbone_config(args: Mapping[str, Any], source: str) -> ViTConfig:
    """A vitkit backbone configuration from timm's ``VisionTransformer`` arguments."""
    unknown = sorted(set(args) - _READ - _NO_EFFECT)
    if unknown:
        raise WeightsError(f"{source}: timm model argument(s) {unknown} describe a model vitkit does not build")
    for key, value in _FIXED.items():
        if key in args and args[key] != value:
            raise WeightsError(f"{source}: {key}={args[key]!r} is not supported (vitkit's ViT has {key}={value!r})")
    pool = args.get("global_pool", "token")
    if pool not in ("token", "avg"):
        raise WeightsError(f"{source}: global_pool={pool!r} is not supported; vitkit pools with 'token' or 'avg'")
    fc_norm = args.get("fc_norm")
    width = int(args["embed_dim"])
    return ViTConfig(
        patch_size=int(args["patch_size"]), num_layers=int(args["depth"]), hidden_size=width,
        num_heads=int(args["num_heads"]), mlp_dim=int(width * float(args.get("mlp_ratio", 4.0))),
        dropout=float(args.get("proj_drop_rate", 0.0)), attention_dropout=float(args.get("attn_drop_rate", 0.0)),
        drop_path=float(args.get("drop_path_rate", 0.0)),
        layer_scale=None if args.get("init_values") is None else float(args["init_values"]),
        register_tokens=int(args.get("reg_tokens", 0)), no_embed_class=bool(args.get("no_embed_class", False)),
        pooling="mean" if pool == "avg" else "token", fc_norm=bool(pool == "avg" if fc_norm is None else fc_norm),
    )


def from_shapes(shapes: Mapping[str, tuple[int, ...]], num_heads: int | None, source: str) -> TimmModel:
    """The model a timm state dict's tensor shapes tell, for a file without ``config.json``.

    The start value of LayerScale is not stored (the loaded ``gamma`` replaces it; 1e-5 is
    recorded) and the heads are not either: 64-wide heads as in every published ViT unless
    ``num_heads`` is given. Whether the position embedding covers the class token is read from
    its length. The input preparation is that of the supported architecture with
    the same shape, else timm's ViT default (mean and std 0.5, bicubic).
    """
    def need(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise WeightsError(f"{source} has no {name!r}; it is not a timm Vision Transformer state dict")
        return tuple(shapes[name])

    width, _, patch, _ = need("patch_embed.proj.weight")
    need("cls_token")
    depth = len({name.split(".")[1] for name in shapes if name.startswith("blocks.")})
    registers = tuple(shapes.get("reg_token", (1, 0, width)))[1]
    heads = num_heads or (width // 64 if width % 64 == 0 else None)
    if heads is None:
        raise ConfigError(f"{source}: its shapes do not tell the attention heads of width {width}; "
                          f"pass --heads N (num_heads=N in Python) or --architecture NAME")
    positions = need("pos_embed")[1]
    # Patches only (no_embed_class) or the class and register tokens too: whichever leaves a
    # square grid; where both do (possible only with registers), patches only, as every timm
    # model with registers has it.
    candidates = [no_embed for no_embed, count in ((True, positions), (False, positions - 1 - registers))
                  if count > 0 and math.isqrt(count) ** 2 == count]
    if not candidates:
        raise ConfigError(f"{source}: its position embedding of {positions} tokens is not a square grid of "
                          f"patches; pass --architecture NAME (a timm name)")
    side = math.isqrt(positions if candidates[0] else positions - 1 - registers)
    args = {"patch_size": patch, "embed_dim": width, "depth": depth, "num_heads": heads,
            "mlp_ratio": need("blocks.0.mlp.fc1.weight")[0] / width, "reg_tokens": registers,
            "no_embed_class": candidates[0], "init_values": 1e-5 if "blocks.0.ls1.gamma" in shapes else None,
            "global_pool": "avg" if "fc_norm.weight" in shapes else "token"}
    config = backbone_config(args, source)
    twin = next((a for a in ARCHITECTURES.values() if _same_shape(backbone_config(a.model_args, a.name), config)), None)
    mean, std, interpolation = (twin.mean, twin.std, twin.interpolation) if twin else (INCEPTION_MEAN, INCEPTION_STD, "bicubic")
    num_classes = need("head.weight")[0] if "head.weight" in shapes else 0
    return TimmModel(None, config, (side * patch, side * patch), num_classes, mean, std, interpolation)


def _same_shape(a: ViTConfig, b: ViTConfig) -> bool:
    keys = ("patch_size", "num_layers", "hidden_size", "num_heads", "mlp_dim", "register_tokens", "no_embed_class")
    return all(getattr(a, key) == getattr(b, key) for key in keys) and (a.layer_scale is None) == (b.layer_scale is None)


def _pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def _triple(values: Any) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    return values if len(values) == 3 else values[:1] * 3


def _interpolation(name: str, source: str) -> str:
    if name not in ("bicubic", "bilinear"):
        raise WeightsError(f"{source}: interpolation {name!r} is not one vitkit resizes with (bicubic, bilinear)")
    return name
