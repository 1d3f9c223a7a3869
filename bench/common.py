"""Shared pieces of the benchmarks: offline data sets, timed CLI runs, tables and JSON results.

Timings are wall-clock seconds on whatever the machine runs at the time; on a shared CPU they
are approximate, so compare arms of one script run, not numbers across runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def write_digits_csvs(folder: Path, test_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's 1,797 8x8 digits as pixel CSVs ``label,pixel0..pixel63`` (0-16 scaled to 0-255).

    The split is stratified and seeded; returns ``(train.csv, test.csv)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.data * 255.0 / 16.0).astype(np.int64)
    train_rows, test_rows = train_test_split(
        np.arange(len(pixels)), test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    folder.mkdir(parents=True, exist_ok=True)
    header = "label," + ",".join(f"pixel{i}" for i in range(pixels.shape[1]))
    paths = []
    for name, rows in (("train", train_rows), ("test", test_rows)):
        path = folder / f"digits_{name}.csv"
        lines = [header] + [f"{digits.target[i]}," + ",".join(map(str, pixels[i])) for i in rows]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def run_vitkit(*args: str, log: Path | None = None) -> tuple[float, str]:
    """Run ``python -m vitkit ARGS`` with this checkout first on the path; returns (seconds, stdout)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", "VITKIT_PROGRESS": "0"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vitkit", *args], env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if log is not None:
        log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode:
        raise RuntimeError(f"vitkit {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (floats with 4 significant decimals)."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def save_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/NAME.json`` with the machine's description."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()}, **payload}
    path.write_text(json.dumps(payload, indent=2))
    return path
