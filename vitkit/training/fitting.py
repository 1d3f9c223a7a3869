"""Fitting a run's model: compiled for each training phase (frozen backbone, then all) and fit
with the callbacks that stop early, lower the learning rate on plateaus and keep the run's
state (best model, history, resume state). The model fit is the classifier, or the
:class:`~vitkit.training.distill.Distiller` that trains it from a teacher."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import keras

from vitkit.data.batches import follow_epochs
from vitkit.device import is_out_of_memory, out_of_memory_error
from vitkit.errors import ConfigError
from vitkit.models.classifier import ImageClassifier
from vitkit.training.distill import Distiller, MeanHeadAccuracy
from vitkit.training.outputs import OutputPaths
from vitkit.training.parallel import Parallel
from vitkit.training.runstate import RunKeeper
from vitkit.training.settings import RunSettings


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs ``start`` (0-based) up to ``end`` of a run, with the backbone trained or frozen."""

    start: int
    end: int
    backbone_trainable: bool


def phases(settings: RunSettings) -> list[Phase]:
    """The frozen-backbone epochs (possibly none), then the epochs that train everything."""
    frozen = min(settings.freeze_backbone_epochs, settings.epochs)
    return [Phase(0, frozen, False), Phase(frozen, settings.epochs, True)]


@dataclasses.dataclass(frozen=True)
class Callbacks:
    """The callbacks of a run. ``stateful`` (early stopping, and plateau reduction with the
    constant schedule) hold counters that the resume state keeps; ``keeper`` writes the outputs."""

    early_stopping: keras.callbacks.EarlyStopping
    stateful: list[keras.callbacks.Callback]
    keeper: RunKeeper

    def for_fit(self, batches: keras.utils.PyDataset) -> list[keras.callbacks.Callback]:
        """In the order ``fit`` needs them: the keeper last (see :class:`RunKeeper`)."""
        return [follow_epochs(batches), *self.stateful, self.keeper]


def make_callbacks(settings: RunSettings, paths: OutputPaths, model_path: Path, validated: bool,
                   writes_run: bool = True) -> Callbacks:
    """The callbacks of a run that monitors the validation loss (``validated``), else the training loss.

    ``model_path``: where the best epoch goes (see :func:`~vitkit.training.outputs.checkpoint_path`);
    ``writes_run``: whether this process writes the resume state and history.
    """
    monitor = "val_loss" if validated else "loss"
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, patience=settings.patience or settings.epochs + 1)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                patience=settings.reduce_lr_patience, min_lr=1e-7)
    stateful = [early_stopping] + ([plateau] if settings.schedule == "constant" else [])
    options = settings.record()
    keeper = RunKeeper(model_path, paths.run, paths.history, monitor, options, stateful,
                       extra_metadata={"training": options}, writes_run=writes_run)
    return Callbacks(early_stopping, stateful, keeper)


def compile_phase(model: ImageClassifier | Distiller, settings: RunSettings, phase: Phase,
                  steps_per_epoch: int) -> None:
    """Freeze or unfreeze the backbone and compile with a fresh optimizer for ``phase``."""
    model.backbone.trainable = phase.backbone_trainable
    optimizer = make_optimizer(settings, settings.epochs - phase.start, steps_per_epoch)
    if isinstance(model, Distiller):  # its own loss (compute_loss)
        model.compile(optimizer=optimizer, metrics=[MeanHeadAccuracy(model.num_classes)])
        return
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def make_optimizer(settings: RunSettings, epochs: int, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam or AdamW at the settings' learning rate, constant or cosine-decayed over ``epochs``."""
    rate: float | keras.optimizers.schedules.LearningRateSchedule = settings.learning_rate
    if settings.schedule == "cosine":
        warmup = settings.warmup_epochs * steps_per_epoch
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else settings.learning_rate,
            decay_steps=max(epochs * steps_per_epoch - warmup, 1),
            warmup_target=settings.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if settings.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=settings.weight_decay)
    return keras.optimizers.Adam(learning_rate=rate)


def fit(model: ImageClassifier | Distiller, batches: keras.utils.PyDataset, val_batches: keras.utils.PyDataset | None,
        settings: RunSettings, callbacks: Callbacks, *, paths: OutputPaths, parallel: Parallel, resuming: bool,
        precision: str, verbose: int | None = None) -> RunKeeper:
    """Train ``model`` phase by phase, continuing the interrupted run when ``resuming``.

    Returns the run's bookkeeping: history and best epoch, whose weights are in its model file.

    Raises:
        KeyboardInterrupt: interrupted, with the way to resume.
        ResourceError: out of memory, with what to change.
        ConfigError: no epoch gave a finite loss, or the processes of a multi-host run disagree
            about the interrupted run.
    """
    keeper = callbacks.keeper
    state = keeper.load_state() if resuming else None
    done = state["epochs_done"] if state else 0
    if state and state.get("stopped"):
        done = settings.epochs
    if not parallel.agree(done if state else -1):
        raise ConfigError(
            f"the training processes do not all find the interrupted run in {paths.run}; resuming on "
            f"several hosts reads it on each: keep --out on a file system they share"
        )
    try:
        try:
            _fit_phases(model, batches, val_batches, settings, callbacks, state, done,
                        verbose=verbosity(verbose) if parallel.is_chief else 0)
        finally:
            keeper.wait()  # however the fit ended, the best model in flight is on disk (or its error raised)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"training interrupted; continue it with --resume (state in {paths.run})") from None
    except Exception as error:
        if is_out_of_memory(error):
            raise out_of_memory_error(settings.batch_size, precision, paths.resume_note()) from None
        raise

    if keeper.best_epoch is None:
        raise ConfigError(f"training produced no finite {keeper.monitor}; lower the learning rate "
                          f"({settings.learning_rate})")
    return keeper


def _fit_phases(model: ImageClassifier | Distiller, batches: keras.utils.PyDataset, val_batches: keras.utils.PyDataset | None,
                settings: RunSettings, callbacks: Callbacks, state: dict | None, done: int, verbose: int) -> None:
    """The phases not yet done: compiled afresh, restored from ``state`` where it left off, fit."""
    for phase in phases(settings):
        if phase.end <= phase.start or done >= phase.end:
            continue
        compile_phase(model, settings, phase, len(batches))
        if state and done >= phase.start:
            callbacks.keeper.restore_into(model, state, within_phase=done > phase.start)
        # The batch order is the stream's own (seeded per epoch); Keras' shuffle would
        # reorder batches with the global random module and break resumed runs.
        model.fit(
            batches, validation_data=val_batches, epochs=phase.end, initial_epoch=max(phase.start, done),
            shuffle=False, callbacks=callbacks.for_fit(batches), verbose=verbose,
        )
        done = phase.end
        if callbacks.early_stopping.stopped_epoch:
            break


def verbosity(verbose: int | None) -> int:
    """Keras verbosity: as given, else a progress bar on a terminal and a line per epoch otherwise."""
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2
