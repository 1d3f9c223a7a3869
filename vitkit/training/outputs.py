"""The files of a training run, for ``--out models/NAME.weights.h5``: the best model,
``NAME.history.csv``, ``NAME.curves.png``, ``NAME.skipped.csv``, ``NAME.teacher.keras`` (the
teacher CNN of a distilled run) and, while the run is going, ``NAME.run/`` from which
``resume=True`` continues an interrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from vitkit.data.imageset import ImageSet, write_skipped
from vitkit.errors import ConfigError
from vitkit.figures import history_figure, save_figure
from vitkit.fileio import check_writable, remove_temporaries
from vitkit.training.runstate import STATE_FILE, RunKeeper


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where a run writes: ``model`` (the ``--out`` file) and the files beside it."""

    model: Path
    history: Path
    curves: Path
    skipped: Path
    run: Path
    teacher: Path

    def resume_note(self) -> str:
        """The sentence an error adds when the run has finished epochs to resume from, else ``""``."""
        return resume_note(self.run)


def output_paths(out: str | Path) -> OutputPaths:
    """The files written beside ``models/NAME.weights.h5``.

    Raises:
        ConfigError: ``out`` does not end in ``.weights.h5``.
    """
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise ConfigError(f"--out must end in .weights.h5, got {out}")
    stem = out.name[: -len(".weights.h5")]
    return OutputPaths(
        model=out,
        history=out.with_name(f"{stem}.history.csv"),
        curves=out.with_name(f"{stem}.curves.png"),
        skipped=out.with_name(f"{stem}.skipped.csv"),
        run=out.with_name(f"{stem}.run"),
        teacher=out.with_name(f"{stem}.teacher.keras"),
    )


def resume_note(run: Path) -> str:
    """The sentence an error adds when the run folder ``run`` has finished epochs to resume from, else ``""``."""
    if (run / STATE_FILE).is_file():
        return f"the finished epochs are kept: add --resume to continue ({run})"
    return ""


def prepare_outputs(paths: OutputPaths, resume: bool, overwrite: bool, writer: bool = True,
                    trains_teacher: bool = False) -> bool:
    """Check the outputs may be written; returns whether an interrupted run is continued.

    ``writer``: this process writes the outputs and clears what an earlier run left; the other
    processes of a multi-host run make the same checks (so that all stop alike) and only read.
    ``trains_teacher``: the run trains a teacher into ``paths.teacher``, which ``resume`` reuses.

    Raises:
        ConfigError: an interrupted run is there, and neither ``resume`` nor ``overwrite``.
        OutputExistsError: an output exists and neither ``resume`` (of a run) nor ``overwrite``.
    """
    checked = (paths.model, paths.history, paths.curves) + ((paths.teacher,) if trains_teacher and not resume else ())
    return prepare_run_outputs(paths.run, (paths.model, paths.history, paths.curves, paths.teacher), checked,
                               paths.skipped, resume, overwrite, writer)


def prepare_run_outputs(run: Path, written: Sequence[Path], checked: Sequence[Path], skipped: Path, resume: bool,
                        overwrite: bool, writer: bool) -> bool:
    """What :func:`prepare_outputs` does, for any run with a resume folder ``run``.

    ``written``: files whose leftover temporaries the writing process removes; ``checked``: files
    that may exist only with ``overwrite`` (besides ``skipped``, the writer's list of unreadable
    images, removed with the folder of a run that starts again).
    """
    has_state = (run / STATE_FILE).is_file()
    if writer:
        for path in written:
            remove_temporaries(path)
    if resume and has_state:
        if writer:
            for leftover in run.glob(".*.tmp*"):
                leftover.unlink(missing_ok=True)
        return True
    if resume and writer:
        print(f"no interrupted run in {run}; starting from the first epoch", file=sys.stderr)
    if has_state and not overwrite:
        raise ConfigError(f"{run} holds an interrupted run; continue it with --resume, or pass --overwrite to "
                          f"start again")
    for path in (*checked, *((skipped,) if writer else ())):
        check_writable(path, overwrite)
    if writer:
        skipped.unlink(missing_ok=True)
        shutil.rmtree(run, ignore_errors=True)
    return False


@contextlib.contextmanager
def checkpoint_path(paths: OutputPaths, writer: bool) -> Iterator[Path]:
    """The file this process keeps its best epoch in: the model file for the writing process.

    The other processes of a multi-host run keep theirs in a folder of their own, removed
    afterwards, so that every process loads the same weights the same way at the end.
    """
    if writer:
        yield paths.model
        return
    private = Path(tempfile.mkdtemp(prefix="vitkit-process-"))
    try:
        yield private / paths.model.name
    finally:
        shutil.rmtree(private, ignore_errors=True)


def write_skipped_images(path: Path, *sets: ImageSet | None) -> Path | None:
    """List the images that could not be read in ``path``; returns it, or None when none were."""
    # A validation set split off the training set shares its list: keep each row once.
    rows = list(dict.fromkeys(row for image_set in sets if image_set is not None for row in image_set.skipped))
    return write_skipped(rows, path, overwrite=True) if rows else None


def write_outputs(keeper: RunKeeper, paths: OutputPaths, writer: bool) -> None:
    """End a finished run: draw the curves (the writing process) and remove the resume state.

    The model file and ``history.csv`` were written epoch by epoch by ``keeper``.
    """
    if writer:
        save_figure(history_figure(keeper.history), paths.curves)
    keeper.finish()
