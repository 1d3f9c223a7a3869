"""An epoch's files written in the background: the same file as a synchronous write, a kill
mid-write keeps the previous one whole, writer errors reach the training thread, newer writes
replace pending ones, and a run killed amid the writes resumes to the straight run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from conftest import ROOT, TINY_BACKBONE, make_photo_tree
from vitkit.data.manifestbuild import build_manifests
from vitkit.errors import OutputError
from vitkit.models import modelfile
from vitkit.models.modelfile import load_model, read_metadata, snapshot_model, write_snapshot
from vitkit.training import runstate
from vitkit.training.checkpoints import CheckpointWriter
from vitkit.training.runstate import RunKeeper
from vitkit.training.train import train

PLAIN = dict(recipe="plain", backbone="vit_micro", weights="none", image_size=32, batch_size=8, verbose=0,
             augment=False, **TINY_BACKBONE)


def h5_contents(path: Path) -> dict[str, tuple]:
    """Every group and dataset of an H5 file: its attributes and, for datasets, dtype and values."""
    with h5py.File(path, "r") as handle:
        found = {"/": (dict(handle.attrs),)}

        def visit(name, item):
            attrs = {k: item.attrs[k] for k in item.attrs}
            found[name] = (attrs, item.dtype.str, item[()].tobytes()) if isinstance(item, h5py.Dataset) else (attrs,)
        handle.visititems(visit)
    return found


def write_with(writer: CheckpointWriter, snapshot, path: Path, extra=None) -> None:
    """Hand ``writer`` the write of one model file."""
    writer.submit([(path, partial(write_snapshot, snapshot, path, overwrite=True, extra=extra))])


@pytest.fixture
def trained(tiny_model):
    """A tiny compiled model after one step (so that it has an optimizer the file leaves out)."""
    model = tiny_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), np.eye(3)[[0, 1, 2] * 2],
              verbose=0)
    return model


def test_background_checkpoint_is_the_synchronous_file_and_holds_the_weights_of_its_moment(trained, tmp_path):
    images = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    expected = trained.predict(images, verbose=0)
    extra = {"best_epoch": 3, "val_loss": 0.5}
    snapshot = snapshot_model(trained)
    # Keras' own file of the same weights: the reference layout (groups, names, values; no optimizer).
    keras.saving.save_weights(trained, tmp_path / "keras.weights.h5", objects_to_skip=[trained.optimizer])
    writer = CheckpointWriter()
    write_with(writer, snapshot, tmp_path / "background.weights.h5", extra)
    for variable in trained.weights:  # training goes on while the file is written
        variable.assign(keras.ops.zeros_like(variable))
    writer.wait()
    write_with(CheckpointWriter(background=False), snapshot, tmp_path / "sync.weights.h5", extra)

    background, sync = h5_contents(tmp_path / "background.weights.h5"), h5_contents(tmp_path / "sync.weights.h5")
    assert background == sync
    assert read_metadata(tmp_path / "background.weights.h5")["best_epoch"] == 3
    np.testing.assert_array_equal(load_model(tmp_path / "background.weights.h5").predict(images, verbose=0), expected)
    reference = h5_contents(tmp_path / "keras.weights.h5")
    assert {k: v for k, v in background.items() if k != "/"} == {k: v for k, v in reference.items() if k != "/"}

    later = snapshot_model(trained)  # a later snapshot reads the variables afresh
    zeros = [value for _, _, values in later.groups for value in values.values()]
    assert len(zeros) == len(trained.weights) and not any(np.asarray(value).any() for value in zeros)


def test_a_failed_write_is_raised_in_the_training_thread_and_keeps_the_previous_file(trained, tmp_path, monkeypatch):
    path = tmp_path / "m.weights.h5"
    write_snapshot(snapshot_model(trained), path, extra={"best_epoch": 1})
    before = h5_contents(path)

    write = modelfile.write_h5

    def broken(*args, **kwargs):
        write(*args, **kwargs)  # fails after the weights went to the temporary file
        raise RuntimeError("the disk went away\nsecond line")

    monkeypatch.setattr(modelfile, "write_h5", broken)
    writer = CheckpointWriter()
    write_with(writer, snapshot_model(trained), path, {"best_epoch": 2})
    with pytest.raises(OutputError, match=r"the checkpoint .*m\.weights\.h5 was not written \(RuntimeError: the disk "
                                          r"went away\); the previous one is kept") as caught:
        writer.wait()
    assert isinstance(caught.value.__cause__, RuntimeError)
    writer.wait()  # reported once
    assert h5_contents(path) == before and [p.name for p in tmp_path.iterdir()] == ["m.weights.h5"]

    monkeypatch.undo()
    write_with(writer, snapshot_model(trained), tmp_path / "m.weights.h5" / "x.weights.h5")  # a file in the way
    while writer.busy:
        time.sleep(0.01)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_with(writer, snapshot_model(trained), path)  # the next write reports the one before


def test_writes_submitted_while_others_are_in_flight_wait_and_the_newest_of_a_file_wins(tmp_path):
    done, release = [], threading.Event()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"

    def write(name, block=False):
        def run():
            if block:
                release.wait(30)
            done.append(name)
        return run

    writer = CheckpointWriter()
    writer.submit([(a, write("a1", block=True)), (b, write("b1"))])
    assert writer.busy
    writer.submit([(b, write("b2")), (c, write("c2"))])
    writer.submit([(b, write("b3"))])  # replaces b2, keeps its place before c2
    assert done == [] and writer.busy
    release.set()
    writer.wait()
    assert done == ["a1", "b1", "b3", "c2"] and not writer.busy


def test_a_failed_write_drops_the_writes_after_it_and_those_pending(tmp_path):
    done, release = [], threading.Event()

    def fail():
        release.wait(30)
        raise OSError(errno.EIO, "Input/output error")

    writer = CheckpointWriter()
    writer.submit([(tmp_path / "a", fail), (tmp_path / "b", lambda: done.append("b"))])
    writer.submit([(tmp_path / "c", lambda: done.append("c"))])
    release.set()
    with pytest.raises(OutputError, match=r"checkpoint .*a was not written \(OSError: .*Input/output error\)"):
        writer.wait()
    assert done == [] and not writer.busy
    writer.submit([(tmp_path / "d", lambda: done.append("d"))])  # the writer goes on afterwards
    writer.wait()
    assert done == ["d"]


@pytest.fixture
def lists(tmp_path) -> list[Path]:
    make_photo_tree(tmp_path / "photos", per_class=8, size=32)
    build_manifests(tmp_path / "photos", tmp_path / "lists", 0.25, 0.0)
    return [tmp_path / "lists" / "train.csv", tmp_path / "lists" / "val.csv"]


def test_disk_full_during_a_background_write_stops_training_with_a_clear_error(lists, tmp_path, monkeypatch):
    write = modelfile.write_h5
    state = tmp_path / "m.run" / "state.json"

    def full_after_the_first_state(path, *args, **kwargs):
        if state.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, *args, **kwargs)

    monkeypatch.setattr(modelfile, "write_h5", full_after_the_first_state)
    monkeypatch.setattr(runstate, "write_h5", full_after_the_first_state)
    with pytest.raises(OutputError, match=r"cannot write .*\.h5: No space left on device; choose another place"):
        train(*lists, out=tmp_path / "m.weights.h5", epochs=3, **PLAIN)
    assert json.loads(state.read_text())["epochs_done"] == 1  # the finished epoch is kept for --resume
    assert read_metadata(tmp_path / "m.weights.h5")["best_epoch"] >= 1


def test_an_interrupt_waits_for_the_checkpoint_in_flight(lists, tmp_path, monkeypatch):
    write = runstate.write_snapshot

    def slow(*args, **kwargs):
        time.sleep(1.0)
        write(*args, **kwargs)

    monkeypatch.setattr(runstate, "write_snapshot", slow)
    original = RunKeeper.on_epoch_end

    def stop(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunKeeper, "on_epoch_end", stop)
    with pytest.raises(KeyboardInterrupt, match="continue it with --resume"):
        train(*lists, out=tmp_path / "m.weights.h5", epochs=2, **PLAIN)
    assert not [t for t in threading.enumerate() if t.name == "vitkit-checkpoint"]
    assert read_metadata(tmp_path / "m.weights.h5")["best_epoch"] == 1


def test_resume_writes_the_best_model_that_a_kill_left_unwritten(lists, tmp_path, monkeypatch):
    """A learning rate of 0: only the first epoch improves, so its model file must come back from
    the run folder (the kill came after the state of epoch 1, before its background write)."""
    options = dict(PLAIN, epochs=2, learning_rate=0.0)
    straight = train(*lists, out=tmp_path / "straight.weights.h5", **options)
    original = RunKeeper.on_epoch_end

    def stop(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunKeeper, "on_epoch_end", stop)
    out = tmp_path / "m.weights.h5"
    with pytest.raises(KeyboardInterrupt):
        train(*lists, out=out, **options)
    monkeypatch.undo()
    out.unlink()  # as if the write had not landed
    resumed = train(*lists, out=out, resume=True, **options)
    assert resumed.best_epoch == straight.best_epoch == 1
    metadata = read_metadata(out)
    assert metadata["best_epoch"] == 1 and metadata["training"] == read_metadata(straight.model_path)["training"]
    assert metadata["val_loss"] == read_metadata(straight.model_path)["val_loss"]
    for a, b in zip(load_model(out).weights, load_model(straight.model_path).weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# SIGKILL in a real process --------------------------------------------------------------------------

# Slows the arrays' writes of the background thread only, so that a kill lands inside one.
_SLOW_BACKGROUND_WRITES = """
import threading, time
from vitkit.models import h5layout
_write_at = h5layout._write_at
def _slow(*args):
    if threading.current_thread() is not threading.main_thread():
        time.sleep({delay})
    _write_at(*args)
