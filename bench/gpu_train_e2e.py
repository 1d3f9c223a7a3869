"""The command users run: ``vitkit train`` on a folder of photos, against timm on the same photos.

    python bench/gpu_train_e2e.py [--photos 8192] [--epochs 4] [--recipes plain,small-data]
    python bench/gpu_train_e2e.py --cpu        # the demo's model on the CPU, no timm

It writes N generated 256-px JPEGs in 4 class folders, then runs ``vitkit train`` itself in a new
process, for each recipe once with the recipe's default augmentation and once with
``--no-augment`` (same backbone, image size and batch for all arms, so that only the augmentation
differs). Per-epoch seconds come from the run's ``history.csv`` (the median of the epochs after
the first, which compiles and fills the decoded-image cache); the process's wall time is shown
beside them. In the same call timm (``vit_base_patch16_224``, ``torch.compile``, AdamW, bf16)
trains on the same decoded photos, once without augmentation and once with the plain recipe's
augmentation done on the GPU: per-image affine matrices (flip, rotation, zoom, translation)
through ``affine_grid``/``grid_sample``, and brightness/contrast jitter, with the same ranges.
One table is printed and saved to ``bench/results/gpu_train_e2e.json``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_vitkit, save_results, table  # noqa: E402

CLASSES = ("bolt", "gear", "lens", "valve")
# The plain recipe's augmentation (vitkit.data.inputconfig.AugmentConfig defaults).
PLAIN_AUGMENT = {"rotation_turns": 0.05, "zoom": 0.1, "translation": 0.1, "brightness": 0.1, "contrast": 0.1}


def _write_photo(args: tuple[Path, int, int]) -> None:
    path, label, seed = args
    rng = np.random.default_rng(seed)
    side = 256
    pixels = rng.integers(0, 90, (side // 8, side // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    image = Image.fromarray(pixels)
    colour = tuple(int(v) for v in rng.integers(120, 256, 3))
    x, y = (int(v) for v in rng.integers(20, side - 120, 2))
    extent = 60 + 15 * label
    shape = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(shape)
    [draw.ellipse, draw.rectangle, draw.chord, draw.pieslice][label](
        (x, y, x + extent, y + extent), fill=255, **({"start": 30, "end": 300} if label >= 2 else {}))
    image.paste(colour, mask=shape)
    image.save(path, quality=90)


def write_photos(root: Path, count: int) -> Path:
    """``root/<class>/NNNNN.jpg``: ``count`` 256-px JPEGs, one simple shape per class."""
    jobs = []
    for index in range(count):
        label = index % len(CLASSES)
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{index:05d}.jpg", label, index))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_photo, jobs, chunksize=64))
    return root


def epoch_seconds(history: Path) -> tuple[float, float]:
    """(first epoch, median of the later epochs) from a run's ``history.csv``."""
    with history.open() as handle:
        seconds = [float(row["seconds"]) for row in csv.DictReader(handle)]
    later = seconds[1:] or seconds
    return seconds[0], statistics.median(later)


def run_vitkit_arm(photos: Path, work: Path, recipe: str, augment: bool, args) -> dict:
    out = work / f"{recipe}-{'aug' if augment else 'noaug'}" / "model.weights.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["train", str(photos), "--out", str(out), "--recipe", recipe, "--backbone", args.backbone,
               "--weights", "none", "--image-size", str(args.image_size), "--batch-size", str(args.batch),
               "--epochs", str(args.epochs), "--patience", "0", "--val-fraction", "0.05"]
    if not augment:
        command.append("--no-augment")
    wall, _ = run_vitkit(*command, log=out.with_name("log.txt"))
    first, later = epoch_seconds(out.with_name("model.history.csv"))
    images = math.floor(args.photos * 0.95)
    return {"arm": f"vitkit {recipe}", "augment": "default" if augment else "off", "first_epoch_s": first,
            "epoch_s": later, "images_per_s": images / later, "process_s": wall}


def decoded(photos: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted(photos.glob("*/*.jpg"))
    labels = np.array([CLASSES.index(p.parent.name) for p in paths])
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths])
    return pixels, labels


