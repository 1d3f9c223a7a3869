"""Is the bundled sample learnable in minutes? Train the small from-scratch ViT on it and time it.

For each split seed: build stratified train/val/test manifests from ``examples/photos`` (the split
``vitkit demo`` makes), train ``vit_micro`` from scratch with the settings below, evaluate on the
held-out test split, and report test accuracy, epochs, wall time, the process's CPU time and the
fastest epoch. On a shared machine the wall time depends on the neighbours; the fastest epoch times
the epoch count is what training costs on an idle one, and the CPU time is an upper bound for an
idle 2-core machine (training never runs on less than one core).

Also reports how far colour alone gets (needs scikit-learn): a classifier on each photo's colour
histogram, and one on the mean colour of the product itself (inside its ground-truth mask). The
classes differ in shape, not colour, so both should stay far below the ViT.

    python bench/sample_photos.py                       # the recommended settings, split seed 0
    python bench/sample_photos.py --seeds 0,1,2         # several splits
    python bench/sample_photos.py --patch-size 8        # a 6x6 grid: faster, a little less accurate
    python bench/sample_photos.py --epochs 40 --learning-rate 1e-3 --augment default

Prints a table and writes ``bench/results/sample_photos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sample_photos.json"
NO_ROTATION = {"rotation": 0.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=ROOT / "examples" / "photos")
    parser.add_argument("--masks", type=Path, default=ROOT / "examples" / "masks")
    parser.add_argument("--seeds", default="0", help="comma-separated split and training seeds (default: 0)")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--patch-size", type=int, default=None,
                        help="ViT patch side (default: vit_micro's own choice, 6 at 48 px, an 8x8 grid)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", choices=("no-rotation", "default", "off"), default="no-rotation",
                        help="training augmentation: the default one without its random rotation (default), "
                             "the default one, or none")
    return parser.parse_args()


def train_and_test(args: argparse.Namespace, seed: int, work: Path) -> dict:
    import vitkit

    vitkit.build_manifests(args.photos, work / "manifests", seed=seed)
    augment = {"no-rotation": NO_ROTATION, "default": True, "off": False}[args.augment]
    started, cpu_started = time.perf_counter(), time.process_time()
    result = vitkit.train(
        work / "manifests" / "train.csv", work / "manifests" / "val.csv", out=work / "model.weights.h5",
        backbone="vit_micro", weights="none", image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, optimizer="adamw", schedule="cosine",
        warmup_epochs=args.warmup_epochs, label_smoothing=0.1, augment=augment, patience=0, seed=seed,
        cache_dir=work / "cache", verbose=0, patch_size=args.patch_size,
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    metrics = vitkit.evaluate(result.model, work / "manifests" / "test.csv")
    epoch_seconds = [row["seconds"] for row in result.history]
    return {
        "seed": seed, "test_accuracy": metrics["accuracy"], "test_images": metrics["images"],
        "epochs": len(result.history), "best_epoch": result.best_epoch, "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1), "median_epoch_s": round(statistics.median(epoch_seconds), 2),
        "fastest_epoch_s": round(min(epoch_seconds), 2),
        "idle_estimate_s": round(min(epoch_seconds) * len(epoch_seconds), 1),
        "load_average": round(os.getloadavg()[0], 1),
    }


def colour_only(photos: Path, masks: Path) -> dict[str, float] | None:
    """5-fold accuracy of a random forest on colour features alone (None without scikit-learn)."""
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import cross_val_score
    except ImportError:
        return None
    histograms, product_means, labels = [], [], []
    for class_dir in sorted(path for path in photos.iterdir() if path.is_dir()):
        for photo in sorted(class_dir.glob("*.jpg")):
            pixels = np.asarray(Image.open(photo).convert("RGB"))
            levels = (pixels // 32).astype(np.int64)  # 8 levels per channel
            codes = levels[..., 0] * 64 + levels[..., 1] * 8 + levels[..., 2]
            histograms.append(np.bincount(codes.ravel(), minlength=512) / codes.size)
            inside = np.asarray(Image.open(masks / class_dir.name / f"{photo.stem}.png")) > 0
            product_means.append(pixels[inside].mean(axis=0))
            labels.append(class_dir.name)
    forest = RandomForestClassifier(300, random_state=0)
    return {
        "photo_colour_histogram": float(cross_val_score(forest, np.array(histograms), labels, cv=5).mean()),
        "product_mean_colour": float(cross_val_score(forest, np.array(product_means), labels, cv=5).mean()),
        "chance": 1 / len(set(labels)),
    }


def main() -> None:
    args = parse_args()
    os.environ.setdefault("VITKIT_PROGRESS", "0")
    runs = []
    for seed in (int(value) for value in args.seeds.split(",")):
        with tempfile.TemporaryDirectory() as work:
            runs.append(train_and_test(args, seed, Path(work)))
        print(json.dumps(runs[-1]), flush=True)
    colour = colour_only(args.photos, args.masks)

    settings = {k: v for k, v in vars(args).items() if k not in ("photos", "masks", "seeds")}
    print(f"\nvit_micro from scratch on {args.photos} ({settings})")
    print(f"{'seed':>4} {'test acc':>8} {'images':>6} {'epochs':>6} {'wall s':>7} {'cpu s':>7} "
          f"{'epoch s (median/fastest)':>25} {'idle est. s':>11} {'load':>5}")
    for run in runs:
        print(f"{run['seed']:>4} {run['test_accuracy']:>8.1%} {run['test_images']:>6} {run['epochs']:>6} "
              f"{run['train_wall_s']:>7.0f} {run['train_cpu_s']:>7.0f} "
              f"{run['median_epoch_s']:>15.2f} / {run['fastest_epoch_s']:<7.2f} {run['idle_estimate_s']:>11.0f} "
              f"{run['load_average']:>5.1f}")
    if colour:
        print(f"colour alone (random forest, 5-fold): photo histogram {colour['photo_colour_histogram']:.1%}, "
              f"product mean colour {colour['product_mean_colour']:.1%}, chance {colour['chance']:.1%}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": settings, "runs": runs, "colour_only": colour}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
