"""The command line end to end on tiny data, on TensorFlow and JAX, and its error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pandas as pd
import pytest

from vitkit.cli import build_parser, main

from conftest import run_commands

TINY_FLAGS = ["--backbone", "vit_micro", "--weights", "none", "--image-size", "32", "--patch-size", "8",
              "--layers", "2", "--hidden-size", "32", "--heads", "4", "--mlp-dim", "64"]


def session(photo_tree: Path, tmp_path: Path) -> list[list[str]]:
    """The commands of a first session: manifests, training, evaluation, predictions."""
    manifests, model = tmp_path / "manifests", tmp_path / "models" / "shapes.weights.h5"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    return [
        ["manifest", "build", str(photo_tree), "-o", str(manifests), "--val", "0.25", "--test", "0.25"],
        ["train", str(manifests / "train.csv"), "--val", str(manifests / "val.csv"), "--out", str(model),
         "--epochs", "2", "--batch-size", "4", *TINY_FLAGS, *cache],
        ["evaluate", str(model), str(manifests / "test.csv"), "--out", str(tmp_path / "report"), *cache],
        ["predict", str(model), str(photo_tree / "square"), "--out", str(tmp_path / "p.csv"),
         "--grid", str(tmp_path / "grid.png"), *cache],
    ]


def assert_session_outputs(printed: list[str], tmp_path: Path) -> None:
    """What :func:`session`'s commands print and write."""
    built, trained = printed[:2]
    assert "circle" in built and "total" in built
    assert "best epoch" in trained and (tmp_path / "models" / "shapes.weights.h5").is_file()
    assert (tmp_path / "models" / "shapes.history.csv").is_file() and (tmp_path / "models" / "shapes.curves.png").is_file()

    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["images"] == 6 and metrics["class_names"] == ["circle", "square", "triangle"]
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "misclassified.png", "class_probabilities.csv"):
        assert (tmp_path / "report" / name).is_file()

    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 8 and set(table.columns) >= {"image", "predicted", "confidence", "p_circle"}
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.slow
def test_manifest_train_evaluate_predict(photo_tree, tmp_path, cli, monkeypatch):
    """In this process (TensorFlow), which keeps no compiled programs on disk."""
    monkeypatch.setenv("VITKIT_COMPILE_CACHE", str(tmp_path / "compile_cache"))
    printed = []
    for args in session(photo_tree, tmp_path):
        status, out, err = cli(*args)
        assert status == 0, err
        printed.append(out)
    assert_session_outputs(printed, tmp_path)
    if keras.backend.backend() == "tensorflow":
        assert not (tmp_path / "compile_cache").exists() or not any((tmp_path / "compile_cache").iterdir())


