"""Interrupted training resumed in this process (Ctrl-C after an epoch) reaches exactly what an
uninterrupted run reaches; same seed, same data -> same weights. The SIGKILL test in a real process
and the JAX-backend check are in ``test_reliability_kill.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_BACKBONE, make_photo_tree
from vitkit.errors import ConfigError, OutputExistsError
from vitkit.data.manifestbuild import build_manifests
from vitkit.models.modelfile import load_model
from vitkit.training.runstate import RunKeeper
from vitkit.training.train import train

TINY = dict(backbone="vit_micro", weights="none", image_size=32, batch_size=8, verbose=0, **TINY_BACKBONE)
PLAIN = dict(TINY, recipe="plain")  # a plain patch embedding: quicker where the recipe is not the point


@pytest.fixture
def lists(tmp_path) -> dict[str, Path]:
    make_photo_tree(tmp_path / "photos", per_class=12, size=32)
    build_manifests(tmp_path / "photos", tmp_path / "lists", 0.25, 0.0)
    return {"train": tmp_path / "lists" / "train.csv", "val": tmp_path / "lists" / "val.csv"}


def weights_of(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in load_model(path).weights]


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def interrupt_after(epoch_index: int, monkeypatch) -> None:
    """Make training stop (Ctrl-C) right after epoch ``epoch_index`` (0-based) is saved."""
    original = RunKeeper.on_epoch_end

    def stop(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == epoch_index:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunKeeper, "on_epoch_end", stop)


# Determinism and resume in this process (interrupted with Ctrl-C) ----------------------------------

def test_same_seed_gives_identical_weights_and_an_interrupted_run_resumes_to_them(lists, tmp_path, monkeypatch):
    """The small-data recipe (RandAugment, stochastic depth, warm-up and cosine decay) with
    dropout, Mixup/CutMix, shuffling and read-ahead threads all on."""
    options = dict(TINY, epochs=3, dropout=0.1, mixup=0.8, cutmix=1.0, seed=3)
    a = train(lists["train"], lists["val"], out=tmp_path / "a.weights.h5", **options)
    b = train(lists["train"], lists["val"], out=tmp_path / "b.weights.h5", **options)
    assert max_difference(weights_of(a.model_path), weights_of(b.model_path)) == 0.0
    assert without_timing(a.history) == without_timing(b.history)
    assert a.history[0]["loss"] != a.history[-1]["loss"]  # it did train

    interrupt_after(1, monkeypatch)
    out = tmp_path / "resumed.weights.h5"
    with pytest.raises(KeyboardInterrupt, match="continue it with --resume"):
        train(lists["train"], lists["val"], out=out, **options)
    assert json.loads((tmp_path / "resumed.run" / "state.json").read_text())["epochs_done"] == 2
    monkeypatch.undo()
    resumed = train(lists["train"], lists["val"], out=out, resume=True, **options)
    assert resumed.best_epoch == a.best_epoch
    assert without_timing(resumed.history) == without_timing(a.history)
    assert max_difference(weights_of(out), weights_of(a.model_path)) == 0.0
    assert not (tmp_path / "resumed.run").exists()


def test_run_interrupted_when_the_backbone_unfreezes_resumes_to_the_same_result(lists, tmp_path, monkeypatch):
    """The second phase starts with a fresh optimizer and fresh early-stopping/plateau counters
    (the plain recipe: constant learning rate halved on plateaus)."""
    options = dict(TINY, recipe="plain", epochs=3, augment=True, dropout=0.1, seed=4,
                   freeze_backbone_epochs=1, reduce_lr_patience=0)
    straight = train(lists["train"], lists["val"], out=tmp_path / "straight.weights.h5", **options)
    interrupt_after(0, monkeypatch)
    out = tmp_path / "resumed.weights.h5"
    with pytest.raises(KeyboardInterrupt):
        train(lists["train"], lists["val"], out=out, **options)
    monkeypatch.undo()
    resumed = train(lists["train"], lists["val"], out=out, resume=True, **options)
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert max_difference(weights_of(out), weights_of(straight.model_path)) == 0.0


def test_early_stopped_run_is_not_trained_further_after_a_resume(lists, tmp_path, monkeypatch):
    """A learning rate of 0 never improves: patience 1 stops after epoch 2, interrupted just then."""
    options = dict(PLAIN, epochs=6, patience=1, learning_rate=0.0, seed=0)
    interrupt_after(1, monkeypatch)
    out = tmp_path / "m.weights.h5"
    with pytest.raises(KeyboardInterrupt):
        train(lists["train"], lists["val"], out=out, **options)
    monkeypatch.undo()
    result = train(lists["train"], lists["val"], out=out, resume=True, **options)
    assert [row["epoch"] for row in result.history] == [1, 2]


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A folder with ``lists/`` and ``m.run/``: a 2-epoch run interrupted after its first epoch."""
    folder = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITKIT_HOME", str(folder / "home"))
        patch.setenv("VITKIT_PROGRESS", "0")
        make_photo_tree(folder / "photos", per_class=12, size=32)
        build_manifests(folder / "photos", folder / "lists", 0.25, 0.0)
        interrupt_after(0, patch)
        with pytest.raises(KeyboardInterrupt):
            train(folder / "lists" / "train.csv", folder / "lists" / "val.csv", out=folder / "m.weights.h5",
                  epochs=2, seed=0, **PLAIN)
    return folder


