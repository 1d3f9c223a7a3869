"""Input pipeline: images/s vitkit's cached batch stream delivers, against Keras' directory loader.

Two measurements:

``speed`` (default): on a folder of JPEG photos (generated, one sub-folder per class, or
``--photos DIR``), at 224 px and batch 32:

- vitkit, first epoch: decode every photo into the cache, then stream the batches;
- vitkit, later epochs: shuffled uint8 batches read from the cache by one batch stream, as
  training reads them (a later run's look-up of the cached photos is timed apart);
- ``keras.utils.image_dataset_from_directory``: a ``tf.data`` pipeline that decodes and resizes
  every photo in every epoch, iterated the same way.

``memory``: peak resident memory of a process that reads a manifest of N small photos, caches
them and streams one epoch, for N = 1,000, 10,000 and 100,000, each in a fresh process; it should
stay flat as N grows. The photos and manifests are made beforehand in this process, so what is
measured is the reading side that training, evaluation and prediction run.

Usage::

    python bench/input_pipeline.py --images 2000
    python bench/input_pipeline.py memory
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("bottle", "can", "carton", "mug")


def make_photos(folder: Path, count: int, size: int, suffix: str = ".jpg") -> Path:
    """``count`` noisy photo-sized images with a coloured square, spread over four class folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / CLASSES[i % len(CLASSES)]
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
        image.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (size // 4, size // 4, size // 2, size // 2))
        image.save(target / f"photo_{i:06d}{suffix}", quality=90)
    return folder


def _stream_epoch(batches) -> int:
    seen = 0
    for index in range(len(batches)):
        seen += len(batches[index][0])
    batches.on_epoch_end()
    return seen


def speed(args) -> dict:
    from vitkit.data.batches import ImageBatches
    from vitkit.data.imageset import load_images

    size = (args.image_size, args.image_size)
    with tempfile.TemporaryDirectory() as scratch:
        photos = args.photos or make_photos(Path(scratch) / "photos", args.images, args.photo_size)
        cache = Path(scratch) / "cache"
        started = time.perf_counter()
        images = load_images(photos, size, cache_dir=cache, progress=False)
        batches = ImageBatches(images, args.batch, sorted(set(images.labels)), shuffle=True)
        count = _stream_epoch(batches)
        first = count / (time.perf_counter() - started)
        started = time.perf_counter()
        images = load_images(photos, size, cache_dir=cache, progress=False)  # a later run: index lookups only
        batches = ImageBatches(images, args.batch, sorted(set(images.labels)), shuffle=True)
        reopen = time.perf_counter() - started
        cached = []
        for _ in range(args.epochs):
            started = time.perf_counter()
            cached.append(_stream_epoch(batches) / (time.perf_counter() - started))

        import keras

        loader = []
        for _ in range(args.epochs):
            dataset = keras.utils.image_dataset_from_directory(
                photos, image_size=size, batch_size=args.batch, shuffle=True, verbose=False)
            started = time.perf_counter()
            seen = sum(int(batch[0].shape[0]) for batch in dataset)
            loader.append(seen / (time.perf_counter() - started))
    result = {"images": count, "image_size": args.image_size, "batch": args.batch, "cpu_cores": os.cpu_count(),
              "vitkit_first_epoch": first, "vitkit_cached_epoch": max(cached), "keras_loader_epoch": max(loader),
              "vitkit_reopen_seconds": reopen}
    result["cached_vs_keras"] = result["vitkit_cached_epoch"] / result["keras_loader_epoch"]
    print(f"\n{count} JPEG photos {args.photo_size} px -> {args.image_size} px, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores (images/s, best of {args.epochs} epochs)")
    print(f"vitkit, first epoch (decode into the cache): {first:9.0f}")
    print(f"vitkit, epochs from the cache:               {result['vitkit_cached_epoch']:9.0f}")
    print(f"keras image_dataset_from_directory:         {result['keras_loader_epoch']:9.0f}")
    print(f"a later run finds the cached photos in {reopen:.2f} s")
    print(f"cached vitkit / Keras loader: {result['cached_vs_keras']:.1f}x")
    return result


def memory(args) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        manifests = write_manifests(make_photos(Path(scratch) / "photos", max(args.counts), 32, ".png"),
                                    Path(scratch), args.counts)
        for count, manifest in manifests.items():
            finished = subprocess.run(
                [sys.executable, __file__, "memory-child", "--manifest", str(manifest),
                 "--cache", str(Path(scratch) / f"cache_{count}")],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if finished.returncode:
                raise SystemExit(finished.stderr[-3000:])
            rows[count] = json.loads(finished.stdout.strip().splitlines()[-1])
            print(f"{count:>7} photos: peak RSS {rows[count]['peak_rss_mb']:7.1f} MB, "
                  f"{rows[count]['seconds']:.0f} s", flush=True)
    smallest = rows[min(rows)]["peak_rss_mb"]
    print(f"\n| photos | peak RSS | above the import baseline | above {min(rows):,} photos |")
    print("|-------:|---------:|--------------------------:|------------:|")
    for count, row in rows.items():
        print(f"| {count:,} | {row['peak_rss_mb']:.1f} MB | {row['peak_rss_mb'] - row['baseline_rss_mb']:.0f} MB "
              f"| {row['peak_rss_mb'] - smallest:.1f} MB |")
    return {"memory": rows}


def write_manifests(photos: Path, folder: Path, counts: list[int]) -> dict[int, Path]:
    """A manifest of the first N photos (every class alike) for each N, in the format vitkit builds."""
    files = sorted(photos.rglob("*.png"), key=lambda path: path.name)
    manifests = {}
    for count in sorted(counts):
        manifests[count] = folder / f"manifest_{count}.csv"
        with open(manifests[count], "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["base_path", "type_dir", "file_name", "label"])
            writer.writerows(["photos", path.parent.name, path.name, path.parent.name] for path in files[:count])
    return manifests


def memory_child(args) -> None:
    """One process: read a manifest -> cache its photos -> one epoch of batches; prints its peak RSS."""
    import keras  # counted in the baseline, like every real run

    from vitkit.data.batches import ImageBatches
    from vitkit.data.imageset import load_images

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    images = load_images(args.manifest, (32, 32), cache_dir=args.cache, progress=False)
    _stream_epoch(ImageBatches(images, 64, list(CLASSES), shuffle=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "baseline_rss_mb": baseline, "seconds": time.perf_counter() - started,
                      "backend": keras.backend.backend()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("speed", "memory", "memory-child"), default="speed")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--photos", type=Path, help="use this class-folder tree instead of generated photos")
    parser.add_argument("--photo-size", type=int, default=320, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "input_pipeline.json")
    args = parser.parse_args()
    if args.mode == "memory-child":
        memory_child(args)
        return
    result = speed(args) if args.mode == "speed" else memory(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = args.out.with_name(f"{args.out.stem}_{args.mode}.json")
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
