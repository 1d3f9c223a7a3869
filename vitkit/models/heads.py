"""Classification heads: the layers on the backbone's features, and how a model with a second
head (the distillation token's, DeiT) combines the two into its prediction."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

from vitkit.models.blocks import gelu_tanh


def head_layers(num_classes: int, head_width: int, head_norm: bool, prefix: str = "") -> list[keras.layers.Layer]:
    """``BatchNorm -> Dense(head_width, gelu tanh) -> BatchNorm -> Dense(n, softmax)`` (no BatchNorm
    without ``head_norm``, no hidden layer with ``head_width`` 0); layer names start with ``prefix``."""
    def norm(name: str) -> list[keras.layers.Layer]:
        return [keras.layers.BatchNormalization(name=f"{prefix}{name}")] if head_norm else []

    layers = norm("head_norm_0")
    if head_width:
        layers += [
            keras.layers.Dense(head_width, activation=gelu_tanh, name=f"{prefix}head_hidden"),
            *norm("head_norm_1"),
        ]
    layers.append(
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=f"{prefix}head_output")
    )
    return layers


def apply_layers(layers: Sequence[keras.layers.Layer], x, training=None):
    """``x`` through ``layers`` in order."""
    for layer in layers:
        x = layer(x, training=training)
    return x


def head_logits(layers: Sequence[keras.layers.Layer], features, training=None):
    """A head's class scores before its softmax, ``(batch, classes)``."""
    *hidden_layers, output = layers
    hidden = ops.cast(apply_layers(hidden_layers, features, training), output.compute_dtype)
    return ops.add(ops.matmul(hidden, output.kernel), output.bias)


def combined_logits(logits: Sequence):
    """Scores whose softmax is the mean of the heads' softmaxes: ``log(mean_h softmax(logits_h))``,
    computed stably (a single head's logits are returned as they are)."""
    if len(logits) == 1:
        return logits[0]
    stacked = ops.stack([ops.log_softmax(ops.cast(each, "float32"), axis=-1) for each in logits], axis=0)
    return ops.logsumexp(stacked, axis=0) - ops.log(float(len(logits)))
