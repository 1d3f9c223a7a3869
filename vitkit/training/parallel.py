"""Data-parallel training over several devices and hosts, through the backends' own engines.

- JAX: ``keras.distribution.DataParallel`` over the chosen devices. Several hosts (processes)
  join through ``keras.distribution.initialize`` when the environment names a coordinator:
  ``VITKIT_COORDINATOR=host:port``, ``VITKIT_NUM_PROCESSES`` and ``VITKIT_PROCESS_ID`` (or
  Keras' own ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES``,
  ``KERAS_DISTRIBUTION_PROCESS_ID``). Each process reads its own part of every global batch.
- TensorFlow: ``tf.distribute.MirroredStrategy`` over the chosen devices of one host. Several
  hosts (``TF_CONFIG`` naming several workers) are refused with a clear error: Keras 3's ``fit``
  does not run under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585: it reduces the
  first batch and the per-step logs with calls that fail on several workers); use JAX there.

The batch size is the global batch, split evenly over all devices; gradients, losses, metrics
and the head's BatchNorm statistics are those of the global batch, as on one device. The
learning rate is used as given, for the global batch; vitkit does not scale it. The linear
scaling rule (Goyal et al., 2017): when the global batch grows k times, multiply the learning
rate by k, with a warm-up when k is large.

Model (tensor) parallelism is not provided: ViT-L/16's weights, gradients and Adam moments take
about 5 GB, so every GPU holds a whole replica; where activations do not fit, lower the batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Callable, ContextManager

from vitkit.errors import ConfigError

COORDINATOR = "VITKIT_COORDINATOR"
NUM_PROCESSES = "VITKIT_NUM_PROCESSES"
PROCESS_ID = "VITKIT_PROCESS_ID"
_KERAS_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"


@dataclasses.dataclass(frozen=True)
class Parallel:
    """Where one training run computes, and what that asks of its data and outputs.

    Attributes:
        replicas: devices over all processes; the global batch is split evenly over them.
        process_index: this process among ``process_count`` (0 writes the outputs).
        process_count: processes (hosts) training together.
        shard: ``(index, count)`` for :class:`~vitkit.data.batches.ImageBatches`: which part of each
            global batch this process reads.
        multiple_of: every global batch must hold a multiple of this many samples (JAX shards
            arrays only evenly; TensorFlow takes uneven last batches: 1).
        sync_batch_norm: BatchNormalization layers must be told to normalize over the global
            batch (TensorFlow normalizes each device's part unless they are synchronized; JAX
            computes over the global batch already).
    """

    replicas: int = 1
    process_index: int = 0
    process_count: int = 1
    shard: tuple[int, int] = (0, 1)
    multiple_of: int = 1
    sync_batch_norm: bool = False
    _scope: Callable[[], ContextManager] = contextlib.nullcontext

    @property
    def is_single(self) -> bool:
        """One device in one process: today's plain training path."""
        return self.replicas == 1 and self.process_count == 1

    @property
    def is_chief(self) -> bool:
        """The process that writes the model file, history and resume state."""
        return self.process_index == 0

    def local_batch_size(self, batch_size: int) -> int:
        """This process's share of the global ``batch_size``; it must split evenly over the devices."""
        if batch_size % self.replicas:
            lower = batch_size - batch_size % self.replicas
            options = " or ".join(str(n) for n in (lower, lower + self.replicas) if n > 0)
            raise ConfigError(f"batch size {batch_size} does not split evenly over {self.replicas} devices; "
                              f"use a multiple of {self.replicas} (e.g. {options})")
        return batch_size // self.shard[1]

    def scope(self) -> ContextManager:
        """The context in which the model is built, compiled, trained and loaded; restores the previous one."""
        return self._scope()

    def prepare(self, model) -> None:
        """Make a model built in :meth:`scope` compute as on one device (see ``sync_batch_norm``)."""
        if not self.sync_batch_norm:
            return
        import keras

        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True

    def agree(self, value: int) -> bool:
        """Whether every process holds the same ``value`` (a collective: all processes must call it)."""
        if self.process_count == 1:
            return True
        import numpy as np
        from jax.experimental import multihost_utils

        values = multihost_utils.process_allgather(np.array([value], dtype=np.int64))
        return bool(np.all(np.asarray(values) == value))


SINGLE = Parallel()


def parse_devices(devices: int | str) -> int | str:
    """``"all"`` or a positive device count (as int or text)."""
    if isinstance(devices, str) and devices.strip().lower() == "all":
        return "all"
    try:
        count = int(devices)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or (isinstance(devices, float) and devices != count):
        raise ConfigError(f"devices must be 'all' or a positive number, got {devices!r}")
    return count


def plan(devices: int | str = 1) -> Parallel:
    """Choose the devices of a training run and start the multi-host runtime if the environment names one.

    Call it before the backend has run anything in this process: joining several hosts
    (``VITKIT_COORDINATOR``) must happen first.

    Args:
        devices: ``"all"`` (every GPU/TPU of this host, else every CPU device) or a count of this
            host's devices. 1 in one process is the plain single-device path.

    Raises:
        ConfigError: more devices than this host has (naming those found), a malformed
            cluster environment, or a backend without multi-device support.
    """
    devices = parse_devices(devices)
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return _plan_jax(devices)
    if backend == "tensorflow":
        return _plan_tensorflow(devices)
    if devices == 1 and COORDINATOR not in os.environ:
        return SINGLE
    raise ConfigError(f"training on several devices needs the JAX or TensorFlow backend, not {backend}")


