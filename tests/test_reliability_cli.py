"""The command line under bad inputs: ``--on-bad-image``, ``--overwrite``, unwritable outputs and
out-of-memory errors, for train, evaluate and predict.

Most tests call ``vitkit.cli.main`` in this process (argument parsing, the API and the error
printing are all exercised); one runs the real ``vitkit`` process to check what a user sees.
"""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import TINY_BACKBONE, TINY_CLASSES, make_photo_tree, run_cli, run_python
from vitkit.models.classifier import build_model
from vitkit.models.modelfile import save_model

TINY_TRAIN = [  # the plain recipe: these tests are about bad inputs, not the small-data recipe's options
    "--recipe", "plain", "--backbone", "vit_micro", "--weights", "none", "--image-size", "32", "--patch-size", "8",
    "--layers", "2", "--hidden-size", "32", "--heads", "4", "--mlp-dim", "64", "--epochs", "1",
    "--batch-size", "8", "--no-augment",
]


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    """Manifests of 3 x 8 shape photos; ``bad`` adds a missing, an empty and a truncated photo."""
    photos = make_photo_tree(tmp_path / "photos", per_class=8, size=32)
    (photos / "circle" / "empty.png").write_bytes(b"")
    whole = (photos / "square" / "square_00.png").read_bytes()
    (photos / "square" / "cut.png").write_bytes(whole[: len(whole) // 2])
    rows = ["base_path,type_dir,file_name"]
    rows += [f"photos,{name},{name}_{i:02d}.png" for name in ("circle", "square", "triangle") for i in range(8)]
    good = tmp_path / "good.csv"
    good.write_text("\n".join(rows) + "\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows[:3] + ["photos,circle,missing.png", "photos,circle,empty.png"]
                             + rows[3:10] + ["photos,square,cut.png"] + rows[10:]) + "\n")
    return {"good": good, "bad": bad, "root": tmp_path}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """An untrained tiny model file, made once: the tests only read it."""
    model = build_model(list(TINY_CLASSES), backbone=dict(TINY_BACKBONE), image_size=32, augment=False, seed=0)
    return save_model(model, tmp_path_factory.mktemp("models") / "shapes.weights.h5")


def skipped_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


BAD_ROWS = [("missing.png", "4", "file not found"), ("empty.png", "5", "empty file"), ("cut.png", "13", "damaged")]


def assert_lists_bad_rows(path: Path, manifest: Path) -> None:
    rows = skipped_rows(path)
    assert [(Path(r["image"]).name, r["row"]) for r in rows] == [(n, f"{manifest} line {line}") for n, line, _ in BAD_ROWS]
    assert all(reason in row["reason"] for row, (_, _, reason) in zip(rows, BAD_ROWS))


# --on-bad-image ------------------------------------------------------------------------------

def test_train_skips_bad_images_by_default_and_lists_them(cli, data):
    """Then a second run with --overwrite on clean data replaces the model and drops the stale list."""
    out = data["root"] / "models" / "m.weights.h5"
    status, stdout, stderr = cli("train", data["bad"], "--out", out, *TINY_TRAIN)
    assert status == 0
    assert f"vitkit: warning: skipped 3 of 27 images that cannot be read; first: {data['bad']} line 4: " in stderr
    listed = out.with_name("m.skipped.csv")
    assert f"skipped images: {listed}" in stdout
    assert_lists_bad_rows(listed, data["bad"])
    first_model = out.read_bytes()
    status, stdout, stderr = cli("train", data["good"], "--out", out, "--overwrite", "--seed", "1", *TINY_TRAIN)
    assert status == 0, stderr
    assert "skipped images" not in stdout and not listed.exists()
    assert out.read_bytes()[:4] == b"\x89HDF" and out.read_bytes() != first_model


def test_train_error_policy_stops_at_the_first_bad_row(cli, data):
    out = data["root"] / "models" / "m.weights.h5"
    status, stdout, stderr = cli("train", data["bad"], "--out", out, "--on-bad-image", "error", *TINY_TRAIN)
    assert status == 2
    assert stderr.startswith(f"vitkit: error: {data['bad']} line 4: ") and "missing.png: file not found" in stderr
    assert "--on-bad-image skip" in stderr and "Traceback" not in stderr
    assert not (data["root"] / "models").exists()


def test_evaluate_skips_bad_images_and_lists_them_in_the_report(cli, data, model_path):
    report = data["root"] / "report"
    status, stdout, stderr = cli("evaluate", model_path, data["bad"], "--out", report)
    assert status == 0 and "vitkit: warning: skipped 3 of 27" in stderr and "24 images" in stdout and f"skipped images: {report / 'skipped.csv'}" in stdout
    assert_lists_bad_rows(report / "skipped.csv", data["bad"])


def test_evaluate_error_policy_writes_no_report(cli, data, model_path):
    report = data["root"] / "report"
    status, _, stderr = cli("evaluate", model_path, data["bad"], "--out", report, "--on-bad-image", "error")
    assert status == 2 and "line 4" in stderr and not report.exists()


def test_predict_skips_bad_images_and_lists_them_beside_the_table(cli, data, model_path):
    table = data["root"] / "out" / "predictions.csv"
    status, stdout, stderr = cli("predict", model_path, data["bad"], "--out", table)
    assert status == 0 and "vitkit: warning: skipped 3 of 27" in stderr and "24 predictions" in stdout
    assert_lists_bad_rows(table.with_name("predictions.skipped.csv"), data["bad"])


def test_printed_predictions_list_bad_images_in_the_working_folder(cli, data, model_path, monkeypatch):
    """Without --out the table goes to stdout, the list to ./predictions.skipped.csv and its place to stderr.

    A later run never stops over that list: it takes the next free name, and writes none when
    every image was read.
    """
    monkeypatch.chdir(data["root"])
    listed = data["root"] / "predictions.skipped.csv"
    status, stdout, stderr = cli("predict", model_path, data["bad"])
    assert status == 0 and "vitkit: warning: skipped 3 of 27" in stderr
    assert [line for line in stderr.splitlines() if "predictions.skipped.csv" in line] == \
        ["skipped images: predictions.skipped.csv"]
    assert len(stdout.splitlines()) == 1 + 24 and "skipped" not in stdout
    assert_lists_bad_rows(listed, data["bad"])
    status, _, stderr = cli("predict", model_path, data["good"])
    assert status == 0 and "skipped images" not in stderr
    assert not (data["root"] / "predictions.skipped-2.csv").exists()
    status, _, stderr = cli("predict", model_path, data["bad"])
    assert status == 0 and "skipped images: predictions.skipped-2.csv" in stderr
    assert_lists_bad_rows(data["root"] / "predictions.skipped-2.csv", data["bad"])
    assert_lists_bad_rows(listed, data["bad"])  # the first list is left as it was


def test_predict_error_policy_writes_nothing(cli, data, model_path):
    table = data["root"] / "out" / "predictions.csv"
    status, _, stderr = cli("predict", model_path, data["bad"], "--out", table, "--on-bad-image", "error")
    assert status == 2 and "line 4" in stderr and not table.parent.exists()


@pytest.mark.slow
def test_the_user_sees_one_warning_line_and_the_list(data, model_path):
    table = data["root"] / "predictions.csv"
    done = run_cli("predict", str(model_path), str(data["bad"]), "--out", str(table))
    assert done.returncode == 0, done.stderr
    assert "vitkit: warning: skipped 3 of 27 images that cannot be read; first: " in done.stderr
    assert "Traceback" not in done.stderr
    assert f"skipped images: {table.with_name('predictions.skipped.csv')}" in done.stdout


# --overwrite, for every command ---------------------------------------------------------------

def precious(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("precious")
    return path


@pytest.mark.parametrize("existing", ["m.weights.h5", "m.history.csv", "m.curves.png", "m.skipped.csv"])
def test_train_never_overwrites_without_the_flag(cli, data, existing):
    kept = precious(data["root"] / "models" / existing)
    status, _, stderr = cli("train", data["good"], "--out", data["root"] / "models" / "m.weights.h5", *TINY_TRAIN)
    assert status == 2 and f"{kept} exists; pass --overwrite" in stderr
    assert kept.read_text() == "precious"


@pytest.mark.parametrize("existing", ["metrics.json", "confusion_matrix.png", "probabilities.csv", "skipped.csv"])
def test_evaluate_never_overwrites_without_the_flag(cli, data, model_path, existing):
    kept = precious(data["root"] / "report" / existing)
    status, _, stderr = cli("evaluate", model_path, data["good"], "--out", data["root"] / "report")
    assert status == 2 and "exists; pass --overwrite" in stderr
    assert kept.read_text() == "precious"
    assert sorted(p.name for p in kept.parent.iterdir()) == [existing]
    status, _, _ = cli("evaluate", model_path, data["good"], "--out", data["root"] / "report", "--overwrite")
    assert status == 0
    if existing == "skipped.csv":
        assert not kept.exists()  # nothing skipped this time: the stale list is gone
    else:
        assert kept.read_bytes() != b"precious"


@pytest.mark.parametrize("existing", ["p.csv", "grid.png", "p.skipped.csv"])
def test_predict_never_overwrites_without_the_flag(cli, data, model_path, existing):
    kept = precious(data["root"] / "out" / existing)
    args = ("predict", model_path, data["good"], "--out", data["root"] / "out" / "p.csv",
            "--grid", data["root"] / "out" / "grid.png")
    status, _, stderr = cli(*args)
    assert status == 2 and f"{kept} exists; pass --overwrite" in stderr
    assert kept.read_text() == "precious"
    status, _, stderr = cli(*args, "--overwrite")
    assert status == 0, stderr


def test_manifest_build_never_overwrites_without_the_flag(cli, data):
    kept = precious(data["root"] / "lists" / "val.csv")
    status, _, stderr = cli("manifest", "build", data["root"] / "photos", "-o", data["root"] / "lists")
    assert status == 2 and "val.csv exists" in stderr
    assert kept.read_text() == "precious" and sorted(p.name for p in kept.parent.iterdir()) == ["val.csv"]
    status, _, _ = cli("manifest", "build", data["root"] / "photos", "-o", data["root"] / "lists", "--overwrite")
    assert status == 0 and kept.read_text().startswith("base_path,type_dir,file_name")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_output_under_a_file_is_a_clear_error(cli, data, model_path, command):
    blocker = precious(data["root"] / "blocker")
    out = blocker / "result.csv" if command == "predict" else blocker / "report"
    status, _, stderr = cli(command, model_path, data["good"], "--out", out)
    assert status == 2 and f"{blocker} is a file, not a folder" in stderr
    assert blocker.read_text() == "precious"


def test_output_that_is_a_folder_is_a_clear_error(cli, data, model_path):
    (data["root"] / "p.csv").mkdir()
    status, _, stderr = cli("predict", model_path, data["good"], "--out", data["root"] / "p.csv", "--overwrite")
    assert status == 2 and "is a folder; give a file name" in stderr


def test_disk_full_while_writing_leaves_no_partial_file(data, model_path, monkeypatch):
    import errno

    import pandas as pd

    from vitkit.errors import OutputError
    from vitkit.prediction import predict

    def full(self, path, *args, **kwargs):
        Path(path).write_text("half a tab")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OutputError, match=r"cannot write .*p\.csv: No space left on device"):
        predict(model_path, data["good"], out=data["root"] / "out" / "p.csv")
    assert list((data["root"] / "out").iterdir()) == []


# Out of memory ----------------------------------------------------------------------------------

def _backend_out_of_memory_errors():
    import jax
    import tensorflow as tf

    return {
        "tensorflow": tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[16,197,3072]"),
        "jax": jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.21GiB."),
        "torch": RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity)"),
        "host": MemoryError(),
        "numpy": _numpy_memory_error(),
    }


