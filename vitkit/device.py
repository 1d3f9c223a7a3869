"""What the current Keras backend runs on, and what that allows (mixed precision, memory hints).

Keras is imported inside the functions: the command line configures XLA from here before any
backend starts.
"""

from __future__ import annotations

import os

from vitkit.errors import ConfigError, ResourceError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def accelerator() -> str:
    """``gpu``, ``tpu`` or ``cpu`` for the first device of the current backend."""
    import keras

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


# XLA's own (Triton) matrix kernels lose to cuBLAS on the ViT's shapes: about 10% of inference
# throughput on an H100/H200 for ViT-B/16 (bench/gpu_profile.py).
_XLA_DEFAULTS = ("--xla_gpu_enable_triton_gemm=false",)


def configure_xla() -> None:
    """Add vitkit's XLA defaults to ``XLA_FLAGS`` (flags the user set win); call before JAX starts."""
    flags = os.environ.get("XLA_FLAGS", "")
    chosen = {flag.split("=")[0] for flag in flags.split()}
    extra = [flag for flag in _XLA_DEFAULTS if flag.split("=")[0] not in chosen]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def batch_stager():
    """A function that starts copying a NumPy batch to the accelerator, or None where that does not pay.

    On JAX with a GPU or TPU (and no multi-device distribution, which places batches itself),
    calling ``jax.device_put`` in the data loader's worker threads overlaps the host-to-device
    copy with the previous step instead of doing it between steps.
    """
    import keras

    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return None
    import jax

    return jax.device_put if jax.default_backend() in ("gpu", "tpu") else None
