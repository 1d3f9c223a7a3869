"""Do the attention maps point at the product? Measured against ground-truth product masks.

    python bench/attention_quality.py [--model M.weights.h5] [--photos examples/photos]
                                      [--masks examples/masks] [--epochs 30]

For every photo ``PHOTOS/<class>/<stem>.<ext>`` with a mask ``MASKS/<class>/<stem>.png``
(255 = product) and for each map method it reports, over the test images:

- energy in mask: the share of the map's total value that falls on the product;
- pointing game: how often the map's maximum lies on the product, strictly, and with the
  tolerance of Zhang et al. 2016 (15 pixels at 224 px, scaled to the model's input size: a
  maximum within that distance of the product is a hit);

beside what a uniform map gets (energy and hit rate = the product's share of the image) and a
centred Gaussian (the "products are in the middle" prior). Maps and masks are compared at the
model's input size, the mask brought there with the model's resize mode, each map as
``vitkit explain`` ships it (``Explanation.maps``): a map per pixel (``integrated``) as it is, a
map per patch resized bilinearly. The seconds of each method (decoding excluded, the step's
compilation included) come with it.

Without ``--model`` a small model is trained first, from scratch on the train/val split of the
photos (vit_micro at 48 px, AdamW 1e-3 with cosine decay), and the test split is measured.
Prints a table and writes bench/results/attention_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TOLERANCE_AT_224 = 15

METHODS = {
    "integrated gradients (default)": {"method": "integrated"},
    "rollout (mean)": {"method": "rollout"},
    "rollout (max, discard 0.9)": {"method": "rollout", "head_fusion": "max", "discard_ratio": 0.9},
    "gradient (predicted class)": {"method": "gradient"},
    "first layer": {"method": "layer", "layer": 0},
    "last layer": {"method": "layer", "layer": -1},
}


def energy_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: sum of the map on the mask / sum of the map (a flat zero map counts as uniform)."""
    maps = maps.reshape(len(maps), -1).astype(np.float64)
    masks = masks.reshape(len(masks), -1).astype(np.float64)
    total = maps.sum(axis=1)
    inside = (maps * masks).sum(axis=1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1), masks.mean(axis=1))


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Per image: is the map's maximum on the mask, or within ``tolerance`` pixels of it? Ties
    share the hit (the mean over the tied pixels)."""
    flat = maps.reshape(len(maps), -1)
    peaks = flat >= flat.max(axis=1, keepdims=True) - 1e-6
    near = dilate(masks, tolerance) if tolerance > 0 else masks
    return (peaks & near.reshape(len(near), -1)).sum(axis=1) / peaks.sum(axis=1)


def dilate(masks: np.ndarray, radius: float) -> np.ndarray:
    """``(n, height, width)`` bool masks grown by a disk: every pixel within ``radius`` of the mask."""
    reach = int(np.floor(radius))
    padded = np.pad(masks, ((0, 0), (reach, reach), (reach, reach)))
    height, width = masks.shape[1:]
    grown = np.zeros_like(masks)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy * dy + dx * dx <= radius * radius:
                grown |= padded[:, reach + dy:reach + dy + height, reach + dx:reach + dx + width]
    return grown


def centre_maps(count: int, size: tuple[int, int]) -> np.ndarray:
    """A Gaussian centred in the image, sigma a quarter of each side."""
    rows = (np.arange(size[0]) + 0.5) / size[0] - 0.5
    cols = (np.arange(size[1]) + 0.5) / size[1] - 0.5
    bump = np.exp(-(rows[:, None] ** 2 + cols[None, :] ** 2) / (2 * 0.25 ** 2))
    return np.broadcast_to(bump, (count, *size))


def load_masks(names: list[str], photos: Path, masks_dir: Path, size: tuple[int, int], resize_mode: str) -> np.ndarray:
    """``(n, height, width)`` bool product masks, resized like the photos were."""
    from vitkit.data.images import load_image

    masks = []
    for name in names:
        relative = Path(name).resolve().relative_to(photos.resolve())
        path = masks_dir / relative.with_suffix(".png")
        if not path.is_file():
            raise SystemExit(f"no mask {path} for {name}")
        masks.append(load_image(path, size, resize_mode)[..., 0] >= 128)
    return np.stack(masks)


def train_small_model(photos: Path, work: Path, epochs: int, image_size: int, seed: int) -> tuple[Path, Path]:
    """Train vit_micro from scratch on the train/val split; returns the model and the test manifest."""
    from vitkit.data.manifestbuild import build_manifests
    from vitkit.training.train import train

    manifests = work / "manifests"
    build_manifests(photos, manifests, val_fraction=0.15, test_fraction=0.2, seed=seed)
    model_path = work / "quality_model.weights.h5"
    train(manifests / "train.csv", manifests / "val.csv", out=model_path, backbone="vit_micro", weights="none",
          image_size=image_size, epochs=epochs, batch_size=16, learning_rate=1e-3, optimizer="adamw",
          weight_decay=0.05, schedule="cosine", warmup_epochs=2, patience=0, seed=seed, overwrite=True, verbose=0)
    return model_path, manifests / "test.csv"


def measure(model_path: Path, data: str, photos: Path, masks_dir: Path, methods: dict = METHODS) -> dict:
    """Every method's scores on the photos ``data`` names (with their masks under ``masks_dir``), the
    two baselines', and what they were measured on."""
    from vitkit.explanation.attention import explain_images
    from vitkit.models.modelfile import load_model
    from vitkit.prediction import images_for

    model = load_model(model_path)
    images = images_for(model, data)
    size = tuple(model.spec.image_size)
    masks = load_masks(images.names, photos, masks_dir, size, model.spec.resize_mode)
    area = masks.reshape(len(masks), -1).mean(axis=1)
    tolerance = TOLERANCE_AT_224 * min(size) / 224

    def scores(maps: np.ndarray) -> dict:
        energy = float(energy_in_mask(maps, masks).mean())
        return {"energy_in_mask": energy, "energy_over_share": energy / float(area.mean()),
                "pointing_game": float(pointing_hits(maps, masks).mean()),
                "pointing_game_tolerance": float(pointing_hits(maps, masks, tolerance).mean())}

    rows = {}
    accuracy = None
    for label, options in methods.items():
        started = time.perf_counter()
        result = explain_images(model, images, progress=False, **options)
        rows[label] = {**scores(result.maps()), "resolution": result.resolution,
                       "seconds": time.perf_counter() - started}
        if result.correct is not None:
            accuracy = float(result.correct.mean())
    rows["centred Gaussian (baseline)"] = scores(centre_maps(len(masks), size))
    rows["uniform map (baseline)"] = {"energy_in_mask": float(area.mean()), "energy_over_share": 1.0,
                                      "pointing_game": float(area.mean()),
                                      "pointing_game_tolerance": float(dilate(masks, tolerance).mean())}
    return {"images": len(images), "image_size": list(size), "accuracy": accuracy, "mask_share": float(area.mean()),
            "tolerance_pixels": tolerance, "methods": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained .weights.h5 (default: train a small one)")
    parser.add_argument("--data", help="images to measure: manifest, folder or files (default: the test split, "
                                       "or every photo with --model)")
    parser.add_argument("--photos", type=Path, default=ROOT / "examples" / "photos")
    parser.add_argument("--masks", type=Path, default=ROOT / "examples" / "masks")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="folder for the trained model and manifests (default: temporary)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attention_quality.json")
    args = parser.parse_args()

    os.environ.setdefault("VITKIT_PROGRESS", "0")
    work = args.work or Path(tempfile.mkdtemp(prefix="vitkit_quality_"))
    data = args.data
    if args.model is None:
        model_path, test_manifest = train_small_model(args.photos, work, args.epochs, args.image_size, args.seed)
        data = data or str(test_manifest)
    else:
        model_path = args.model
        data = data or str(args.photos)
    measured = measure(model_path, data, args.photos, args.masks)
    rows, accuracy, size, area, tolerance, count = (measured[key] for key in (
        "methods", "accuracy", "image_size", "mask_share", "tolerance_pixels", "images"))

    print(f"{count} images at {size[0]}x{size[1]}, model {model_path}"
          + (f", accuracy {accuracy:.1%}" if accuracy is not None else "")
          + f"; mask share {area:.3f}; tolerance {tolerance:.1f} px")
    print(f"{'map':32s}{'energy in mask':>16s}{'/ share':>9s}{'pointing game':>15s}{'+ tolerance':>13s}{'seconds':>9s}")
    for label, values in rows.items():
        seconds = f"{values['seconds']:9.1f}" if "seconds" in values else ""
        print(f"{label:32s}{values['energy_in_mask']:16.3f}{values['energy_over_share']:8.2f}x"
              f"{values['pointing_game']:15.3f}{values['pointing_game_tolerance']:13.3f}{seconds}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(model_path), **measured,
                                    "epochs": args.epochs if args.model is None else None}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