def _numpy_memory_error() -> MemoryError:
    try:
        np.empty((1 << 62,), dtype=np.uint8)
    except MemoryError as error:
        return error
    raise AssertionError("numpy allocated 4 EiB")


OOM_KINDS = ["tensorflow", "jax", "torch", "host", "numpy"]


def raising(error):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


@pytest.mark.parametrize("kind", OOM_KINDS)
def test_train_out_of_memory_gives_a_hint(cli, data, monkeypatch, kind):
    monkeypatch.setattr(keras.Model, "fit", raising(_backend_out_of_memory_errors()[kind]))
    status, _, stderr = cli("train", data["good"], "--out", data["root"] / "m.weights.h5", *TINY_TRAIN)
    assert status == 2
    assert stderr == ("vitkit: error: the cpu ran out of memory at batch size 8; "
                      "try --batch-size 4 or --precision mixed_bfloat16\n")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("kind", OOM_KINDS)
def test_predict_and_evaluate_out_of_memory_give_a_hint(cli, data, model_path, monkeypatch, command, kind):
    monkeypatch.setattr(keras.Model, "predict", raising(_backend_out_of_memory_errors()[kind]))
    out = data["root"] / ("p.csv" if command == "predict" else "report")
    status, _, stderr = cli(command, model_path, data["good"], "--out", out)
    assert status == 2
    assert stderr == "vitkit: error: the cpu ran out of memory at batch size 32; try --batch-size 16\n"
    assert not out.exists()