@pytest.fixture
def interrupted(interrupted_run, tmp_path) -> dict[str, Path]:
    """A private copy of :func:`interrupted_run`; ``out`` is its model file."""
    shutil.copytree(interrupted_run, tmp_path / "copy")
    folder = tmp_path / "copy"
    return {"train": folder / "lists" / "train.csv", "val": folder / "lists" / "val.csv",
            "out": folder / "m.weights.h5", "run": folder / "m.run"}


def test_resume_with_other_options_is_refused(interrupted):
    with pytest.raises(ConfigError, match=r"m\.run holds an interrupted run with other options \(learning_rate\)"):
        train(interrupted["train"], interrupted["val"], out=interrupted["out"], epochs=2, seed=0,
              learning_rate=0.5, resume=True, **PLAIN)
    with pytest.raises(ConfigError, match="holds an interrupted run; continue it with --resume"):
        train(interrupted["train"], interrupted["val"], out=interrupted["out"], epochs=2, seed=0, **PLAIN)


def test_damaged_resume_state_is_a_clear_error(interrupted):
    state = interrupted["run"] / "state.json"
    state.write_text(state.read_text()[:40])
    with pytest.raises(ConfigError, match=r"state\.json is damaged .*pass --overwrite to start again"):
        train(interrupted["train"], interrupted["val"], out=interrupted["out"], epochs=2, seed=0, resume=True, **PLAIN)


def test_resume_state_missing_its_weights_is_a_clear_error(interrupted):
    for path in interrupted["run"].glob("epoch-*.weights.h5"):
        path.unlink()
    with pytest.raises(ConfigError, match=r"m\.run lacks epoch-0001\.weights\.h5"):
        train(interrupted["train"], interrupted["val"], out=interrupted["out"], epochs=2, seed=0, resume=True, **PLAIN)


@pytest.mark.parametrize("damaged", ["epoch-0001.weights.h5", "epoch-0001.state.h5"])
def test_resume_state_with_a_damaged_file_is_a_clear_error(interrupted, damaged):
    path = interrupted["run"] / damaged
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ConfigError, match=r"m\.run is damaged .*pass --overwrite to start again"):
        train(interrupted["train"], interrupted["val"], out=interrupted["out"], epochs=2, seed=0, resume=True, **PLAIN)


def test_resume_without_an_interrupted_run_does_not_overwrite(lists, tmp_path, capsys):
    out = tmp_path / "m.weights.h5"
    out.write_text("an earlier model")
    with pytest.raises(OutputExistsError):
        train(lists["train"], lists["val"], out=out, epochs=1, resume=True, **PLAIN)
    assert "no interrupted run" in capsys.readouterr().err
    assert out.read_text() == "an earlier model"


def test_temporary_files_left_by_a_kill_are_removed_on_resume(interrupted):
    litter = [interrupted["out"].with_name(".m.weights.h5.abc123.tmp.weights.h5"),
              interrupted["run"] / ".state.json.xyz.tmp"]
    for path in litter:
        path.write_bytes(b"half")
    result = train(interrupted["train"], interrupted["val"], out=interrupted["out"], epochs=2, seed=0,
                   resume=True, **PLAIN)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert not any(path.exists() for path in litter)
