"""The command line end to end on tiny data, on TensorFlow and JAX, and its error handling."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from vitkit.cli import build_parser, main

from conftest import run_cli

TINY_FLAGS = ["--backbone", "vit_micro", "--weights", "none", "--image-size", "32", "--patch-size", "8",
              "--layers", "2", "--hidden-size", "32", "--heads", "4", "--mlp-dim", "64"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_manifest_train_evaluate_predict(photo_tree, tmp_path, backend, compile_cache):
    manifests, model = tmp_path / "manifests", tmp_path / "models" / "shapes.weights.h5"

    def vitkit(*args):
        finished = run_cli(*args, "--cache-dir", str(tmp_path / "cache"), backend=backend) if args[0] != "manifest" \
            else run_cli(*args, backend=backend)
        assert finished.returncode == 0, finished.stderr
        return finished.stdout

    out = vitkit("manifest", "build", str(photo_tree), "-o", str(manifests), "--val", "0.25", "--test", "0.25")
    assert "circle" in out and "total" in out
    out = vitkit("train", str(manifests / "train.csv"), "--val", str(manifests / "val.csv"), "--out", str(model),
                 "--epochs", "2", "--batch-size", "4", *TINY_FLAGS)
    assert "best epoch" in out and model.is_file()
    assert (tmp_path / "models" / "shapes.history.csv").is_file() and (tmp_path / "models" / "shapes.curves.png").is_file()

    vitkit("evaluate", str(model), str(manifests / "test.csv"), "--out", str(tmp_path / "report"))
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["images"] == 6 and metrics["class_names"] == ["circle", "square", "triangle"]
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "misclassified.png", "class_probabilities.csv"):
        assert (tmp_path / "report" / name).is_file()

    vitkit("predict", str(model), str(photo_tree / "square"), "--out", str(tmp_path / "p.csv"),
           "--grid", str(tmp_path / "grid.png"))
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 8 and set(table.columns) >= {"image", "predicted", "confidence", "p_circle"}
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert any(compile_cache.iterdir()) == (backend == "jax")  # JAX's programs outlive the process


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
