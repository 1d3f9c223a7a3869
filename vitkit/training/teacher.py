"""The teacher of a distilled run (``--teacher``): the small reference CNN trained first on the
run's own images (``cnn``), or a Keras model file.

A trained teacher is saved beside the model as ``NAME.teacher.keras``; a resumed run (and one
started again with ``--resume`` before its first epoch ended) reuses that file.
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

from vitkit.data.batches import ImageBatches, ImageSet, follow_epochs
from vitkit.device import under_policy
from vitkit.errors import ConfigError
from vitkit.fileio import atomic_output
from vitkit.models.cnn import small_cnn
from vitkit.training.settings import CNN_TEACHER, check_teacher

TEACHER_LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A run's teacher: the model, its file, and the seconds its training took (None: loaded)."""

    model: keras.Model
    path: Path
    seconds: float | None = None
    best_epoch: int | None = None


def load_teacher(path: str | Path, class_names: Sequence[str], image_size: tuple[int, int]) -> keras.Model:
    """A Keras model file that takes uint8 ``(batch, H, W, 3)`` images of the run's size and returns
    the probabilities of the run's classes (in the run's order).

    Raises:
        ConfigError: the file is missing or unreadable, or its input size or class count differ.
    """
    path = Path(check_teacher(path) or path)
    try:
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
                      overwrite: bool = False, precision: str = "float32", verbose: int = 0) -> Teacher:
    """Train :func:`~vitkit.models.cnn.small_cnn` on ``train`` (Adam 1e-3, its own augmentation) and
    keep the epoch of the lowest validation loss (training loss without ``val``).

    Args:
        train, val: labelled images at ``image_size``.
        class_names: the classes in output order.
        epochs, batch_size, seed: as for the run.
        path: where to save it (``.keras``, written atomically); None keeps it in memory only.
        overwrite: replace an existing ``path``.
        precision: the Keras dtype policy it is built under.
        verbose: Keras ``fit`` verbosity.

    Returns:
        The trained :class:`Teacher`; ``seconds`` is the wall time of its ``fit``.
    """
    model = under_policy(precision, small_cnn, len(class_names), tuple(image_size), seed)
    model.compile(optimizer=keras.optimizers.Adam(TEACHER_LEARNING_RATE),
                  loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    batches = ImageBatches(train, batch_size, list(class_names), shuffle=True, seed=seed)
    val_batches = ImageBatches(val, batch_size, list(class_names)) if val is not None and len(val) else None
    best = _BestWeights("val_loss" if val_batches is not None else "loss")
    started = time.monotonic()
    model.fit(batches, validation_data=val_batches, epochs=epochs, shuffle=False,
              callbacks=[follow_epochs(batches), best], verbose=verbose)
    seconds = time.monotonic() - started
    if best.weights is not None:
        model.set_weights(best.weights)
    if path is not None:
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
                    reuse: bool, overwrite: bool, precision: str, verbose: int = 0) -> Teacher:
    """The run's teacher: the model file ``teacher`` names, or for ``cnn`` the CNN saved at ``path``
    when ``reuse`` (a resumed run) finds it there, else one trained now and saved there."""
    if teacher != CNN_TEACHER:
        return Teacher(load_teacher(teacher, class_names, image_size), Path(teacher))
    if reuse and path.is_file():
        if verbose:
            print(f"teacher: {path} (trained before; reused)", file=sys.stderr)
        return Teacher(load_teacher(path, class_names, image_size), path)
    if verbose:
        print(f"teacher: training the small CNN for {epochs} epochs -> {path}", file=sys.stderr)
    return train_teacher_cnn(train, val, class_names, image_size, epochs=epochs, batch_size=batch_size, seed=seed,
                             path=path, overwrite=True, precision=precision, verbose=verbose)
