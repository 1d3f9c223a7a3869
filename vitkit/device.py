"""What the current Keras backend runs on, and what that allows (mixed precision, memory hints)."""

from __future__ import annotations

import keras

from vitkit.errors import ConfigError, ResourceError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def accelerator() -> str:
    """``gpu``, ``tpu`` or ``cpu`` for the first device of the current backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def resolve_precision(precision: str) -> str:
    """``auto`` -> bfloat16 mixed precision on accelerators, float32 on CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "float32" if accelerator() == "cpu" else "mixed_bfloat16"


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(mark in text for mark in ("RESOURCE_EXHAUSTED", "ResourceExhausted", "out of memory", "OutOfMemory"))


def out_of_memory_error(batch_size: int, precision: str) -> ResourceError:
    hint = f"try --batch-size {max(batch_size // 2, 1)}"
    if precision == "float32":
        hint += " or --precision mixed_bfloat16"
    return ResourceError(f"the {accelerator()} ran out of memory at batch size {batch_size}; {hint}")
