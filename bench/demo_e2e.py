"""End to end on the CPU: ``vitkit demo`` wall time and test accuracy, kept as a history.

    python bench/demo_e2e.py [--runs 1] [--no-record]

Runs the demo as a user would (a new process, the bundled sample photos, default settings),
reads its ``summary.json`` and appends one row per run to ``bench/history/demo.csv``: date,
commit, test accuracy, best epoch, the demo's own seconds, the process's wall seconds and the
machine's load average. The file is kept in the repository, so a change that slows the demo or
costs accuracy shows as a step in that history. On a shared machine the load column says how
far the seconds can be trusted.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import tempfile
from pathlib import Path

from common import ROOT, run_vitkit

HISTORY = ROOT / "bench" / "history" / "demo.csv"
COLUMNS = ("date", "commit", "test_accuracy", "test_images", "best_epoch", "demo_seconds", "wall_seconds",
           "load_average", "cpu_cores")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_once() -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "demo"
        wall, _ = run_vitkit("demo", "--out", str(out))
        summary = json.loads((out / "summary.json").read_text())
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit(),
        "test_accuracy": round(summary["test_accuracy"], 4), "test_images": summary["test_images"],
        "best_epoch": summary["best_epoch"], "demo_seconds": summary["seconds"], "wall_seconds": round(wall, 1),
        "load_average": round(os.getloadavg()[0], 2), "cpu_cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-record", dest="record", action="store_false", help="print only, leave the history")
    args = parser.parse_args()
    for _ in range(args.runs):
        row = run_once()
        print("  ".join(f"{key}={row[key]}" for key in COLUMNS), flush=True)
        if args.record:
            HISTORY.parent.mkdir(parents=True, exist_ok=True)
            new = not HISTORY.exists()
            with open(HISTORY, "a", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
    if args.record:
        print(f"history: {HISTORY}")


if __name__ == "__main__":
    main()
