"""Two JAX processes on this machine, joined as two hosts (CPU collectives through gloo), train the
model one process trains on the same global batch, and only the first writes the outputs (the
teacher of a distilled run too).

Comparisons and the training options are those of ``test_multidevice.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, make_photo_tree, run_cli
from test_distillation import assert_predicts_the_mean_of_its_heads
from test_multidevice import TRAINING_FLAGS, assert_same_history, assert_same_model, read_history
from vitkit.data.imageset import load_images


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_in_two_processes(tmp_path, out, *flags: str) -> list[str]:
    """``vitkit train PHOTOS --out OUT FLAGS`` as two JAX processes joined as two hosts, each with its
    own temporary folder (which must be left empty); their standard outputs."""
    port = free_port()
    processes, private = [], []
    for index in range(2):
        private.append(tmp_path / f"tmp{index}")
        private[-1].mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
               "VITKIT_PROGRESS": "0", "TMPDIR": str(private[-1]), "VITKIT_COORDINATOR": f"127.0.0.1:{port}",
               "VITKIT_NUM_PROCESSES": "2", "VITKIT_PROCESS_ID": str(index)}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "vitkit", "train", str(tmp_path / "photos"), "--out", str(out), *flags],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        finished = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, finished):
        assert process.returncode == 0, stderr[-3000:]
    assert [list(folder.iterdir()) for folder in private] == [[], []]  # process 1's own copy is gone too
    return [stdout for stdout, _ in finished]


@pytest.mark.slow
def test_two_jax_processes_train_as_one_and_only_the_first_writes(tmp_path):
    make_photo_tree(tmp_path / "photos", per_class=16, size=32)
    single = run_cli("train", str(tmp_path / "photos"), "--out", str(tmp_path / "one" / "m.weights.h5"),
                     *TRAINING_FLAGS, backend="jax", env={"VITKIT_PROGRESS": "0"})
    assert single.returncode == 0, single.stderr[-3000:]

    out = tmp_path / "two" / "m.weights.h5"
    train_in_two_processes(tmp_path, out, *TRAINING_FLAGS)
    assert sorted(path.name for path in out.parent.iterdir()) == ["m.curves.png", "m.history.csv", "m.weights.h5"]
    assert_same_history(read_history(out.with_name("m.history.csv")), read_history(tmp_path / "one" / "m.history.csv"))
    images = load_images(tmp_path / "photos", (32, 32), progress=False).all_pixels()
    assert_same_model(out, tmp_path / "one" / "m.weights.h5", images)


@pytest.mark.slow
def test_two_jax_processes_distil_and_only_the_first_writes_the_teacher(tmp_path):
    """The CNN teacher trains over both processes first; only process 0 writes it."""
    make_photo_tree(tmp_path / "photos", per_class=16, size=32)
    out = tmp_path / "two" / "m.weights.h5"
    printed = train_in_two_processes(tmp_path, out, "--teacher", "cnn", *TRAINING_FLAGS)
    teacher = out.with_name("m.teacher.keras")
    assert all(f"teacher: {teacher} (trained in" in text for text in printed)
    assert sorted(path.name for path in out.parent.iterdir()) == [
        "m.curves.png", "m.history.csv", "m.teacher.keras", "m.weights.h5"]
    assert len(read_history(out.with_name("m.history.csv"))) == 2
    images = load_images(tmp_path / "photos", (32, 32), progress=False).all_pixels()
    assert_predicts_the_mean_of_its_heads(out, images)
