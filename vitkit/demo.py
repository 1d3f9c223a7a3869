"""``vitkit demo``: the whole path on the bundled sample photos, in a few minutes on a CPU.

photos -> manifests -> train a small ViT from scratch -> save the ``.weights.h5`` file -> reload it
-> evaluate on the held-out split -> predict -> attention maps and an HTML report, all under one
output folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.errors import ConfigError, OutputExistsError
from vitkit.fileio import write_text_atomic
from vitkit.data.manifestbuild import build_manifests

SAMPLE_PHOTOS = Path("examples") / "photos"

# From scratch: a small backbone at a small size trains in minutes on two CPU cores.
FROM_SCRATCH = {"backbone": "vit_micro", "image_size": 48, "epochs": 40, "batch_size": 32,
                "optimizer": "adamw", "learning_rate": 1e-3, "schedule": "cosine", "warmup_epochs": 3,
                "label_smoothing": 0.1, "patience": 0}
# Pretrained: the original recipe's fine-tuning settings.
PRETRAINED = {"image_size": 224, "epochs": 5, "batch_size": 16, "optimizer": "adam",
              "learning_rate": 1e-4, "schedule": "constant", "patience": 5}


def find_sample_photos(photos: str | os.PathLike | None = None) -> Path:
    """The photo folder to use: the given one, else ``examples/photos`` here or beside the package."""
    if photos is not None:
        return Path(photos)
    for candidate in (Path.cwd() / SAMPLE_PHOTOS, Path(__file__).resolve().parents[1] / SAMPLE_PHOTOS):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"the sample photos ({SAMPLE_PHOTOS}) were not found here or beside the vitkit package; "
        f"run the demo from the vitkit source folder or pass --photos DIR (one sub-folder per class)"
    )


def demo_settings(backbone: str | None, weights: str, image_size: Any, epochs: int | None) -> dict[str, Any]:
    """Training options for the demo: the from-scratch recipe, or fine-tuning when weights are given."""
    pretrained = weights not in (None, "none")
    settings = dict(PRETRAINED if pretrained else FROM_SCRATCH)
    settings["backbone"] = backbone or ("vit_b16" if pretrained else FROM_SCRATCH["backbone"])
    settings["weights"] = weights
    if image_size is not None:
        settings["image_size"] = image_size
    if epochs is not None:
        settings["epochs"] = epochs
    return settings


def run_demo(
    out: str | os.PathLike = "vitkit_demo",
    photos: str | os.PathLike | None = None,
    backbone: str | None = None,
    weights: str = "none",
    image_size: Any = None,
    epochs: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Build manifests, train, save, reload, evaluate, predict and explain on the sample photos.

    Args:
        out: output folder; an existing non-empty folder needs ``overwrite``.
        photos: photo folder with one sub-folder per class (default: the bundled samples).
        backbone, weights, image_size, epochs: override the demo's training settings
            (``weights="imagenet21k"`` fine-tunes ViT-B/16 where the checkpoint is available).
        seed: seed of the split and of training.
        overwrite: replace an earlier demo's outputs.
        verbose: print each step and where its outputs went.

    Returns:
        A summary: test accuracy, seconds taken, and the path of every output (also written to
        ``out/summary.json``).
    """
    import keras

    from vitkit.evaluation import evaluate
    from vitkit.explanation.explain import explain
    from vitkit.models.modelfile import load_model
    from vitkit.prediction import predict
    from vitkit.training.train import train

    started = time.monotonic()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} holds an earlier demo; pass --overwrite to replace it or --out DIR")
    say = print if verbose else (lambda *args, **kwargs: None)
    photo_dir = find_sample_photos(photos)
    settings = demo_settings(backbone, weights, image_size, epochs)

    say(f"[1/6] manifests from {photo_dir}")
    manifests = out / "manifests"
    counts = build_manifests(photo_dir, manifests, seed=seed, overwrite=True)
    say("      " + ", ".join(f"{split}: {sum(c.values())} images" for split, c in counts.items()))

    say(f"[2/6] training {settings['backbone']} at {settings['image_size']} px for up to {settings['epochs']} epochs")
    model_path = out / "models" / "demo.weights.h5"
    result = train(manifests / "train.csv", manifests / "val.csv", out=model_path, seed=seed,
                   overwrite=True, verbose=2 if verbose else 0, **settings)

    say(f"[3/6] reloading {model_path}")
    model = load_model(model_path)
    test_csv = manifests / "test.csv"
    first = _first_images(model, test_csv)
    check = keras.ops.convert_to_numpy(result.model(first, training=False))
    again = keras.ops.convert_to_numpy(model(first, training=False))
    reload_difference = float(np.abs(check - again).max())

    say("[4/6] evaluating on the held-out test split")
    metrics = evaluate(model, test_csv, out=out / "evaluation", overwrite=True)

    say("[5/6] predicting")
    predictions = out / "predictions.csv"
    grid = out / "predictions.png"
    predict(model, test_csv, out=predictions, grid=grid, overwrite=True)

    say("[6/6] drawing where the model looks (integrated gradients) and writing the report")
    attention = out / "attention"
    report = out / "report.html"
    explain(model, test_csv, out=attention, report=report, overwrite=True)

    summary = {
        "test_accuracy": metrics["accuracy"],
        "test_images": metrics["images"],
        "best_epoch": result.best_epoch,
        "reload_max_difference": reload_difference,
        "seconds": round(time.monotonic() - started, 1),
        "outputs": {
            "manifests": str(manifests), "model": str(model_path), "history": str(result.history_path),
            "curves": str(result.curves_path), "evaluation": str(out / "evaluation"),
            "predictions": str(predictions), "grid": str(grid), "attention": str(attention),
            "report": str(report),
        },
    }
    summary["outputs"]["summary"] = str(out / "summary.json")
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2), overwrite=True)
    say(f"\ntest accuracy {metrics['accuracy']:.1%} on {metrics['images']} images "
        f"(best epoch {result.best_epoch}), {summary['seconds']:.0f} s in all")
    for name, path in summary["outputs"].items():
        say(f"  {name + ':':<13}{path}")
    return summary


def _first_images(model, manifest: Path, count: int = 8) -> np.ndarray:
    from vitkit.prediction import images_for

    images = images_for(model, manifest, progress=False)
    return images.read(np.arange(min(count, len(images))))
