"""Weights of other tools in one neutral form, and what their arrays say about the model.

Every backbone array is known by its name in the original Flax checkpoint (the names vitkit's
backbone maps from), whatever tool wrote it: :func:`flax_name_of` turns any tool's name into that
one. Layers outside the backbone are :class:`HeadLayer` s, chained into computation order by
their shapes (:func:`chain_head`). :func:`backbone_shape` reads patch size, depth, widths and
grid from the arrays and checks that none is missing. The readers that fill
:class:`ForeignWeights` from files are in :mod:`vitkit.models.legacy`. This module needs no Keras.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from vitkit.errors import WeightsError

FORMATS = {
    "flax-npz": "Flax .npz checkpoint",
    "keras3-weights": "Keras 3 weights file",
    "keras3-model": "Keras 3 .keras model",
    "legacy-h5": "legacy (Keras 2 layout) HDF5 weights file",
}

# Heads of the published ViTs by width: every one of them uses 64-wide heads.
PUBLISHED_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}

# Flax name of each backbone array, found at the end of a name path.
_BLOCK_PATTERNS = (
    (re.compile(r"MultiHeadDotProductAttention_1/(query|key|value|out)/(kernel|bias)$"),
     "MultiHeadDotProductAttention_1/{0}/{1}"),
    (re.compile(r"(LayerNorm_[02])/(gamma|beta|scale|bias)$"), "{0}/{1}"),
    (re.compile(r"Dense_([01])/(kernel|bias)$"), "MlpBlock_3/Dense_{0}/{1}"),
)
_TOP_PATTERNS = (
    (re.compile(r"(?:^|[/_])encoder_norm/(gamma|beta|scale|bias)$"), "Transformer/encoder_norm/{0}"),
    (re.compile(r"posembed_input/pos_embedding$"), "Transformer/posembed_input/pos_embedding"),
    (re.compile(r"(?:^|/)(?:class_token/)?cls$"), "cls"),
    (re.compile(r"(?:^|/)embedding/(kernel|bias)$"), "embedding/{0}"),
    (re.compile(r"(?:^|/)pre_logits/(kernel|bias)$"), "pre_logits/{0}"),
    (re.compile(r"(?:^|/)head/(kernel|bias)$"), "head/{0}"),
)
_BLOCK = re.compile(r"encoderblock_(\d+)")
_KERAS_LEAVES = {"gamma": "scale", "beta": "bias"}

def flax_name_of(path: str) -> str | None:
    """The Flax checkpoint name of a backbone array given any tool's name for it, else None.

    Example:
        >>> flax_name_of("vit-b16/Transformer/encoderblock_0/Dense_1/kernel:0")
        'Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel'
    """
    path = path.split(":")[0]
    block = _BLOCK.search(path)
    if block:
        for pattern, template in _BLOCK_PATTERNS:
            found = pattern.search(path)
            if found:
                parts = [_KERAS_LEAVES.get(part, part) if part in ("gamma", "beta") else part
                         for part in found.groups()]
                return f"Transformer/encoderblock_{int(block.group(1))}/" + template.format(*parts)
        return None
    for pattern, template in _TOP_PATTERNS:
        found = pattern.search(path)
        if found:
            return template.format(*(_KERAS_LEAVES.get(part, part) for part in found.groups()))
    return None


@dataclasses.dataclass
class HeadLayer:
    """A BatchNormalization or Dense layer found outside the backbone (a classifier head).

    ``arrays`` holds ``gamma, beta, moving_mean, moving_variance`` or ``kernel, bias``;
    ``order`` sorts layers by their place in the file (recorded order, else Keras' numbering).
    """

    name: str
    kind: str
    arrays: dict[str, np.ndarray]
    order: tuple = ()

    @property
    def width_in(self) -> int:
        return int(self.arrays["kernel"].shape[0] if self.kind == "dense" else self.arrays["gamma"].shape[0])

    @property
    def width_out(self) -> int:
        return int(self.arrays["kernel"].shape[1] if self.kind == "dense" else self.arrays["gamma"].shape[0])


@dataclasses.dataclass
class ForeignWeights:
    """What a foreign weights file holds, by Flax name, plus what it tells of its model.

    Attributes:
        path: the file.
        format: a key of :data:`FORMATS`.
        backbone: Flax name -> array for the backbone (``embedding``, ``cls``, ``Transformer/...``,
            ``pre_logits``), in the file's own shapes.
        head: head layers outside the backbone, as found (:func:`chain_head` orders them),
            including a pretrained top (``head/kernel``) as a Dense layer named ``head``.
        num_heads: attention heads when the file tells them (Flax kernel shapes or a saved
            model configuration), else None.
        dropout: the dropout rate of a saved model configuration, else None.
    """

    path: Path
    format: str
    backbone: dict[str, np.ndarray]
    head: list[HeadLayer]
    num_heads: int | None = None
    dropout: float | None = None

    @property
    def description(self) -> str:
        return f"{self.path} ({FORMATS[self.format]})"


# What the arrays say about the model -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BackboneShape:
    """Backbone dimensions read from the arrays (``num_heads`` None when they do not tell)."""

    patch_size: int
    num_layers: int
    hidden_size: int
    mlp_dim: int
    grid: int
    num_heads: int | None
    representation_size: int | None

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    @property
    def features(self) -> int:
        return self.representation_size or self.hidden_size


def backbone_shape(weights: ForeignWeights) -> BackboneShape:
    """Read patch size, depth, width, MLP width, grid and heads from the arrays; checks completeness."""
    arrays, source = weights.backbone, weights.description
    kernel = _need(arrays, "embedding/kernel", source)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != 3:
        raise WeightsError(f"{source}: embedding/kernel has shape {kernel.shape}, not (patch, patch, 3, width)")
    patch, hidden = int(kernel.shape[0]), int(kernel.shape[3])
    blocks = sorted({int(m.group(1)) for key in arrays for m in [_BLOCK.search(key)] if m})
    if not blocks:
        raise WeightsError(f"{source} has no encoder blocks")
    if blocks != list(range(len(blocks))):
        missing = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise WeightsError(f"{source}: encoder block(s) {missing} are missing (found {blocks})")
    for name in _required_names(len(blocks)):
        _need(arrays, name, source)
    mlp = int(arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[-1])
    tokens = int(arrays["Transformer/posembed_input/pos_embedding"].shape[1]) - 1
    grid = int(round(np.sqrt(tokens)))
    if grid * grid != tokens:
        raise WeightsError(f"{source}: the position embedding has {tokens} patch tokens, not a square grid")
    representation = arrays.get("pre_logits/kernel")
    return BackboneShape(
        patch, len(blocks), hidden, mlp, grid, weights.num_heads,
        None if representation is None else int(representation.shape[-1]),
    )


def _required_names(layers: int) -> list[str]:
    names = ["embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
             "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"]
    for i in range(layers):
        block = f"Transformer/encoderblock_{i}"
        names += [f"{block}/{norm}/{leaf}" for norm in ("LayerNorm_0", "LayerNorm_2") for leaf in ("scale", "bias")]
        names += [f"{block}/MultiHeadDotProductAttention_1/{part}/{leaf}"
                  for part in ("query", "key", "value", "out") for leaf in ("kernel", "bias")]
        names += [f"{block}/MlpBlock_3/Dense_{j}/{leaf}" for j in (0, 1) for leaf in ("kernel", "bias")]
    return names


def _need(arrays: dict[str, np.ndarray], name: str, source: str) -> np.ndarray:
    if name not in arrays:
        raise WeightsError(f"{source} has no {name!r}; it is not a complete ViT backbone")
    return arrays[name]


def chain_head(layers: list[HeadLayer], features: int, source: str) -> list[HeadLayer]:
    """Head layers in computation order, chained by shapes from the backbone's ``features`` width.

    At each width a BatchNormalization comes before the Dense that reads it (the recipe's
    ``BN -> Dense -> BN -> Dense``); ties are broken by the order the file records.
    """
    remaining = sorted(layers, key=lambda layer: layer.order)
    chain: list[HeadLayer] = []
    width = features
    while remaining:
        after_norm = bool(chain) and chain[-1].kind == "batchnorm"
        candidates = [layer for layer in remaining if layer.width_in == width
                      and not (after_norm and layer.kind == "batchnorm")]
        if not candidates:
            names = ", ".join(f"{layer.name} ({layer.kind}, input width {layer.width_in})" for layer in remaining)
            raise WeightsError(
                f"{source}: head layer(s) {names} do not follow the backbone's {features} features "
                f"or the layers before them"
            )
        chosen = next((layer for layer in candidates if layer.kind == "batchnorm"), candidates[0])
        chain.append(chosen)
        remaining.remove(chosen)
        width = chosen.width_out
    return chain
