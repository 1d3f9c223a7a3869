"""Backbone configurations: the dimensions of a ViT as plain data, and the named presets.

Kept free of Keras so the command line can list presets without starting a backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vitkit.errors import ConfigError

@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Dimensions of a ViT backbone.

    Args:
        patch_size: side of the square patches (pixels); ``None`` picks one for the image size.
        num_layers: number of encoder blocks.
        hidden_size: token width ``D``.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_dim: width of each block's MLP.
        dropout: dropout after attention and inside the MLP (training only).
        attention_dropout: dropout on the attention weights (training only).
        drop_path: stochastic-depth rate of the last block (linearly increasing from 0).
        representation_size: width of the ``pre_logits`` tanh layer of ImageNet-21k
            checkpoints, or ``None`` for none.
    """

    patch_size: int | None
    num_layers: int
    hidden_size: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    representation_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown backbone option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


# The B and L dimensions are those of the original paper, vit-keras and the Flax checkpoints;
# like the original fine-tuning configurations they use no dropout (--dropout adds it).
# The small ones are for training from scratch; their patch size follows the image size.
PRESETS: dict[str, ViTConfig] = {
    "vit_b16": ViTConfig(16, 12, 768, 12, 3072),
    "vit_b32": ViTConfig(32, 12, 768, 12, 3072),
    "vit_l16": ViTConfig(16, 24, 1024, 16, 4096),
    "vit_l32": ViTConfig(32, 24, 1024, 16, 4096),
    "vit_s16": ViTConfig(16, 12, 384, 6, 1536),
    "vit_ti16": ViTConfig(16, 12, 192, 3, 768),
    "vit_small": ViTConfig(None, 6, 128, 4, 256),
    "vit_micro": ViTConfig(None, 4, 64, 4, 128),
}

# Automatic patch size aims at this many patches along each side.
_AUTO_GRID = 8


def auto_patch_size(image_size: tuple[int, int]) -> int:
    """Largest patch size that divides both sides and gives at least an 8x8 grid (min 2)."""
    short = min(image_size)
    for patch in range(max(short // _AUTO_GRID, 1), 0, -1):
        if image_size[0] % patch == 0 and image_size[1] % patch == 0:
            return max(patch, 1)
    return 1


def resolve_config(
    backbone: str | ViTConfig | dict[str, Any],
    image_size: tuple[int, int],
    **overrides: Any,
) -> ViTConfig:
    """Turn a preset name, dict or config plus overrides into a checked, complete config."""
    if isinstance(backbone, ViTConfig):
        config = backbone
    elif isinstance(backbone, dict):
        config = ViTConfig.from_dict(backbone)
    elif backbone in PRESETS:
        config = PRESETS[backbone]
    else:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)
    if config.patch_size is None:
        config = dataclasses.replace(config, patch_size=auto_patch_size(image_size))
    _check_config(config, image_size)
    return config


def _check_config(config: ViTConfig, image_size: tuple[int, int]) -> None:
    patch = config.patch_size
    if patch is None or patch < 1:
        raise ConfigError(f"patch size must be a positive integer, got {patch}")
    if image_size[0] % patch or image_size[1] % patch:
        raise ConfigError(
            f"image size {image_size[0]}x{image_size[1]} is not a multiple of the patch size "
            f"{patch}; use an image size divisible by {patch} or another --patch-size"
        )
    if config.hidden_size % config.num_heads:
        raise ConfigError(
            f"hidden size {config.hidden_size} is not divisible by {config.num_heads} heads"
        )
    for name in ("dropout", "attention_dropout", "drop_path"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if config.num_layers < 1:
        raise ConfigError(f"a backbone needs at least one layer, got {config.num_layers}")
