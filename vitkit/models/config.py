"""Backbone configurations: the dimensions of a ViT as plain data, and the named presets.

Kept free of Keras so the command line can list presets without starting a backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vitkit.errors import ConfigError, dataclass_from_dict

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
        tokenizer: how images become patch tokens (see :data:`TOKENIZERS`): ``patch`` (one
            linear projection per patch, the original ViT and every checkpoint), ``conv``
            (a convolutional stem of 3x3 convolutions before the projection) or ``shifted``
            (shifted patch tokenization, Lee et al. 2021). Every tokenizer gives the same
            ``(H / patch) x (W / patch)`` grid of tokens.
        locality_attention: locality self-attention (Lee et al. 2021): a learned softmax
            temperature per block and no attention of a token to itself.
        layer_scale: LayerScale (Touvron et al. 2021): each block's attention and MLP branches
            are multiplied by a learned per-channel ``gamma`` started at this value (timm's
            ``init_values``: 1e-6 in DeiT III, 1e-5 in DINOv2); ``None`` for none.
        register_tokens: learned tokens after the class token that take part in attention but
            belong to no patch (Darcet et al. 2023, "Vision Transformers need registers").
        no_embed_class: the position embedding covers the patches only, and is added before
            the class and register tokens are put in front (DeiT III, DINOv2); otherwise it
            covers every token (the original ViT).
        pooling: ``token`` (the class token's features, the original ViT) or ``mean`` (the mean
            of the patch tokens).
        fc_norm: the final LayerNorm is applied to the pooled features (``fc_norm``) instead
            of to every token (``encoder_norm``), as timm does for mean pooling.
        distillation_token: a learned token right after the class token whose output feeds a
            second head trained on a teacher's labels (DeiT, Touvron et al. 2021); the
            position embedding covers it as it covers the class token.
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
    tokenizer: str = "patch"
    locality_attention: bool = False
    layer_scale: float | None = None
    register_tokens: int = 0
    no_embed_class: bool = False
    pooling: str = "token"
    fc_norm: bool = False
    distillation_token: bool = False

    @property
    def checkpoint_compatible(self) -> bool:
        """True when the variables match the original ViT checkpoints (no small-data options)."""
        return self.tokenizer == "patch" and not self.locality_attention

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, the distillation token and the registers."""
        return 1 + int(self.distillation_token) + self.register_tokens

    def to_dict(self) -> dict[str, Any]:
        """The fields, leaving out those of :data:`LATER_OPTIONS` at their defaults, so a model
        without them is described as before they existed (and older vitkit reads its file)."""
        values = dataclasses.asdict(self)
        return {key: value for key, value in values.items()
                if key not in LATER_OPTIONS or value != LATER_OPTIONS[key]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ViTConfig":
        return dataclass_from_dict(cls, values, "backbone")


# Options added after the first model-file format, with the values that mean "off".
LATER_OPTIONS: dict[str, Any] = {
    "layer_scale": None, "register_tokens": 0, "no_embed_class": False, "pooling": "token", "fc_norm": False,
    "distillation_token": False,
}
POOLINGS = ("token", "mean")

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

# Presets with published checkpoints (weights "auto" loads ImageNet-21k for these only).
PRETRAINED_PRESETS = ("vit_b16", "vit_b32", "vit_l16", "vit_l32")

# Tokenizer name -> what it does; "patch" is the original ViT's and the only one checkpoints hold.
TOKENIZERS: dict[str, str] = {
    "patch": "non-overlapping patches, one linear projection each (original ViT)",
    "conv": "3x3 convolution stem (stride 2 while the patch size allows), then a projection",
    "shifted": "shifted patch tokenization: the image and 4 diagonal half-patch shifts, "
               "layer-normed and projected",
}

# Options for training from scratch that change a backbone's variables; only a backbone pre-trained
# with them (``vitkit pretrain``) loads into a model that has them.
SMALL_DATA_OPTIONS = ("tokenizer", "locality_attention")

# Automatic patch size aims at this many patches along each side.
_AUTO_GRID = 8
# More tokens than this make attention matrices no machine holds (224 px at patch 1 is 50k).
MAX_TOKENS = 4096


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
    if min(image_size) < patch:
        raise ConfigError(
            f"image size {image_size[0]}x{image_size[1]} is smaller than the patch size {patch}: "
            f"choose a larger --image-size (images are resized, so small images are upsampled) "
            f"or a --patch-size of at most {min(image_size)}"
        )
    if image_size[0] % patch or image_size[1] % patch:
        side = max(image_size)
        nearest = sorted({max(side // patch, 1) * patch, (side // patch + 1) * patch})
        raise ConfigError(
            f"image size {image_size[0]}x{image_size[1]} is not a multiple of the patch size "
            f"{patch}; use an image size divisible by {patch} (e.g. --image-size "
            f"{' or '.join(map(str, nearest))}) or another --patch-size"
        )
    tokens = (image_size[0] // patch) * (image_size[1] // patch)
    if tokens > MAX_TOKENS:
        raise ConfigError(
            f"image size {image_size[0]}x{image_size[1]} with patch size {patch} makes {tokens} "
            f"tokens (at most {MAX_TOKENS}); use a larger --patch-size or a smaller --image-size"
        )
    if config.tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {config.tokenizer!r}")
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
    if config.pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {config.pooling!r}")
    if config.register_tokens < 0:
        raise ConfigError(f"register tokens must be 0 or more, got {config.register_tokens}")
    if config.layer_scale is not None and not config.layer_scale > 0:
        raise ConfigError(f"layer scale must be a positive start value or None, got {config.layer_scale}")
