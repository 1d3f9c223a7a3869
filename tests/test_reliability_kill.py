"""Training killed with SIGKILL mid-epoch, then ``vitkit train --resume``: it continues from the
last completed epoch and ends with the best checkpoint an uninterrupted run writes, and the model
file on disk is complete at every moment. Also: determinism and resume on the JAX backend.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, make_photo_tree, run_cli, run_python
from vitkit.data.manifestbuild import build_manifests
from vitkit.models.modelfile import load_model, read_metadata


def weights_of(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in load_model(path).weights]


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


# SIGKILL mid-epoch, in a real process ----------------------------------------------------------------

def read_complete_model(path: Path) -> int:
    """Open a model file as it is on disk and read every array; returns the best epoch it records."""
    with h5py.File(path, "r") as handle:
        arrays = []
        handle.visititems(lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
        metadata = json.loads(handle.attrs["vitkit"])
    assert len(arrays) > 40
    return metadata["best_epoch"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_straight_run(tmp_path):
    make_photo_tree(tmp_path / "photos", per_class=30, size=32)
    build_manifests(tmp_path / "photos", tmp_path / "lists", 0.2, 0.0)
    args = [
        "train", str(tmp_path / "lists" / "train.csv"), "--val", str(tmp_path / "lists" / "val.csv"),
        "--backbone", "vit_micro", "--weights", "none", "--image-size", "32", "--patch-size", "8",
        "--layers", "2", "--hidden-size", "32", "--heads", "4", "--mlp-dim", "64", "--dropout", "0.1",
        "--epochs", "3", "--batch-size", "2", "--seed", "11",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed_out = tmp_path / "killed.weights.h5"
    process = subprocess.Popen([sys.executable, "-m", "vitkit", *args, "--out", str(killed_out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_path = tmp_path / "killed.run" / "state.json"
    reads = 0
    kill_at = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if killed_out.exists():  # whenever it exists, the model file is complete and readable
                read_complete_model(killed_out)
                reads += 1
            if kill_at is None and state_path.exists() and json.loads(state_path.read_text())["epochs_done"] == 1:
                kill_at = time.monotonic() + 0.3  # into the second epoch (36 steps and validation)
            if kill_at is not None and time.monotonic() >= kill_at:
                break
            time.sleep(0.005)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    state = json.loads(state_path.read_text())
    assert state["epochs_done"] == 1, "the kill landed after the second epoch finished"
    assert read_complete_model(killed_out) == 1 and reads > 0

    resumed = run_cli(*args, "--out", str(killed_out), "--resume", env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert resumed.returncode == 0, resumed.stderr
    straight_out = tmp_path / "straight.weights.h5"
    straight = run_cli(*args, "--out", str(straight_out), env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert straight.returncode == 0, straight.stderr

    assert read_metadata(killed_out)["best_epoch"] == read_metadata(straight_out)["best_epoch"]
    history = [(tmp_path / f"{name}.history.csv").read_text().splitlines() for name in ("killed", "straight")]
    drop_seconds = [lambda line, i=i: ",".join(v for j, v in enumerate(line.split(",")) if j != i)
                    for i in [history[0][0].split(",").index("seconds")]][0]
    assert [drop_seconds(line) for line in history[0]] == [drop_seconds(line) for line in history[1]]
    assert len(history[0]) == 4  # header + 3 epochs
    difference = max_difference(weights_of(killed_out), weights_of(straight_out))
    print(f"kill-and-resume: best epoch {read_metadata(straight_out)['best_epoch']} of 3, "
          f"killed during epoch 2, max weight difference {difference}")
    assert difference <= 1e-6
    assert not (tmp_path / "killed.run").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_jax_backend_is_deterministic_and_resumes_exactly(tmp_path):
    """The same checks on JAX, whose fit pulls batches through a different path than TensorFlow's."""
    code = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        os.environ["VITKIT_HOME"] = {str(tmp_path / "home")!r}
        os.environ["VITKIT_PROGRESS"] = "0"
        import numpy as np
        from conftest import TINY_BACKBONE, make_photo_tree
        from vitkit.data.manifestbuild import build_manifests
        from vitkit.models.modelfile import load_model
        from vitkit.training.runstate import RunKeeper
        from vitkit.training.train import train

        from pathlib import Path
        root = Path({str(tmp_path)!r})
        make_photo_tree(root / "photos", per_class=12, size=32)
        build_manifests(root / "photos", root / "lists", 0.25, 0.0)
        lists = [root / "lists" / name for name in ("train.csv", "val.csv")]
        options = dict(backbone="vit_micro", weights="none", image_size=32, batch_size=8, verbose=0,
                       epochs=3, augment=True, dropout=0.1, seed=2, **TINY_BACKBONE)
        runs = {{}}
        for name in ("a", "b"):
            runs[name] = train(*lists, out=root / f"{{name}}.weights.h5", **options)
        original = RunKeeper.on_epoch_end
        def stop(self, epoch, logs=None):
            original(self, epoch, logs)
            if epoch == 0:
                raise KeyboardInterrupt
        RunKeeper.on_epoch_end = stop
        try:
            train(*lists, out=root / "c.weights.h5", **options)
        except KeyboardInterrupt:
            pass
        RunKeeper.on_epoch_end = original
        runs["c"] = train(*lists, out=root / "c.weights.h5", resume=True, **options)
        weights = {{k: [np.asarray(w) for w in load_model(r.model_path).weights] for k, r in runs.items()}}
        history = {{k: [{{c: v for c, v in row.items() if c != "seconds"}} for row in r.history] for k, r in runs.items()}}
        print(json.dumps({{
            "ab": max(float(np.abs(x - y).max()) for x, y in zip(weights["a"], weights["b"])),
            "ac": max(float(np.abs(x - y).max()) for x, y in zip(weights["a"], weights["c"])),
            "same_history": history["a"] == history["b"] == history["c"],
            "trained": history["a"][0]["loss"] != history["a"][-1]["loss"],
            "tensorflow_imported": "tensorflow" in sys.modules,
        }}))
    """)
    done = run_python(code, backend="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"ab": 0.0, "ac": 0.0, "same_history": True, "trained": True, "tensorflow_imported": False}