# JAX -------------------------------------------------------------------------------------------

def _plan_jax(devices: int | str) -> Parallel:
    _join_jax_cluster()
    if devices == 1 and not _in_jax_cluster():
        return SINGLE
    import jax
    import keras
    import numpy as np

    local = jax.local_devices()
    count = len(local) if devices == "all" else devices
    if count > len(local):
        found = ", ".join(f"{d.platform}:{d.id}" for d in local)
        where = "this process" if jax.process_count() > 1 else "this machine"
        raise ConfigError(f"--devices {devices}: {where} has {len(local)} {local[0].platform} device(s) ({found})")
    if count == 1 and jax.process_count() == 1:
        return SINGLE
    chosen = _first_devices_of_each_process(jax.devices(local[0].platform), count)
    mesh = keras.distribution.DeviceMesh((len(chosen),), ["batch"], np.array(chosen))
    # Each process feeds its own part of the batches (vitkit shards them), so Keras must not.
    distribution = keras.distribution.DataParallel(device_mesh=mesh, auto_shard_dataset=False)
    return Parallel(
        replicas=len(chosen), process_index=jax.process_index(), process_count=jax.process_count(),
        shard=(jax.process_index(), jax.process_count()), multiple_of=len(chosen),
        _scope=distribution.scope,
    )


def _first_devices_of_each_process(devices: list, count: int) -> list:
    """The first ``count`` devices of every process, ordered by process (the global batch's order)."""
    chosen, taken = [], {}
    for device in sorted(devices, key=lambda d: (d.process_index, d.id)):
        if taken.get(device.process_index, 0) < count:
            taken[device.process_index] = taken.get(device.process_index, 0) + 1
            chosen.append(device)
    return chosen


def _join_jax_cluster() -> None:
    """Start JAX's multi-process runtime when the environment names a coordinator (once per process)."""
    if (COORDINATOR not in os.environ and _KERAS_ADDRESSES not in os.environ) or _in_jax_cluster():
        return
    if COORDINATOR in os.environ:
        address = os.environ[COORDINATOR]
        processes, index = _environment_int(NUM_PROCESSES, 1), _environment_int(PROCESS_ID, 0)
        if index >= processes:
            raise ConfigError(f"{PROCESS_ID}={index} must be below {NUM_PROCESSES}={processes}")
        given = (address, processes, index)
    else:
        given = (None, None, None)  # Keras reads its own variables
    import keras

    try:
        keras.distribution.initialize(*given)
    except RuntimeError as error:
        if "before" not in str(error):
            raise
        raise ConfigError(
            "the environment names a training cluster, but JAX already ran in this process; start "
            "training before anything else uses JAX (the vitkit command does)"
        ) from None


def _in_jax_cluster() -> bool:
    """Whether this process has joined JAX's multi-process runtime (without starting a backend)."""
    import jax

    return bool(getattr(jax.distributed, "is_initialized", lambda: False)())


def _environment_int(name: str, minimum: int) -> int:
    text = os.environ.get(name)
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{COORDINATOR} is set, so {name} must be a whole number >= {minimum}; got {text!r}")
    return value


# TensorFlow ------------------------------------------------------------------------------------

def _plan_tensorflow(devices: int | str) -> Parallel:
    if COORDINATOR in os.environ:
        raise ConfigError(f"{COORDINATOR} joins hosts on the JAX backend; run with KERAS_BACKEND=jax (--backend jax)")
    if _tf_config_workers() > 1:
        raise ConfigError(
            "TF_CONFIG names several workers, but Keras 3 cannot train under TensorFlow's "
            "MultiWorkerMirroredStrategy (keras-team/keras#20585); train on several hosts with the JAX "
            f"backend ({COORDINATOR}, see docs/multi_device.md)"
        )
    if devices == 1:
        return SINGLE
    import tensorflow as tf

    pool = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    count = len(pool) if devices == "all" else devices
    if count > len(pool):
        found = ", ".join(_short_name(device.name) for device in pool)
        raise ConfigError(f"--devices {devices}: this machine has {len(pool)} {pool[0].device_type} device(s) ({found})")
    if count == 1:
        return SINGLE
    strategy = tf.distribute.MirroredStrategy([device.name for device in pool[:count]])
    return Parallel(replicas=strategy.num_replicas_in_sync, sync_batch_norm=True, _scope=strategy.scope)


def _tf_config_workers() -> int:
    """How many workers (chief included) ``TF_CONFIG`` names; 0 without it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0
    try:
        cluster = json.loads(text)["cluster"]
        return len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"TF_CONFIG is not a valid cluster description ({error})") from None


def _short_name(device_name: str) -> str:
    """``/job:localhost/replica:0/task:0/device:GPU:1`` -> ``GPU:1``."""
    return device_name.rsplit("device:", 1)[-1]