def test_other_errors_are_not_taken_for_out_of_memory(cli, data, model_path, monkeypatch):
    monkeypatch.setattr(keras.Model, "predict", raising(ValueError("shapes (3,) and (4,) not aligned")))
    with pytest.raises(ValueError, match="not aligned"):
        cli("predict", model_path, data["good"])


def test_out_of_memory_after_some_epochs_says_the_run_can_resume(cli, data, monkeypatch):
    import tensorflow as tf

    from vitkit.training.runstate import RunKeeper

    out = data["root"] / "m.weights.h5"
    original = RunKeeper.on_epoch_begin

    def run_out_at_second_epoch(self, epoch, logs=None):
        if epoch == 1:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        original(self, epoch, logs)

    monkeypatch.setattr(RunKeeper, "on_epoch_begin", run_out_at_second_epoch)
    args = ["train", data["good"], "--out", out, *TINY_TRAIN, "--epochs", "2"]
    status, _, stderr = cli(*args)
    assert status == 2 and "ran out of memory" in stderr
    assert f"the finished epochs are kept: add --resume to continue ({out.with_name('m.run')})" in stderr
    monkeypatch.setattr(RunKeeper, "on_epoch_begin", original)
    status, stdout, stderr = cli(*args, "--resume")
    assert status == 0, stderr
    history = (out.with_name("m.history.csv")).read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]


@pytest.mark.slow
def test_api_functions_work_whatever_was_imported_first(data, model_path):
    """Importing the modules behind ``vitkit.train`` / ``evaluate`` / ``predict`` / ``explain`` first
    (as the command line does) must leave those names bound to the functions."""
    code = f"""
import vitkit.evaluation, vitkit.prediction, vitkit.training.train, vitkit.explanation.explain  # the modules first
import vitkit
table = vitkit.predict({str(model_path)!r}, {str(data['good'])!r}, progress=False)
metrics = vitkit.evaluate({str(model_path)!r}, {str(data['good'])!r}, progress=False)
print(len(table), metrics["images"], *(callable(getattr(vitkit, name)) for name in ("train", "explain")))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["24", "24", "True", "True"]
