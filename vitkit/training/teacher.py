"""The teacher of a distilled run (``--teacher``): the small reference CNN trained first on the
run's own images (``cnn``), or a Keras model file.

A trained teacher is saved beside the model as ``NAME.teacher.keras``; a resumed run (and one
started again with ``--resume`` before its first epoch ended) reuses that file.

On several devices (:mod:`~vitkit.training.parallel`) the CNN trains data-parallel on the run's
devices, on the global batches of one device (where every batch must split evenly, JAX's, the
last ``images % devices`` of each epoch's order are left out), and every teacher is built or
loaded in the run's distribution, so that its weights are replicated onto each device and it
runs inside the student's distributed training step.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from vitkit.data.batches import ImageBatches, follow_epochs
from vitkit.data.imageset import ImageSet
from vitkit.device import under_policy
from vitkit.errors import ConfigError
from vitkit.fileio import atomic_output
from vitkit.models.cnn import small_cnn
from vitkit.training.parallel import SINGLE, Parallel
from vitkit.training.settings import CNN_TEACHER, check_teacher

TEACHER_LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A run's teacher: the model, its file, and the seconds its training took (None: loaded)."""

    model: keras.Model
    path: Path
    seconds: float | None = None
    best_epoch: int | None = None


def load_teacher(path: str | Path, class_names: Sequence[str], image_size: tuple[int, int],
                 parallel: Parallel = SINGLE) -> keras.Model:
    """A Keras model file that takes uint8 ``(batch, H, W, 3)`` images of the run's size and returns
    the probabilities of the run's classes (in the run's order), loaded in ``parallel``'s scope.

    Raises:
        ConfigError: the file is missing or unreadable, or its input size or class count differ.
    """
    path = Path(check_teacher(path) or path)
    try:
        with parallel.scope():
            model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds for a file it cannot read
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"teacher {path} is not a readable Keras model ({detail})") from None
    expected = (*image_size, 3)
    declared = tuple(getattr(model, "inputs", None) and model.inputs[0].shape or ())[1:]
    if declared and declared != expected:
        raise ConfigError(f"teacher {path} takes {'x'.join(map(str, declared))} images, the run's are "
                          f"{'x'.join(map(str, expected))}: use a teacher of the run's --image-size")
    probabilities = keras.ops.convert_to_numpy(model(np.zeros((1, *expected), np.uint8), training=False))
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ConfigError(f"teacher {path} predicts {probabilities.shape[-1]} classes, the run has "
                          f"{len(class_names)} ({', '.join(class_names)}): use a teacher of these classes, in this order")
    return model


def train_teacher_cnn(train: ImageSet, val: ImageSet | None, class_names: Sequence[str], image_size: tuple[int, int],
                      *, epochs: int, batch_size: int, seed: int = 0, path: str | Path | None = None,
                      overwrite: bool = False, precision: str = "float32", verbose: int = 0,
                      parallel: Parallel = SINGLE) -> Teacher:
    """Train :func:`~vitkit.models.cnn.small_cnn` on ``train`` (Adam 1e-3, its own augmentation) and
    keep the epoch of the lowest validation loss (training loss without ``val``).

    Args:
        train, val: labelled images at ``image_size``.
        class_names: the classes in output order.
        epochs, batch_size, seed: as for the run; ``batch_size`` is the global batch.
        path: where to save it (``.keras``, written atomically; by the first process only); None
            keeps it in memory only.
        overwrite: replace an existing ``path``.
        precision: the Keras dtype policy it is built under.
        verbose: Keras ``fit`` verbosity.
        parallel: the devices it trains on, and this process's shard of every batch.

    Returns:
        The trained :class:`Teacher`; ``seconds`` is the wall time of its ``fit``.
    """
    local = dict(shard=parallel.shard, multiple_of=parallel.multiple_of)
    with parallel.scope():
        model = under_policy(precision, small_cnn, len(class_names), tuple(image_size), seed)
        parallel.prepare(model)
        model.compile(optimizer=keras.optimizers.Adam(TEACHER_LEARNING_RATE),
                      loss=keras.losses.CategoricalCrossentropy(),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        batches = ImageBatches(train, parallel.local_batch_size(batch_size), list(class_names), shuffle=True,
                               seed=seed, **local)
        val_batches = (ImageBatches(val, parallel.local_batch_size(batch_size), list(class_names), **local)
                       if val is not None and len(val) else None)
        best = _BestWeights("val_loss" if val_batches is not None else "loss")
        started = time.monotonic()
        model.fit(batches, validation_data=val_batches, epochs=epochs, shuffle=False,
                  callbacks=[follow_epochs(batches), best], verbose=verbose)
        seconds = time.monotonic() - started
        if best.weights is not None:
            model.set_weights(best.weights)
    if path is not None and parallel.is_chief:
        path = Path(path)
        with atomic_output(path, overwrite=overwrite, suffix=".keras") as temporary:
            model.save(temporary)
    return Teacher(model, path, seconds, best.epoch)


class _BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest ``monitor`` (the first of equals)."""

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor
        self.best = math.inf
        self.epoch: int | None = None
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and np.isfinite(value) and value < self.best:
            self.best, self.epoch, self.weights = float(value), epoch + 1, self.model.get_weights()


def prepare_teacher(teacher: str, train: ImageSet, val: ImageSet | None, class_names: Sequence[str],
                    image_size: tuple[int, int], *, epochs: int, batch_size: int, seed: int, path: Path,
                    reuse: bool, overwrite: bool, precision: str, verbose: int = 0,
                    parallel: Parallel = SINGLE) -> Teacher:
    """The run's teacher: the model file ``teacher`` names, or for ``cnn`` the CNN saved at ``path``
    when ``reuse`` (a resumed run) finds it there, else one trained now and saved there; on
    ``parallel``'s devices (see the module).

    Raises:
        ConfigError: the processes of a multi-host run do not all find the saved CNN.
    """
    if teacher != CNN_TEACHER:
        return Teacher(load_teacher(teacher, class_names, image_size, parallel), Path(teacher))
    found = reuse and path.is_file()
    if not parallel.agree(int(found)):
        raise ConfigError(f"the training processes do not all find the teacher {path}; resuming on several "
                          f"hosts reads it on each: keep --out on a file system they share")
    if found:
        if verbose:
            print(f"teacher: {path} (trained before; reused)", file=sys.stderr)
        return Teacher(load_teacher(path, class_names, image_size, parallel), path)
    if verbose:
        print(f"teacher: training the small CNN for {epochs} epochs -> {path}", file=sys.stderr)
    return train_teacher_cnn(train, val, class_names, image_size, epochs=epochs, batch_size=batch_size, seed=seed,
                             path=path, overwrite=True, precision=precision, verbose=verbose, parallel=parallel)
