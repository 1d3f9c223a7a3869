"""Training bookkeeping: best checkpoint, history, and the state an interrupted run resumes from.

After every epoch the run folder (``NAME.run/`` beside the model file) receives the model,
optimizer and random-generator variables of that epoch and then, atomically, ``state.json``
naming them; a run killed at any instant therefore resumes from the last completed epoch with the
same optimizer moments, augmentation and dropout random streams, early-stopping and
learning-rate-plateau counters, and history.

The best model is written in the background (:mod:`~vitkit.training.checkpoints`), after the
epoch's state. The write of an earlier epoch is always finished before a state is saved, so the
only best model a saved state may name without it being on disk yet is that of its own epoch,
whose weights the run folder holds: a resumed run writes it from there.

A model trained through a wrapper (distillation's, whose ``student`` is the classifier) is saved
as its classifier alone: the best model and the epochs' weights are the student's; the
optimizer and random-generator variables are the wrapper's (the student's and the teacher's).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from vitkit.errors import ConfigError, WeightsError
from vitkit.fileio import atomic_output, write_text_atomic
from vitkit.models.modelfile import (ModelSnapshot, copy_model, load_weights_only, read_metadata, snapshot_model,
                                     write_snapshot)
from vitkit.training.checkpoints import CheckpointWriter

STATE_FILE = "state.json"


def save_variables(groups: dict[str, list], path: Path) -> None:
    """Write groups of variables (by position, with their paths for checking) to one H5 file."""
    with atomic_output(path, overwrite=True, suffix=".h5") as temporary:
        with h5py.File(temporary, "w") as handle:
            for group_name, variables in groups.items():
                group = handle.create_group(group_name)
                for i, variable in enumerate(variables):
                    dataset = group.create_dataset(str(i), data=keras.ops.convert_to_numpy(variable))
                    dataset.attrs["path"] = variable.path


def load_variables(groups: dict[str, list], path: Path) -> None:
    """Restore variables written by :func:`save_variables`; every group must match in count and shape."""
    with h5py.File(path, "r") as handle:
        for group_name, variables in groups.items():
            saved = handle[group_name]
            if len(saved) != len(variables):
                raise ConfigError(
                    f"{path}: {group_name} state has {len(saved)} variables, this run has "
                    f"{len(variables)}; the options differ from the interrupted run"
                )
            for i, variable in enumerate(variables):
                value = saved[str(i)][()]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ConfigError(f"{path}: {group_name} variable {variable.path} has another shape; options differ")
                variable.assign(value)


def saved_model(model: keras.Model) -> keras.Model:
    """The classifier whose weights a run saves: ``model``, or the ``student`` of a training wrapper."""
    return getattr(model, "student", model)


def random_state_variables(model: keras.Model) -> list:
    """Variables that ``save_weights`` leaves out but a resumed run needs: random-generator states.

    Augmentation and dropout layers draw from seed generators whose counters advance every
    step; restoring them makes the epochs after a resume see the same random draws as an
    uninterrupted run.
    """
    saved = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in saved]


def read_run_state(run_dir: Path, options: dict[str, Any], files: tuple[str, ...]) -> dict[str, Any] | None:
    """The ``state.json`` an interrupted run left in ``run_dir``, or None if there is none.

    ``files``: the state's keys that name files of ``run_dir``, which must be there.

    Raises:
        ConfigError: the state is damaged, lacks a file, or was saved with other ``options``.
    """
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text())
        missing = [state[key] for key in files if not (run_dir / state[key]).is_file()]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{state_path} is damaged ({error}); delete {run_dir} or pass --overwrite to start again"
        ) from None
    if missing:
        raise ConfigError(f"{run_dir} lacks {', '.join(missing)}; delete that folder or pass --overwrite to start again")
    if state["options"] != options:
        changed = sorted(k for k in set(state["options"]) | set(options)
                         if state["options"].get(k) != options.get(k))
        raise ConfigError(
            f"{run_dir} holds an interrupted run with other options ({', '.join(changed)}); "
            f"resume with the same options, or delete that folder to start again"
        )
    return state


class RunKeeper(keras.callbacks.Callback):
    """Saves the best model, the per-epoch resume state and ``history.csv``.

    Put it last in the callback list: on resume it restores the counters of the early-stopping
    and plateau callbacks after they reset themselves in ``on_train_begin``.

    ``writes_run=False`` (the other processes of a multi-host run): only the best model is
    written, to ``model_path``; the resume state and history are the first process's, and
    ``run_dir`` is only read.

    The best model is written by ``checkpoints`` (in the background by default); :meth:`wait`
    returns once it is on disk. A fit ends with it on disk; after an error, call :meth:`wait`.
    """

    def __init__(
        self,
        model_path: Path,
        run_dir: Path,
        history_path: Path,
        monitor: str,
        options: dict[str, Any],
        stateful_callbacks: list[keras.callbacks.Callback],
        extra_metadata: dict[str, Any] | None = None,
        writes_run: bool = True,
        checkpoints: CheckpointWriter | None = None,
    ):
        super().__init__()
        self.writes_run = writes_run
        self.model_path = model_path
        self.run_dir = run_dir
        self.history_path = history_path
        self.monitor = monitor
        self.options = options
        self.stateful_callbacks = stateful_callbacks
        self.extra_metadata = extra_metadata or {}
        self.best = math.inf
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self.checkpoints = checkpoints or CheckpointWriter()
        self._restored: dict[str, Any] | None = None
        self._epoch_started = 0.0

    # Resume -----------------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any] | None:
        """The saved state of an interrupted run with the same options, or None if there is none."""
        state = read_run_state(self.run_dir, self.options, ("weights", "variables"))
        if state is None:
            return None
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.history = state["history"]
        self._restored = state
        self._recover_best_model(state)
        return state

    def _recover_best_model(self, state: dict[str, Any]) -> None:
        """Write the best model from the run folder if the run was killed before it was on disk."""
        if state["best_epoch"] is None or state["best_epoch"] != state["epochs_done"]:
            return
        try:
            if (read_metadata(self.model_path) or {}).get("best_epoch") == state["best_epoch"]:
                return
        except WeightsError:  # not there (or not readable): written again below
            pass
        try:
            copy_model(self.run_dir / state["weights"], self.model_path, overwrite=True,
                       extra=self._best_metadata(state["best_epoch"], state["best"]))
        except (OSError, WeightsError) as error:
            raise self._damaged(error) from None

    def _damaged(self, error: BaseException) -> ConfigError:
        return ConfigError(
            f"{self.run_dir} is damaged ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            f"delete that folder or pass --overwrite to start again"
        )

    def restore_into(self, model: keras.Model, state: dict[str, Any], within_phase: bool = True) -> None:
        """Load the saved epoch's weights and random-generator states into a compiled model.

        ``within_phase``: the run stopped inside a training phase, so the optimizer variables
        (moments, step, learning rate) and the early-stopping and plateau counters continue too.
        A new phase (after the frozen-backbone epochs) starts them afresh, as an uninterrupted
        run does.
        """
        groups = {"random": random_state_variables(model)}
        if within_phase:
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            groups["optimizer"] = model.optimizer.variables
        try:
            load_weights_only(saved_model(model), self.run_dir / state["weights"])
            load_variables(groups, self.run_dir / state["variables"])
        except (OSError, KeyError, ValueError) as error:
            raise self._damaged(error) from None
        if not within_phase:
            self._restored = None

    def on_train_begin(self, logs=None):
        if self._restored is None:
            return
        for callback in self.stateful_callbacks:
            for name, value in self._restored["callbacks"].get(type(callback).__name__, {}).items():
                setattr(callback, name, value)
        self._restored = None  # a later phase starts its counters afresh

    # Per epoch --------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        # The best model of an earlier epoch must be on disk before a state that names it is.
        self.checkpoints.wait()
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.monotonic() - self._epoch_started, 3)
        self.history.append(row)
        value = logs.get(self.monitor)
        improved = value is not None and np.isfinite(value) and value < self.best
        if improved:
            self.best, self.best_epoch = float(value), epoch + 1
        snapshot = snapshot_model(saved_model(self.model)) if improved or self.writes_run else None
        if self.writes_run:
            self._save_state(epoch + 1, snapshot)
            write_text_atomic(self.history_path, history_csv(self.history), overwrite=True)
        if improved:
            # Last, so that it overlaps the next epoch rather than this epoch's own writes.
            self.checkpoints.write(snapshot, self.model_path, extra=self._best_metadata(epoch + 1, float(value)))

    def on_train_end(self, logs=None):
        self.wait()

    def wait(self) -> None:
        """Return once the best model is on disk.

        Raises:
            OutputError: it could not be written.
        """
        self.checkpoints.wait()

    def _best_metadata(self, epoch: int, value: float) -> dict[str, Any]:
        return {**self.extra_metadata, "best_epoch": epoch, self.monitor: value}

    def _save_state(self, epochs_done: int, snapshot: ModelSnapshot) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        weights = f"epoch-{epochs_done:04d}.weights.h5"
        variables = f"epoch-{epochs_done:04d}.state.h5"
        write_snapshot(snapshot, self.run_dir / weights, overwrite=True)
        save_variables({"optimizer": self.model.optimizer.variables,
                        "random": random_state_variables(self.model)}, self.run_dir / variables)
        state = {
            "epochs_done": epochs_done,
            "stopped": bool(self.model.stop_training),
            "weights": weights,
            "variables": variables,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "options": self.options,
            "callbacks": {
                type(c).__name__: {k: _plain(getattr(c, k)) for k in ("wait", "best", "cooldown_counter") if hasattr(c, k)}
                for c in self.stateful_callbacks
            },
        }
        write_text_atomic(self.run_dir / STATE_FILE, json.dumps(state, indent=1), overwrite=True)
        for old in self.run_dir.glob("epoch-*"):
            if not old.name.startswith(f"epoch-{epochs_done:04d}."):
                old.unlink(missing_ok=True)

    def finish(self) -> None:
        """Remove the resume state after a run that ended normally."""
        if self.writes_run:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, (np.floating, float)) else int(value) if isinstance(value, (np.integer, int)) else value


def history_csv(history: list[dict[str, float]]) -> str:
    """History rows as CSV text, columns in first-seen order."""
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()