@pytest.mark.slow
def test_manifest_train_evaluate_predict_on_jax(photo_tree, tmp_path, monkeypatch):
    """The same commands in one JAX process, whose compiled programs outlive it."""
    cache = tmp_path / "compile_cache"
    monkeypatch.setenv("VITKIT_COMPILE_CACHE", str(cache))
    results, stderr = run_commands(session(photo_tree, tmp_path), backend="jax")
    assert [status for status, _ in results] == [0, 0, 0, 0], stderr[-3000:]
    assert_session_outputs([printed for _, printed in results], tmp_path)
    assert any(cache.iterdir())


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,class\nx.png,a\n")
    status = main(["manifest", "check", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("vitkit: error: ") and err.count("\n") == 1 and "base_path" in err


def test_outputs_are_not_overwritten(photo_tree, tmp_path, capsys):
    assert main(["manifest", "build", str(photo_tree), "-o", str(tmp_path / "m")]) == 0
    assert main(["manifest", "build", str(photo_tree), "-o", str(tmp_path / "m")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["manifest", "build", str(photo_tree), "-o", str(tmp_path / "m"), "--overwrite"]) == 0


def test_manifest_check_exit_status(photo_tree, tmp_path, capsys):
    main(["manifest", "build", str(photo_tree), "-o", str(tmp_path / "m")])
    assert main(["manifest", "check", str(tmp_path / "m" / "train.csv")]) == 0
    (photo_tree / "circle" / "circle_00.png").unlink()
    capsys.readouterr()
    manifests = [tmp_path / "m" / f"{s}.csv" for s in ("train", "val", "test")]
    statuses = [main(["manifest", "check", str(path)]) for path in manifests]
    assert sorted(statuses) == [0, 0, 1]
    assert "file not found" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["demo", "manifest", "train", "evaluate", "predict"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_option_values_are_checked(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "t.csv", "--out", "m.weights.h5", "--image-size", "0"])
    assert "image size" in capsys.readouterr().err
    args = build_parser().parse_args(["train", "t.csv", "--out", "m.weights.h5", "--image-size", "192x256",
                                      "--class-weights", "ok=1,dent=2.5"])
    assert args.image_size == (192, 256) and args.class_weights == {"ok": 1.0, "dent": 2.5}


def test_keras_starts_without_the_notebook_and_gallery_modules_which_stay_importable():
    code = ("import sys; from vitkit.cli import start_keras; start_keras(); "
            "print('IPython' in sys.modules, 'matplotlib.pyplot' in sys.modules); "
            "import matplotlib.pyplot; print(matplotlib.pyplot.figure is not None)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.stdout.split() == ["False", "False", "True"], done.stderr[-2000:]


def test_building_the_command_line_imports_no_keras_so_that_backend_and_cache_options_apply():
    code = "import sys, vitkit.cli; vitkit.cli.build_parser(); print(sorted({'keras', 'jax', 'tensorflow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_prediction_commands_take_jax_where_installed_unless_a_backend_is_named(monkeypatch, tmp_path):
    import importlib.util

    from vitkit import device

    parser = build_parser()
    prefers = {name: bool(getattr(parser.parse_args([name, "m.weights.h5", "x", *extra]), "prefers_jax", False))
               for name, extra in [("predict", []), ("evaluate", ["--out", "r"]), ("explain", ["--out", "r"])]}
    prefers["train"] = bool(getattr(parser.parse_args(["train", "x", "--out", "m.weights.h5"]), "prefers_jax", False))
    assert prefers == {"predict": True, "evaluate": True, "explain": False, "train": False}

    installed = {"jax"}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: object() if name in installed else
                        (None if name.startswith("jax") else real_find_spec(name, *rest)))
    gpu = []
    monkeypatch.setattr(device, "_nvidia_gpu_present", lambda: bool(gpu))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no keras.json: Keras' default, TensorFlow
    assert not device.jax_predicts_faster()  # Keras is imported in this process: too late to choose
    monkeypatch.delitem(sys.modules, "keras")
    assert device.jax_predicts_faster()
    (tmp_path / "keras.json").write_text('{"backend": "tensorflow"}')  # what Keras writes by itself
    assert device.jax_predicts_faster()
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    assert not device.jax_predicts_faster()
    (tmp_path / "keras.json").unlink()
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert not device.jax_predicts_faster()
    monkeypatch.delenv("KERAS_BACKEND")
    gpu.append("nvidia")  # a GPU the installed JAX cannot use: TensorFlow keeps it
    assert not device.jax_predicts_faster()
    installed.add("jax_cuda12_plugin")
    assert device.jax_predicts_faster()
    installed.clear()
    assert not device.jax_predicts_faster()


def test_short_commands_let_jax_take_gpu_memory_as_needed_and_training_keeps_its_reserve(monkeypatch):
    from vitkit.device import allocate_as_needed

    parser = build_parser()
    short = {name: parser.parse_args([name, "m.weights.h5", "x", *extra]).short_lived
             for name, extra in [("predict", []), ("evaluate", ["--out", "r"]), ("explain", ["--out", "r"])]}
    assert short == {"predict": True, "evaluate": True, "explain": True}
    assert not getattr(parser.parse_args(["train", "x", "--out", "m.weights.h5"]), "short_lived", False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    allocate_as_needed()
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")  # the user's choice wins
    allocate_as_needed()
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"