h5layout._write_at = _slow
"""


def start_python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_during_a_background_write_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "m.weights.h5"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import keras, numpy as np
        from conftest import TINY_BACKBONE
        from vitkit.models.classifier import build_model
        from vitkit.models.modelfile import snapshot_model, write_snapshot
        from vitkit.training.checkpoints import CheckpointWriter
        model = build_model(["a", "b"], backbone=dict(TINY_BACKBONE), image_size=32, augment=False)
        write_snapshot(snapshot_model(model), {str(path)!r}, extra={{"best_epoch": 1}})
        np.savez({str(tmp_path / "first.npz")!r}, *[np.asarray(w) for w in model.weights])
        for variable in model.weights:
            variable.assign(variable + 1.0)
    """) + _SLOW_BACKGROUND_WRITES.format(delay=0.2) + textwrap.dedent(f"""
        from functools import partial
        CheckpointWriter().submit([(None, partial(write_snapshot, snapshot_model(model), {str(path)!r},
                                                  overwrite=True, extra={{"best_epoch": 2}}))])
        import glob, time
        while not glob.glob({str(tmp_path / ".m.weights.h5.*.tmp*")!r}):
            time.sleep(0.01)
        time.sleep(0.5)
        print("MID-WRITE", flush=True)
        time.sleep(600)
    """)
    process = start_python(code)
    try:
        line = process.stdout.readline()
        assert line.strip() == "MID-WRITE", process.stderr.read()[-3000:]
        kill(process)
    finally:
        if process.poll() is None:
            process.kill()
    leftovers = list(tmp_path.glob(".m.weights.h5.*.tmp*"))
    assert leftovers, "the kill did not land inside the write"
    assert read_metadata(path)["best_epoch"] == 1
    first = np.load(tmp_path / "first.npz")
    for i, weight in enumerate(load_model(path).weights):
        np.testing.assert_array_equal(np.asarray(weight), first[f"arr_{i}"])


