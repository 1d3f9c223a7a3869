"""What the current Keras backend runs on, and what that allows (mixed precision, memory hints).

Keras is imported inside the functions: the command line configures XLA from here before any
backend starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from vitkit.errors import ConfigError, ResourceError
from vitkit.fileio import vitkit_home

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


def configured_backend() -> str:
    """The Keras backend in use, or the one importing Keras will choose, without importing it:
    ``$KERAS_BACKEND``, else the ``backend`` in Keras' ``keras.json`` (in ``$KERAS_HOME``, else
    ``~/.keras``), else ``tensorflow``."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


# JAX's GPU plugins; one installed means JAX can use an NVIDIA GPU that TensorFlow would.
_JAX_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


def jax_predicts_faster() -> bool:
    """Whether a prediction command should run on JAX though the user named no backend.

    On a CPU, JAX predicts a ViT about 1.5 times as fast as TensorFlow (``bench/cpu_predict.py``),
    and only on JAX does ``vitkit predict`` keep its compiled forward pass for the next run. So JAX is
    chosen where it is installed, Keras is not yet imported, ``$KERAS_BACKEND`` is unset and
    Keras' ``keras.json`` names TensorFlow (the default it writes), unless the machine has an
    NVIDIA GPU that the installed JAX cannot use.
    """
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND") or configured_backend() != "tensorflow":
        return False
    if importlib.util.find_spec("jax") is None:
        return False
    return not _nvidia_gpu_present() or any(importlib.util.find_spec(name) is not None for name in _JAX_GPU_PLUGINS)


def _nvidia_gpu_present() -> bool:
    return Path("/dev/nvidiactl").exists()


def resolve_precision(precision: str) -> str:
    """``auto`` -> bfloat16 mixed precision on accelerators, float32 on CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "float32" if accelerator() == "cpu" else "mixed_bfloat16"


def under_policy(precision: str, make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``make(*args, **kwargs)``: a model built under ``precision``'s Keras dtype policy
    (``float32``, ``mixed_bfloat16``...), the global policy restored afterwards."""
    import keras

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return make(*args, **kwargs)
    finally:
        keras.config.set_dtype_policy(previous_policy)

_OUT_OF_MEMORY_MARKS = (
    "RESOURCE_EXHAUSTED", "ResourceExhausted", "out of memory", "Out of memory", "OutOfMemory",
    "OOM when allocating", "CUDA_ERROR_OUT_OF_MEMORY",
)


def is_out_of_memory(error: BaseException) -> bool:
    """True for the out-of-memory errors of TensorFlow, JAX/XLA, PyTorch and Python itself.

    The error's causes are looked at too, since frameworks re-raise with their own types.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MemoryError):
            return True
        text = f"{type(error).__name__} {error}"
        if any(mark in text for mark in _OUT_OF_MEMORY_MARKS):
            return True
        error = error.__cause__ or error.__context__
    return False


def out_of_memory_error(batch_size: int, precision: str | None = None, note: str = "") -> ResourceError:
    """The error to show instead of a backend's out-of-memory trace: what ran out, what to change.

    Args:
        batch_size: the batch size that did not fit; half of it is suggested.
        precision: the training precision; ``float32`` adds the mixed-precision hint. None for
            commands without a precision option.
        note: a sentence appended to the message.
    """
    hint = f"try --batch-size {max(batch_size // 2, 1)}"
    if precision == "float32":
        hint += " or --precision mixed_bfloat16"
    message = f"the {accelerator()} ran out of memory at batch size {batch_size}; {hint}"
    return ResourceError(message + (f"; {note}" if note else ""))


@contextlib.contextmanager
def out_of_memory_hint(batch_size: int, precision: str | None = None, note: str | Callable[[], str] = "") -> Iterator[None]:
    """Re-raise an out-of-memory error inside the block as :func:`out_of_memory_error`.

    ``note`` may be a function, evaluated only when memory ran out.
    """
    try:
        yield
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        text = note() if callable(note) else note
        raise out_of_memory_error(batch_size, precision, text) from None


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


def allocate_as_needed() -> None:
    """Let JAX take GPU memory as a command needs it, unless ``XLA_PYTHON_CLIENT_PREALLOCATE``
    is set; call before JAX starts. By default JAX reserves three quarters of the GPU's memory
    on its first use of it, which took 1.3-1.6 s on an H200 (bench/predict_startup.py): worth
    it for training, not for a short prediction."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


# Least recently used programs are dropped beyond this size.
COMPILE_CACHE_BYTES = 2 * 1024**3


def configure_compilation_cache() -> Path | None:
    """Keep JAX's compiled programs in a per-user folder, so that a new process skips compilation.

    The folder is ``$VITKIT_COMPILE_CACHE``, else ``compile-cache`` in the vitkit home;
    ``VITKIT_COMPILE_CACHE=off`` turns the cache off, and a ``JAX_COMPILATION_CACHE_DIR`` the user
    set wins. Beyond 2 GiB, the least recently used programs are dropped. Call before JAX
    starts; returns the folder, or None when off. TensorFlow keeps no such cache.
    """
    variables = compilation_cache_variables(os.environ)
    os.environ.update(variables)
    return Path(variables["JAX_COMPILATION_CACHE_DIR"]) if variables else None


def compilation_cache_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The JAX variables that :func:`configure_compilation_cache` sets for the environment
    ``environ`` (the values it already has win); empty when ``VITKIT_COMPILE_CACHE`` is off."""
    chosen = environ.get("VITKIT_COMPILE_CACHE", "")
    if chosen.lower() in ("off", "0", "no", "false"):
        return {}
    folder = environ.get("JAX_COMPILATION_CACHE_DIR") or chosen or str(vitkit_home() / "compile-cache")
    # Keras compiles one small program per step kind; cache them all, not only the slow ones.
    defaults = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_COMPILATION_CACHE_MAX_SIZE": str(COMPILE_CACHE_BYTES)}
    return {"JAX_COMPILATION_CACHE_DIR": folder, **{name: environ.get(name, value) for name, value in defaults.items()}}


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
