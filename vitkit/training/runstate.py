"""Training bookkeeping: best checkpoint, history, and the state an interrupted run resumes from.

After an epoch the run folder (``NAME.run/`` beside the model file) receives the model,
optimizer and random-generator variables of that epoch and then, atomically, ``state.json``
naming them; a run killed at any instant therefore resumes from the last saved epoch with the
same optimizer moments, augmentation and dropout random streams, early-stopping and
learning-rate-plateau counters, and history, and goes on as the uninterrupted run did.

An epoch's files (the best model when the epoch improved, then its state, then the history)
are written in the background (:mod:`~vitkit.training.checkpoints`) while training goes on, from
copies of the variables taken at the epoch's end. The state is taken only at an epoch whose
predecessors' writes are done, so on a disk slower than an epoch it is saved every few epochs
rather than holding up each one, and a saved state never names a best model that is not on disk
(a resumed run writes it from the run folder should it be missing). An epoch's ``seconds`` in the
history run from the end of the epoch before it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from vitkit.errors import ConfigError, WeightsError
from vitkit.fileio import atomic_output, link_in_place_of, write_text_atomic
from vitkit.models.h5layout import H5Group, write_h5
from vitkit.models.modelfile import (ModelSnapshot, copy_model, detached_copy, host_array, load_weights_only,
                                     read_metadata, snapshot_model, write_snapshot)
from vitkit.training.checkpoints import CheckpointWriter

STATE_FILE = "state.json"


VariablesSnapshot = dict[str, list[tuple[str, Any]]]
"""Groups of variables at one moment: ``{group: [(variable path, detached copy), ...]}``."""


def snapshot_variables(groups: dict[str, list]) -> VariablesSnapshot:
    """Copy groups of variables where they live, for :func:`write_variables` to write later."""
    return {name: [(variable.path, detached_copy(variable)) for variable in variables]
            for name, variables in groups.items()}


def write_variables(snapshot: VariablesSnapshot, path: Path) -> None:
    """Write a variables snapshot (by position, with the variables' paths for checking) to one H5 file."""
    groups = [H5Group(name, {}, {str(i): host_array(value) for i, (_, value) in enumerate(items)},
                      {str(i): {"path": variable_path} for i, (variable_path, _) in enumerate(items)})
              for name, items in snapshot.items()]
    with atomic_output(path, overwrite=True, suffix=".h5") as temporary:
        write_h5(temporary, groups)


def save_variables(groups: dict[str, list], path: Path) -> None:
    """Write groups of variables to one H5 file now (see :func:`write_variables`)."""
    write_variables(snapshot_variables(groups), path)


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
        self._epoch_started: float | None = None

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
        self._epoch_started = None
        if self._restored is None:
            return
        for callback in self.stateful_callbacks:
            for name, value in self._restored["callbacks"].get(type(callback).__name__, {}).items():
                setattr(callback, name, value)
        self._restored = None  # a later phase starts its counters afresh

    # Per epoch --------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        if self._epoch_started is None:  # the first epoch of a fit; later ones start where the last ended
            self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.monotonic() - self._epoch_started, 3)
        self.history.append(row)
        value = logs.get(self.monitor)
        improved = value is not None and np.isfinite(value) and value < self.best
        if improved:
            self.best, self.best_epoch = float(value), epoch + 1
        # The resume state is taken only once the writes before it are done: where the disk is
        # slower than an epoch, it is saved every few epochs instead of holding up every one.
        # Then no best model it names is still to be written but its own epoch's, written first.
        saves_state = self.writes_run and not self.checkpoints.busy
        snapshot = snapshot_model(saved_model(self.model)) if improved or saves_state else None
        writes = []
        if improved:
            writes.append((self.model_path, partial(write_snapshot, snapshot, self.model_path, overwrite=True,
                                                    extra=self._best_metadata(epoch + 1, float(value)))))
        if saves_state:
            writes.append((self.run_dir, partial(self._save_state, epoch + 1, snapshot, self._variables(),
                                                 self._state(epoch + 1), improved)))
        if self.writes_run:
            writes.append((self.history_path, partial(write_text_atomic, self.history_path,
                                                      history_csv(self.history), overwrite=True)))
        # Written while training goes on: the snapshots hold this moment's values.
        self.checkpoints.submit(writes)
        self._epoch_started = time.monotonic()

    def on_train_end(self, logs=None):
        self.wait()

    def wait(self) -> None:
        """Return once the epochs' files are on disk.

        Raises:
            OutputError: one could not be written.
        """
        self.checkpoints.wait()

    def _best_metadata(self, epoch: int, value: float) -> dict[str, Any]:
        return {**self.extra_metadata, "best_epoch": epoch, self.monitor: value}

    def _variables(self) -> VariablesSnapshot:
        return snapshot_variables({"optimizer": self.model.optimizer.variables,
                                   "random": random_state_variables(self.model)})

    def _state(self, epochs_done: int) -> dict[str, Any]:
        """What ``state.json`` says after ``epochs_done`` epochs (taken now; written later)."""
        return {
            "epochs_done": epochs_done,
            "stopped": bool(self.model.stop_training),
            "weights": f"epoch-{epochs_done:04d}.weights.h5",
            "variables": f"epoch-{epochs_done:04d}.state.h5",
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": [dict(row) for row in self.history],
            "options": self.options,
            "callbacks": {
                type(c).__name__: {k: _plain(getattr(c, k)) for k in ("wait", "best", "cooldown_counter") if hasattr(c, k)}
                for c in self.stateful_callbacks
            },
        }

    def _save_state(self, epochs_done: int, snapshot: ModelSnapshot, variables: VariablesSnapshot,
                    state: dict[str, Any], best_is_this_epoch: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        weights = self.run_dir / state["weights"]
        # The best model just written holds the same weights: linked, they are not written twice.
        if not (best_is_this_epoch and link_in_place_of(self.model_path, weights)):
            write_snapshot(snapshot, weights, overwrite=True)
        write_variables(variables, self.run_dir / state["variables"])
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
