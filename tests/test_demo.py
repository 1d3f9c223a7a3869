"""``vitkit demo``: the whole path on a photo folder, through the command line (in this process)."""

from __future__ import annotations

import json

import pandas as pd
import pytest


@pytest.mark.slow
def test_demo_runs_every_step_and_writes_every_output(photo_tree, tmp_path, cli):
    out = tmp_path / "demo"
    status, stdout, stderr = cli("demo", "--photos", photo_tree, "--out", out, "--epochs", "2", "--image-size", "32")
    assert status == 0, stderr[-2000:]
    for step in range(1, 7):
        assert f"[{step}/6]" in stdout
    assert "test accuracy" in stdout
    for name in ("manifests/train.csv", "manifests/val.csv", "manifests/test.csv", "models/demo.weights.h5",
                 "predictions.csv", "predictions.png", "attention/grid.png", "attention/explanations.csv",
                 "report.html", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test_accuracy"] <= 1 and summary["reload_max_difference"] < 1e-5
    test_rows = len(pd.read_csv(out / "manifests" / "test.csv"))
    assert len(pd.read_csv(out / "predictions.csv")) == test_rows
    assert len(pd.read_csv(out / "attention" / "explanations.csv")) == test_rows

    status, _, stderr = cli("demo", "--photos", photo_tree, "--out", out, "--epochs", "1", "--image-size", "32")
    errors = [line for line in stderr.splitlines() if line.startswith("vitkit:")]
    assert status == 2 and len(errors) == 1 and "--overwrite" in errors[0]  # never replaced silently
