"""Speed of attention maps on the CPU: 64 images at 224 px, a ViT-B/16-sized model (random weights).

    python bench/explain_speed.py [--images 64] [--repeats 3] [--threads N]

(a) vitkit prediction + rollout maps (one forward pass, maps resized to the image) against plain
    vitkit prediction: target at most 1.15x.
(b) vitkit rollout maps against ``vit_keras.visualize.attention_map`` on the same weights, one
    image per call as its API takes them: target at least 5x faster.

Every timing is taken in this one process after a warm-up call of each (compilation is not
timed). Shared CPUs change speed from minute to minute, so peers are timed chunk by chunk
(a batch of images at a time), alternating, and only ratios between peers measured side by
side are reported; (a) is the median of --repeats passes.
Prints a table and writes bench/results/explain_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("VITKIT_PROGRESS", "0")


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "explain_speed.json")
    args = parser.parse_args()

    import keras

    from vitkit.models.compat import to_vit_keras
    from vitkit.data.imageset import load_images
    from vitkit.explanation.attention import explain_images
    from vitkit.models.classifier import build_model
    from vitkit.prediction import predict_probabilities

    size = (args.image_size, args.image_size)
    model = build_model(["a", "b", "c", "d"], backbone="vit_b16", weights=None, image_size=size,
                        augment=False, seed=0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.images, *size, 3), dtype=np.uint8)
    images = load_images(pixels, size)

    chunks = [images.subset(np.arange(start, min(start + args.batch_size, args.images)))
              for start in range(0, args.images, args.batch_size)]

    def predict(chunk):
        predict_probabilities(model, chunk, batch_size=args.batch_size)

    def rollout(chunk):
        explain_images(model, chunk, method="rollout", batch_size=args.batch_size, progress=False).maps()

    # Shared CPUs change speed from one minute to the next, so peers are timed chunk by chunk,
    # alternating which goes first, and the chunks' times are summed.
    predict(chunks[0])
    rollout(chunks[0])
    runs = {"predict": [], "predict+rollout": []}
    for _ in range(args.repeats):
        totals = {"predict": 0.0, "predict+rollout": 0.0}
        for i, chunk in enumerate(chunks):
            order = [("predict", predict), ("predict+rollout", rollout)]
            for label, function in order if i % 2 == 0 else order[::-1]:
                totals[label] += timed(lambda: function(chunk))
        for label, seconds in totals.items():
            runs[label].append(seconds)
    plain, ours_a = statistics.median(runs["predict"]), statistics.median(runs["predict+rollout"])

    from vit_keras import visualize

    twin = to_vit_keras(model)
    visualize.attention_map(twin, pixels[0])  # warm-up, as for vitkit
    ours, theirs = 0.0, 0.0
    for i, chunk in enumerate(chunks):
        start = i * args.batch_size
        ours += timed(lambda: rollout(chunk))
        theirs += timed(lambda: [visualize.attention_map(twin, image) for image in pixels[start:start + len(chunk)]])

    results = {
        "images": args.images, "image_size": args.image_size, "batch_size": args.batch_size,
        "model": "vit_b16 dimensions, random weights", "backend": keras.backend.backend(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "seconds": {"(a) vitkit predict": plain, "(a) vitkit predict + rollout maps": ours_a,
                    "(b) vitkit predict + rollout maps": ours, "(b) vit_keras attention_map": theirs},
        "runs_a": runs,
        "ratio_a_rollout_over_predict": ours_a / plain,
        "target_a": 1.15,
        "ratio_b_vit_keras_over_vitkit": theirs / ours,
        "target_b": 5.0,
    }
    rows = [
        ("(a) vitkit predict", plain, ""),
        ("(a) vitkit predict + rollout maps", ours_a, f"{ours_a / plain:.3f}x predict  (target <= 1.15x)"),
        ("(b) vitkit predict + rollout maps", ours, ""),
        ("(b) vit_keras attention_map", theirs, f"vitkit is {theirs / ours:.1f}x faster  (target >= 5x)"),
    ]
    print(f"{args.images} images, {args.image_size} px, ViT-B/16 dimensions, {keras.backend.backend()} on "
          f"{os.cpu_count()} CPUs; (a) median of {args.repeats}, (b) once, peers alternating chunk by chunk")
    print(f"{'':38s}{'seconds':>9s}  {'images/s':>9s}")
    for label, seconds, note in rows:
        print(f"{label:38s}{seconds:9.2f}  {args.images / seconds:9.1f}  {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
