"""Data-parallel training throughput of ViT-B/16 + head on 1, 2, ... GPUs, in one process.

Each arm is ``vitkit train --devices N``'s set-up: the devices chosen by
``vitkit.training.parallel.plan(N)`` (``keras.distribution.DataParallel`` on JAX, ``MirroredStrategy`` on
TensorFlow; N = 1 is the plain single-device path), the model built, prepared and compiled in
its scope, fed by vitkit's batch stream (``ImageBatches``) with N x the same per-device batch
of synthetic uint8 images, trained with Keras ``fit``. After ``--warmup`` steps (compilation),
the arms are timed in ``--rounds`` rounds of ``--steps`` steps, alternating, so that load
changes hit every arm alike; the table gives each arm's median images per second, its
speed-up over one device and its scaling efficiency (speed-up / N), and the model-FLOPs
utilisation per GPU against the bf16 dense peak of an H100/H200.

NCCL's NVLink multicast (NVLS) is turned off unless ``NCCL_NVLS_ENABLE`` is set: on machines
whose GPUs are shared it can take them out of service.

Usage (GPU machine, JAX backend)::

    KERAS_BACKEND=jax python bench/multi_gpu.py --devices 1,2 --per-device-batch 128
    KERAS_BACKEND=jax python bench/multi_gpu.py --devices 1,2,4,8

A check of the script on a CPU, with virtual devices and a 2-layer, 32-wide model::

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python bench/multi_gpu.py --tiny --devices 1,2 --image-size 32 --per-device-batch 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save_results, table  # noqa: E402
from gpu_throughput import CLASSES, PEAK_BF16_FLOPS, TINY, VIT_B16, _device_name, _Repeat, forward_flops  # noqa: E402


def build_arms(args, config, counts: list[int]) -> dict[int, tuple]:
    """For each device count: its plan, a compiled model in its scope, and its batch stream."""
    import keras
    import numpy as np

    import vitkit
    from vitkit.data.batches import ImageBatches
    from vitkit.data.imageset import load_images
    from vitkit.training.parallel import plan

    keras.config.set_dtype_policy("mixed_bfloat16" if args.precision == "bf16" else "float32")
    pool = 2 * max(counts) * args.per_device_batch
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (pool, args.image_size, args.image_size, 3), dtype=np.uint8)
    y = np.array([str(i % CLASSES) for i in range(pool)])
    images = load_images((x, y), (args.image_size, args.image_size))
    class_names = [str(i) for i in range(CLASSES)]
    arms = {}
    for count in counts:
        parallel = plan(count)
        with parallel.scope():
            model = vitkit.build_model(class_names, backbone=dict(config), image_size=args.image_size,
                                       augment=False, seed=0)
            parallel.prepare(model)
            model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss="categorical_crossentropy",
                          metrics=["accuracy"])
            batches = ImageBatches(images, args.per_device_batch * count, class_names, shuffle=True)
        arms[count] = (parallel, model, batches)
    return arms


def fit_seconds(arm, steps: int) -> float:
    """Wall seconds of ``fit`` over ``steps`` steps of one arm."""
    parallel, model, batches = arm
    with parallel.scope():
        started = time.perf_counter()
        model.fit(_Repeat(batches, steps), epochs=1, verbose=0)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,2", help="comma-separated device counts; 1 is always measured (default 1,2)")
    parser.add_argument("--per-device-batch", type=int, default=128, help="images per device and step (default 128)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing, compilation included (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, arms alternating (default 3)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide model: checks the script on a CPU")
    args = parser.parse_args()
    counts = sorted({1} | {int(count) for count in args.devices.split(",")})  # speed-ups are against 1
    config = TINY if args.tiny else VIT_B16

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    from vitkit.device import configure_xla

    configure_xla()  # as the vitkit command line does
    arms = build_arms(args, config, counts)
    for arm in arms.values():
        fit_seconds(arm, args.warmup)
    samples: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(args.rounds):
        for count, arm in arms.items():
            samples[count].append(args.steps * args.per_device_batch * count / fit_seconds(arm, args.steps))

    flops = forward_flops(config, args.image_size)
    base = statistics.median(samples[1])
    rows = []
    for count in counts:
        rate = statistics.median(samples[count])
        rows.append({"devices": count, "global batch": args.per_device_batch * count,
                     "images/s": round(rate, 1), "speed-up": round(rate / base, 3),
                     "efficiency": round(rate / base / count, 3),
                     "MFU per GPU": round(rate * 3 * flops / count / PEAK_BF16_FLOPS, 4),
                     "samples": [round(value, 1) for value in samples[count]]})
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"ViT {'tiny' if args.tiny else 'B/16'}, {args.image_size} px, {args.per_device_batch} images per device, "
          f"{args.precision}, median of {args.rounds} rounds of {args.steps} steps, on {_device_name()} ({backend})")
    print(table([{**row, "images/s": f"{row['images/s']:.0f}", "speed-up": f"{row['speed-up']:.2f}x",
                  "efficiency": f"{row['efficiency']:.0%}", "MFU per GPU": f"{row['MFU per GPU']:.1%}"}
                 for row in rows], ["devices", "global batch", "images/s", "speed-up", "efficiency", "MFU per GPU"]))
    path = save_results("multi_gpu", {
        "device": _device_name(), "backend": backend, "model": "tiny" if args.tiny else "vit_b16",
        "image_size": args.image_size, "per_device_batch": args.per_device_batch, "precision": args.precision,
        "steps": args.steps, "rounds": args.rounds, "forward_gflops_per_image": flops / 1e9, "arms": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
