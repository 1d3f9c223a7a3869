"""timm's Vision Transformer state dict mapped onto vitkit's backbone, tensor by tensor.

Every backbone variable takes one timm tensor, converted from PyTorch's layout (``(out, in)``
linear weights, ``(out, in, kh, kw)`` convolutions) to Keras'; the fused ``attn.qkv`` projection
is split into vitkit's ``query``, ``key`` and ``value``. A checkpoint with a tensor left over, or
one missing, is refused before anything is assigned.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from vitkit.errors import WeightsError
from vitkit.models.config import ViTConfig
from vitkit.models.posembed import resample_position_embedding

Conversion = Callable[[np.ndarray], np.ndarray]
HEAD_NAMES = ("head.weight", "head.bias")


def _same(value: np.ndarray) -> np.ndarray:
    return value


def _linear(value: np.ndarray) -> np.ndarray:
    return value.T


def _conv(value: np.ndarray) -> np.ndarray:
    return value.transpose(2, 3, 1, 0)


def _third(index: int, width: int, transpose: bool) -> Conversion:
    """Part ``index`` (query 0, key 1, value 2) of the fused ``qkv`` weight or bias."""
    def take(value: np.ndarray) -> np.ndarray:
        part = value[index * width:(index + 1) * width]
        return part.T if transpose else part

    return take


def name_map(config: ViTConfig) -> dict[str, tuple[str, Conversion]]:
    """vitkit variable path (below the backbone) -> (timm tensor name, conversion)."""
    width = config.hidden_size
    names: dict[str, tuple[str, Conversion]] = {
        "embedding/kernel": ("patch_embed.proj.weight", _conv),
        "embedding/bias": ("patch_embed.proj.bias", _same),
        "class_token/cls": ("cls_token", _same),
        "posembed_input/pos_embedding": ("pos_embed", _same),
    }
    if config.register_tokens:
        names["registers/tokens"] = ("reg_token", _same)
    for i in range(config.num_layers):
        ours, theirs = f"encoderblock_{i}", f"blocks.{i}"
        attention = f"{ours}/MultiHeadDotProductAttention_1"
        for norm, timm_norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            names[f"{ours}/{norm}/gamma"] = (f"{theirs}.{timm_norm}.weight", _same)
            names[f"{ours}/{norm}/beta"] = (f"{theirs}.{timm_norm}.bias", _same)
        for index, part in enumerate(("query", "key", "value")):
            names[f"{attention}/{part}/kernel"] = (f"{theirs}.attn.qkv.weight", _third(index, width, True))
            names[f"{attention}/{part}/bias"] = (f"{theirs}.attn.qkv.bias", _third(index, width, False))
        names[f"{attention}/out/kernel"] = (f"{theirs}.attn.proj.weight", _linear)
        names[f"{attention}/out/bias"] = (f"{theirs}.attn.proj.bias", _same)
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            names[f"{ours}/MlpBlock_3/{dense}/kernel"] = (f"{theirs}.mlp.{fc}.weight", _linear)
            names[f"{ours}/MlpBlock_3/{dense}/bias"] = (f"{theirs}.mlp.{fc}.bias", _same)
        if config.layer_scale is not None:
            names[f"{ours}/LayerScale_attention/gamma"] = (f"{theirs}.ls1.gamma", _same)
            names[f"{ours}/LayerScale_mlp/gamma"] = (f"{theirs}.ls2.gamma", _same)
    final, timm_final = ("fc_norm", "fc_norm") if config.fc_norm else ("encoder_norm", "norm")
    names[f"{final}/gamma"] = (f"{timm_final}.weight", _same)
    names[f"{final}/beta"] = (f"{timm_final}.bias", _same)
    return names


def backbone_values(state: Mapping[str, np.ndarray], config: ViTConfig, variables: Iterable,
                    grid: tuple[int, int], old_grid: tuple[int, int], source: str) -> list[np.ndarray]:
    """An array for each backbone variable, converted, resampled and checked; nothing assigned.

    Args:
        state: timm tensor name -> array (the checkpoint; ``head.*`` may be there too).
        config: the backbone's configuration.
        variables: the backbone's variables (paths ``vit/...``).
        grid: the model's patch grid; ``old_grid`` the checkpoint's.
        source: the checkpoint, for messages.

    Raises:
        WeightsError: a tensor is missing, left over or of another shape; names the tensor.
    """
    names = name_map(config)
    unused = sorted(set(state) - {name for name, _ in names.values()} - set(HEAD_NAMES))
    if unused:
        raise WeightsError(
            f"{source}: tensors {unused[:4]}{' ...' if len(unused) > 4 else ''} have no place in the backbone "
            f"(a ViT with other options than the configuration says, or not a ViT)"
        )
    values = []
    for variable in variables:
        relative = variable.path.split("/", 1)[1]
        if relative not in names:
            raise WeightsError(f"{source}: no timm tensor maps to {variable.path}")
        name, convert = names[relative]
        if name not in state:
            raise WeightsError(f"{source} has no {name!r}, which the backbone needs ({variable.path})")
        value = convert(np.asarray(state[name]))
        if relative == "posembed_input/pos_embedding":
            prefix = 0 if config.no_embed_class else config.prefix_tokens
            value = resample_position_embedding(value, grid, prefix, "bicubic", old_grid)
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsError(f"{source}: {name} gives shape {tuple(value.shape)}, {variable.path} has "
                               f"{tuple(variable.shape)}")
        values.append(value)
    return values


def head_values(state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The classifier ``(kernel (D, classes), bias)`` in Keras' layout, or None without one."""
    if not all(name in state for name in HEAD_NAMES):
        return None
    return np.asarray(state["head.weight"]).T, np.asarray(state["head.bias"])