def gpu_augment(batch, generator):
    """The plain recipe's augmentation on the GPU: one affine resampling and colour jitter per image."""
    import torch
    import torch.nn.functional as F

    n, device = batch.shape[0], batch.device
    uniform = lambda low, high: torch.empty(n, device=device).uniform_(low, high, generator=generator)  # noqa: E731
    angle = uniform(-1, 1) * PLAIN_AUGMENT["rotation_turns"] * 2 * math.pi
    scale = 1 + uniform(-1, 1) * PLAIN_AUGMENT["zoom"]
    flip = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    shift = torch.stack([uniform(-1, 1), uniform(-1, 1)], 1) * PLAIN_AUGMENT["translation"] * 2
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    warped = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness = uniform(-1, 1)[:, None, None, None] * PLAIN_AUGMENT["brightness"] * 2  # of the [-1, 1] range
    contrast = 1 + uniform(-1, 1)[:, None, None, None] * PLAIN_AUGMENT["contrast"]
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    return ((warped - mean) * contrast + mean + brightness).clamp(-1, 1)


def run_timm_arm(pixels: np.ndarray, labels: np.ndarray, augment: bool, args) -> dict:
    import timm
    import torch

    device = "cuda"
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=len(CLASSES),
                              img_size=args.image_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model)
    images = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).contiguous()
    targets = torch.from_numpy(labels).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    train = math.floor(len(images) * 0.95)
    seconds = []
    for _ in range(args.epochs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        order = torch.randperm(train, device=device, generator=generator)
        for start in range(0, train - args.batch + 1, args.batch):
            index = order[start:start + args.batch]
            batch = images[index].float() / 127.5 - 1.0
            if augment:
                batch = gpu_augment(batch, generator)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(compiled(batch), targets[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    later = statistics.median(seconds[1:] or seconds)
    return {"arm": "timm compiled", "augment": "GPU affine + jitter" if augment else "off",
            "first_epoch_s": seconds[0], "epoch_s": later, "images_per_s": train / later, "process_s": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="vit_b16")
    parser.add_argument("--recipes", default="plain,small-data")
    parser.add_argument("--no-timm", dest="timm", action="store_false")
    parser.add_argument("--cpu", action="store_true",
                        help="the demo's model on the CPU: 1,200 photos, vit_micro at 48 px, batch 32, no timm")
    parser.add_argument("--work", type=Path, help="keep photos and runs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.cpu:
        args.photos, args.batch, args.image_size, args.backbone, args.timm = 1200, 32, 48, "vit_micro", False
        args.epochs = min(args.epochs, 3)

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        photos = work / "photos"
        if not photos.exists():
            started = time.monotonic()
            write_photos(photos, args.photos)
            print(f"{args.photos} photos written in {time.monotonic() - started:.0f} s", flush=True)
        rows = []
        pixels, labels = decoded(photos, args.image_size) if args.timm else (None, None)
        # The arms with augmentation first: where a GPU call runs out of time, the comparison the
        # targets are set on is the one already printed.
        for augment in (True, False):
            for recipe in args.recipes.split(","):
                rows.append(run_vitkit_arm(photos, work / "runs", recipe, augment, args))
                print(rows[-1], flush=True)
            if args.timm:
                rows.append(run_timm_arm(pixels, labels, augment, args))
                print(rows[-1], flush=True)

    by_arm = {(row["arm"], row["augment"] == "off"): row for row in rows}
    for row in rows:
        plain = by_arm.get((row["arm"], True))
        row["vs_no_augment"] = plain["epoch_s"] / row["epoch_s"] if plain else ""
        timm_row = by_arm.get(("timm compiled", row["augment"] == "off"))
        row["vs_timm"] = row["images_per_s"] / timm_row["images_per_s"] if timm_row else ""
    print(f"\n{args.backbone}, {args.image_size} px, batch {args.batch}, {args.photos} photos, {args.epochs} epochs, "
          f"backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}")
    print(table(rows, ("arm", "augment", "first_epoch_s", "epoch_s", "images_per_s", "vs_no_augment", "vs_timm",
                       "process_s")))
    print("saved", save_results("gpu_train_e2e" + ("_cpu" if args.cpu else ""), {"settings": vars(args) | {"work": None},
                                                                                  "rows": rows}))


if __name__ == "__main__":
    main()
