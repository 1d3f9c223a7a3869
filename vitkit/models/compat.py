"""A vitkit backbone as a vit-keras model (the ``compat`` extra), to use vit-keras' tools on it.

vit-keras names its variables like the Flax checkpoints, as vitkit does, with two differences:
a ``Transformer_`` prefix on the encoder's layers and the block's name repeated in the MLP's
dense layers. The weights are copied by name, never by order.
"""

from __future__ import annotations

import re

import numpy as np

from vitkit.errors import ConfigError
from vitkit.models.classifier import ImageClassifier


def vitkit_variable_path(vit_keras_path: str) -> str:
    """``Transformer_encoderblock_0/MlpBlock_3/Transformer_encoderblock_0_Dense_0/kernel`` -> ``vit/encoderblock_0/MlpBlock_3/Dense_0/kernel``."""
    path = re.sub(r"Transformer_encoderblock_\d+_(Dense_\d+)", r"\1", vit_keras_path)
    return "vit/" + re.sub(r"^Transformer_", "", path)


def to_vit_keras(model: ImageClassifier, name: str = "vit"):
    """A vit-keras model (without its top) whose backbone weights are ``model``'s.

    It takes images scaled to [-1, 1] (``vit_keras.vit.preprocess_inputs``), so e.g.
    ``vit_keras.visualize.attention_map(to_vit_keras(model), image)`` works on a vitkit model.

    Raises:
        ConfigError: vit-keras is not installed, or the backbone has a layer vit-keras lacks.
    """
    try:
        from vit_keras import vit
    except ImportError:
        raise ConfigError("vit-keras is not installed; pip install 'vitkit[compat]'") from None
    config = model.backbone.config
    twin = vit.build_model(
        image_size=tuple(model.spec.image_size), patch_size=config.patch_size, num_layers=config.num_layers,
        hidden_size=config.hidden_size, num_heads=config.num_heads, name=name, mlp_dim=config.mlp_dim,
        classes=len(model.class_names), dropout=0.0, include_top=False,
        representation_size=config.representation_size,
    )
    ours = {variable.path: variable for variable in model.backbone.weights}
    theirs = {vitkit_variable_path(variable.path): variable for variable in twin.weights}
    if set(ours) != set(theirs):
        raise ConfigError(f"backbone variables without a vit-keras twin: {sorted(set(ours) ^ set(theirs))}")
    for path, variable in theirs.items():
        variable.assign(np.asarray(ours[path].value))
    return twin