@pytest.mark.slow
def test_sigkill_amid_the_background_writes_then_resume_gives_the_straight_run(lists, tmp_path):
    """Killed once the state of epoch 1 is saved, while the later epochs' writes wait behind the
    slow writes of the first; the resumed run ends as the straight one."""
    options = dict(PLAIN, epochs=3, learning_rate=0.0)
    out = tmp_path / "killed.weights.h5"
    code = _SLOW_BACKGROUND_WRITES.format(delay=0.1) + textwrap.dedent(f"""
        import os, time
        os.environ["VITKIT_HOME"] = {str(tmp_path / "home")!r}
        from vitkit.training.runstate import RunKeeper
        RunKeeper.on_train_end = lambda self, logs=None: time.sleep(600)  # alive until killed
        from vitkit.training.train import train
        train({str(lists[0])!r}, {str(lists[1])!r}, out={str(out)!r}, **{options!r})
    """)
    process = start_python(code)
    state = tmp_path / "killed.run" / "state.json"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if state.exists() and json.loads(state.read_text())["epochs_done"] == 1:
                break
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read()[-3000:]
        kill(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert read_metadata(out)["best_epoch"] == 1  # written before the state that names it

    resumed = train(*lists, out=out, resume=True, **options)
    straight = train(*lists, out=tmp_path / "straight.weights.h5", **options)
    assert resumed.best_epoch == straight.best_epoch == 1 and read_metadata(out)["best_epoch"] == 1
    assert [row["val_loss"] for row in resumed.history] == [row["val_loss"] for row in straight.history]
    for a, b in zip(load_model(out).weights, load_model(straight.model_path).weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not (tmp_path / "killed.run").exists() and not list(tmp_path.glob(".killed*.tmp*"))
