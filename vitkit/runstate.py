"""Training bookkeeping: best checkpoint, history, and the state an interrupted run resumes from.

After every epoch the run folder (``NAME.run/`` beside the model file) receives the model and
optimizer variables of that epoch and then, atomically, ``state.json`` naming them; a run killed
at any instant therefore resumes from the last completed epoch with the same optimizer moments,
early-stopping and learning-rate-plateau counters, and history.
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

from vitkit.errors import ConfigError
from vitkit.fileio import atomic_output, write_text_atomic
from vitkit.modelfile import save_model

STATE_FILE = "state.json"


def save_optimizer(optimizer: keras.optimizers.Optimizer, path: Path) -> None:
    """Write the optimizer's variables (by position, with their paths for checking)."""
    with atomic_output(path, overwrite=True, suffix=".h5") as temporary:
        with h5py.File(temporary, "w") as handle:
            for i, variable in enumerate(optimizer.variables):
                dataset = handle.create_dataset(str(i), data=keras.ops.convert_to_numpy(variable))
                dataset.attrs["path"] = variable.path


def load_optimizer(optimizer: keras.optimizers.Optimizer, trainable: list, path: Path) -> None:
    """Restore variables written by :func:`save_optimizer` into an optimizer for ``trainable``."""
    if not optimizer.built:
        optimizer.build(trainable)
    with h5py.File(path, "r") as handle:
        if len(handle) != len(optimizer.variables):
            raise ConfigError(
                f"{path}: optimizer state has {len(handle)} variables, this run has "
                f"{len(optimizer.variables)}; the options differ from the interrupted run"
            )
        for i, variable in enumerate(optimizer.variables):
            value = handle[str(i)][()]
            if tuple(value.shape) != tuple(variable.shape):
                raise ConfigError(f"{path}: optimizer variable {variable.path} has another shape; options differ")
            variable.assign(value)


class RunKeeper(keras.callbacks.Callback):
    """Saves the best model, the per-epoch resume state and ``history.csv``.

    Put it last in the callback list: on resume it restores the counters of the early-stopping
    and plateau callbacks after they reset themselves in ``on_train_begin``.
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
    ):
        super().__init__()
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
        self._restored: dict[str, Any] | None = None
        self._epoch_started = 0.0

    # Resume -----------------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any] | None:
        """The saved state of an interrupted run with the same options, or None if there is none."""
        state_path = self.run_dir / STATE_FILE
        if not state_path.is_file():
            return None
        state = json.loads(state_path.read_text())
        if state["options"] != self.options:
            changed = sorted(k for k in set(state["options"]) | set(self.options)
                             if state["options"].get(k) != self.options.get(k))
            raise ConfigError(
                f"{self.run_dir} holds an interrupted run with other options ({', '.join(changed)}); "
                f"resume with the same options, or delete that folder to start again"
            )
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.history = state["history"]
        self._restored = state
        return state

    def restore_into(self, model: keras.Model, state: dict[str, Any]) -> None:
        """Load the saved epoch's weights and optimizer variables into a compiled model."""
        model.load_weights(self.run_dir / state["weights"])
        load_optimizer(model.optimizer, model.trainable_variables, self.run_dir / state["optimizer"])

    def on_train_begin(self, logs=None):
        if self._restored is None:
            return
        for callback in self.stateful_callbacks:
            for name, value in self._restored["callbacks"].get(type(callback).__name__, {}).items():
                setattr(callback, name, value)

    # Per epoch --------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.monotonic() - self._epoch_started, 3)
        self.history.append(row)
        value = logs.get(self.monitor)
        if value is not None and np.isfinite(value) and value < self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            save_model(self.model, self.model_path, overwrite=True,
                       extra={**self.extra_metadata, "best_epoch": epoch + 1, self.monitor: float(value)})
        self._save_state(epoch + 1)
        write_text_atomic(self.history_path, history_csv(self.history), overwrite=True)

    def _save_state(self, epochs_done: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        weights = f"epoch-{epochs_done:04d}.weights.h5"
        optimizer = f"epoch-{epochs_done:04d}.optimizer.h5"
        save_model(self.model, self.run_dir / weights, overwrite=True)
        save_optimizer(self.model.optimizer, self.run_dir / optimizer)
        state = {
            "epochs_done": epochs_done,
            "weights": weights,
            "optimizer": optimizer,
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
