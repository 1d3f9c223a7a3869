"""Does pre-training help fine-tuning? scikit-learn's digits, small-data recipe, same fine-tuning budget.

    python bench/pretrain_benefit.py [--pretrain-epochs 30] [--epochs 10] [--labelled 1.0] [--seeds 0]

Arms, each evaluated on the held-out 20% of the digits (upsampled to 32 px):

- ``scratch``: ``vitkit train --weights none`` (the small-data recipe) for ``--epochs``;
- ``pretrained``: ``vitkit pretrain`` on every training image (labels unused) for
  ``--pretrain-epochs``, then ``vitkit train --weights FILE --recipe small-data`` for ``--epochs``.

``--labelled`` keeps that share of the training images (stratified) for fine-tuning, while
pre-training sees them all: the situation of more photos than labels. Prints a table (test accuracy
and wall seconds per arm and seed) and writes bench/results/pretrain_benefit.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("VITKIT_PROGRESS", "0")

from common import save_results, table, write_digits_csvs  # noqa: E402
import vitkit  # noqa: E402
from vitkit.data.pixelcsv import read_pixel_csv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--labelled", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pretrain-benefit-"))
    train_csv, test_csv = write_digits_csvs(folder)
    pixels, labels = read_pixel_csv(train_csv)
    labels = np.asarray(labels)
    rows = []
    for seed in args.seeds:
        keep = np.random.default_rng(seed).random(len(labels)) < args.labelled
        labelled = (pixels[keep], labels[keep])
        started = time.monotonic()
        scratch = vitkit.train(labelled, out=folder / f"scratch{seed}.weights.h5", weights="none", image_size=32,
                               epochs=args.epochs, seed=seed, verbose=0)
        rows.append({"arm": "scratch", "seed": seed, "labelled": int(keep.sum()),
                     "accuracy": vitkit.evaluate(scratch.model, test_csv)["accuracy"],
                     "seconds": round(time.monotonic() - started, 1)})
        started = time.monotonic()
        backbone = vitkit.pretrain(pixels, out=folder / f"p{seed}.backbone.weights.h5", image_size=32,
                                   epochs=args.pretrain_epochs, seed=seed, verbose=0)
        pretrain_seconds = time.monotonic() - started
        tuned = vitkit.train(labelled, out=folder / f"tuned{seed}.weights.h5", weights=str(backbone.backbone_path),
                             recipe="small-data", epochs=args.epochs, seed=seed, verbose=0)
        rows.append({"arm": "pretrained", "seed": seed, "labelled": int(keep.sum()),
                     "accuracy": vitkit.evaluate(tuned.model, test_csv)["accuracy"],
                     "seconds": round(time.monotonic() - started, 1),
                     "pretrain_seconds": round(pretrain_seconds, 1),
                     "pretrain_loss": f"{backbone.history[0]['loss']:.3f} -> {backbone.history[-1]['loss']:.3f}"})
    print(f"digits, 32 px, fine-tuning {args.epochs} epochs, pre-training {args.pretrain_epochs}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(table(rows, ["arm", "seed", "labelled", "accuracy", "seconds", "pretrain_seconds", "pretrain_loss"]))
    save_results("pretrain_benefit", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
