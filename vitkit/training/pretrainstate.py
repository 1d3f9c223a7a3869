"""The files of a pre-training run and the callback that writes them.

For ``--out models/NAME.backbone.weights.h5``: the backbone file (written after every epoch, so
the latest epoch's backbone is always on disk), ``NAME.backbone.history.csv`` (the loss per
epoch), ``NAME.backbone.skipped.csv`` (unreadable images) and, while the run is going,
``NAME.backbone.run/`` (named apart from the files of ``vitkit train --out models/NAME.weights.h5``,
the usual next step): after every
epoch the model's variables (backbone, decoder, random-generator states) and the optimizer's
in one H5 file, then, atomically, ``state.json`` naming it. A run killed at any instant resumes
from its last completed epoch with the same optimizer moments and random streams.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import keras

from vitkit.errors import ConfigError
from vitkit.fileio import write_text_atomic
from vitkit.models.backbonefile import BACKBONE_SUFFIX, write_backbone_file
from vitkit.training.outputs import prepare_run_outputs, resume_note
from vitkit.training.runstate import STATE_FILE, history_csv, load_variables, read_run_state, save_variables


@dataclasses.dataclass(frozen=True)
class PretrainPaths:
    """Where a pre-training run writes: ``backbone`` (the ``--out`` file) and the files beside it."""

    backbone: Path
    history: Path
    skipped: Path
    run: Path

    def resume_note(self) -> str:
        """The sentence an error adds when the run has finished epochs to resume from, else ``""``."""
        return resume_note(self.run)


def pretrain_paths(out: str | Path) -> PretrainPaths:
    """The files written beside ``models/NAME.backbone.weights.h5``: ``NAME.backbone.history.csv``...

    Raises:
        ConfigError: ``out`` does not end in ``.backbone.weights.h5``.
    """
    out = Path(out)
    if not out.name.endswith(BACKBONE_SUFFIX):
        raise ConfigError(f"--out must end in {BACKBONE_SUFFIX} (e.g. models/photos{BACKBONE_SUFFIX}), got {out}")
    stem = out.name[: -len(".weights.h5")]
    return PretrainPaths(out, out.with_name(f"{stem}.history.csv"), out.with_name(f"{stem}.skipped.csv"),
                         out.with_name(f"{stem}.run"))


def prepare_pretrain_outputs(paths: PretrainPaths, resume: bool, overwrite: bool, writer: bool = True) -> bool:
    """Check the outputs may be written; returns whether an interrupted run is continued.

    Raises:
        ConfigError: an interrupted run is there, and neither ``resume`` nor ``overwrite``.
        OutputExistsError: an output exists and neither ``resume`` (of a run) nor ``overwrite``.
    """
    outputs = (paths.backbone, paths.history)
    return prepare_run_outputs(paths.run, outputs, outputs, paths.skipped, resume, overwrite, writer)


class PretrainKeeper(keras.callbacks.Callback):
    """After every epoch: the resume state, ``history.csv`` and the backbone file.

    ``options``: the run's settings (:meth:`~vitkit.training.pretrainsettings.PretrainSettings.record`),
    which a resumed run must repeat; ``metadata``: what the backbone file records besides them.
    ``writes=False`` (the other processes of a multi-host run) writes nothing.
    """

    def __init__(self, paths: PretrainPaths, options: dict[str, Any], metadata: dict[str, Any], writes: bool = True):
        super().__init__()
        self.paths = paths
        self.options = options
        self.metadata = metadata
        self.writes = writes
        self.history: list[dict[str, float]] = []
        self._epoch_started = 0.0

    def load_state(self) -> dict[str, Any] | None:
        """The saved state of an interrupted run with the same options, or None if there is none."""
        state = read_run_state(self.paths.run, self.options, ("variables",))
        if state is not None:
            self.history = state["history"]
        return state

    def restore_into(self, model: keras.Model, state: dict[str, Any]) -> None:
        """Load the saved epoch's model and optimizer variables into a compiled model."""
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            load_variables(_groups(model), self.paths.run / state["variables"])
        except (OSError, KeyError, ValueError) as error:
            raise ConfigError(f"{self.paths.run} is damaged ({error}); delete that folder or pass --overwrite "
                              f"to start again") from None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.monotonic() - self._epoch_started, 3)
        self.history.append(row)
        if not math.isfinite(row.get("loss", math.nan)):
            self.model.stop_training = True
            return
        if not self.writes:
            return
        self._save_state(epoch + 1)
        write_text_atomic(self.paths.history, history_csv(self.history), overwrite=True)
        self.write_backbone(self.model)

    def write_backbone(self, model: keras.Model) -> None:
        """Write ``model``'s backbone to the output file, with the epochs done and the last loss."""
        if not self.writes:
            return
        last = self.history[-1] if self.history else {}
        write_backbone_file(model.backbone, self.paths.backbone, {
            **self.metadata, "pretraining": self.options, "epochs_done": last.get("epoch", 0),
            "loss": last.get("loss")}, overwrite=True)

    def _save_state(self, epochs_done: int) -> None:
        self.paths.run.mkdir(parents=True, exist_ok=True)
        variables = f"epoch-{epochs_done:04d}.state.h5"
        save_variables(_groups(self.model), self.paths.run / variables)
        state = {"epochs_done": epochs_done, "variables": variables, "history": self.history, "options": self.options}
        write_text_atomic(self.paths.run / STATE_FILE, json.dumps(state, indent=1), overwrite=True)
        for old in self.paths.run.glob("epoch-*"):
            if old.name != variables:
                old.unlink(missing_ok=True)

    def finish(self) -> None:
        """Remove the resume state after a run that ended normally."""
        if self.writes:
            shutil.rmtree(self.paths.run, ignore_errors=True)


def _groups(model: keras.Model) -> dict[str, list]:
    return {"model": model.variables, "optimizer": model.optimizer.variables}
