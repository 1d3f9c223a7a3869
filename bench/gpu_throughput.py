"""GPU throughput of ViT-B/16 + head at 224 px: vitkit against the original recipe and timm.

Three peers, each in its own process, on the same batch size and bf16 mixed precision:

- ``vitkit``: ``vitkit.build_model`` (fused attention, uint8 input, in-model scaling) fed by
  vitkit's own batch stream (``ImageBatches``), trained with Keras ``fit`` and run with
  ``predict``, as ``vitkit train`` / ``vitkit predict`` do;
- ``recipe``: the original notebooks' model, the vit-keras backbone (explicit softmax
  attention, Lambda layers) with the ``Flatten -> BatchNorm -> Dense(21) -> BatchNorm ->
  Dense(n)`` head, on the same Keras backend, fed float32 images scaled to [-1, 1] as those
  notebooks fed them;
- ``timm``: ``vit_base_patch16_224`` in PyTorch with ``torch.compile``, AdamW, bf16 autocast,
  inputs already on the GPU.

Images are synthetic (random uint8), 10 classes. Each peer is timed over ``--steps`` steps
after ``--warmup`` steps that include compilation. The table gives images per second, the
ratio to timm, and model-FLOPs utilisation against the bf16 dense peak of an H100/H200
(989 TFLOP/s), counting 3x the forward FLOPs for a training step.

Usage (on the GPU machine, ``KERAS_BACKEND=jax``)::

    python bench/gpu_throughput.py --batch 128 --steps 50
    python bench/gpu_throughput.py --peers vitkit --tiny      # a quick check on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_FLOPS = 989e12
CLASSES = 10
PEERS = ("vitkit", "recipe", "timm")
VIT_B16 = {"patch_size": 16, "num_layers": 12, "hidden_size": 768, "num_heads": 12, "mlp_dim": 3072}
TINY = {"patch_size": 8, "num_layers": 2, "hidden_size": 32, "num_heads": 4, "mlp_dim": 64}


def forward_flops(config: dict, image_size: int) -> float:
    """Multiply-adds x 2 of one image's forward pass (matrix products and attention)."""
    d, m, p = config["hidden_size"], config["mlp_dim"], config["patch_size"]
    patches = (image_size // p) ** 2
    tokens = patches + 1
    embed = 2 * patches * (p * p * 3) * d
    per_layer = 2 * tokens * (4 * d * d + 2 * d * m) + 2 * 2 * tokens * tokens * d
    return embed + config["num_layers"] * per_layer


# Peers -----------------------------------------------------------------------------------------

def run_vitkit(args, config) -> dict:
    from vitkit.device import configure_xla

    configure_xla()  # as the vitkit command line does
    import keras
    import numpy as np

    import vitkit
    from vitkit.data.batches import ImageBatches
    from vitkit.data.imageset import load_images

    keras.config.set_dtype_policy("mixed_bfloat16" if args.precision == "bf16" else "float32")
    model = vitkit.build_model(CLASSES, backbone=dict(config), image_size=args.image_size, augment=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    pool = 4 * args.batch
    x = rng.integers(0, 256, (pool, args.image_size, args.image_size, 3), dtype=np.uint8)
    y = np.array([str(i % CLASSES) for i in range(pool)])
    images = load_images((x, y), (args.image_size, args.image_size))
    class_names = [str(i) for i in range(CLASSES)]

    def batches(steps, labelled):
        return _Repeat(ImageBatches(images, args.batch, class_names if labelled else None, shuffle=labelled), steps)

    return _measure(args, *keras_steps(model, batches))


def keras_steps(model, make_batches):
    """``(fit, predict)``: the seconds of ``steps`` training or prediction steps of a compiled Keras
    model on ``make_batches(steps, labelled)``, made before the clock starts."""
    def fit(steps):
        batches = make_batches(steps, True)
        started = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        return time.perf_counter() - started

    def predict(steps):
        batches = make_batches(steps, False)
        started = time.perf_counter()
        model.predict(batches, verbose=0)
        return time.perf_counter() - started

    return fit, predict


def _array_batches(x, y):
    """A ``PyDataset`` class whose instances give the same batch (``x, y`` or ``x``) ``steps`` times."""
    import keras

    class Same(keras.utils.PyDataset):
        def __init__(self, steps, labelled):
            super().__init__()
            self.steps, self.labelled = steps, labelled

        def __len__(self):
            return self.steps

        def __getitem__(self, index):
            return (x, y) if self.labelled else (x,)

    return Same


def run_recipe(args, config) -> dict:
    import keras
    import numpy as np

    sys.modules.setdefault("cv2", type(sys)("cv2"))  # vit-keras imports OpenCV only for image files
    from vit_keras import vit

    keras.config.set_dtype_policy("mixed_bfloat16" if args.precision == "bf16" else "float32")
    backbone = vit.build_model(
        image_size=args.image_size, patch_size=config["patch_size"], num_layers=config["num_layers"],
        hidden_size=config["hidden_size"], num_heads=config["num_heads"], mlp_dim=config["mlp_dim"],
        name="vit-b16", classes=1000, dropout=0.1, activation="linear", include_top=False,
        representation_size=None,
    )
    model = keras.Sequential([
        backbone, keras.layers.Flatten(), keras.layers.BatchNormalization(),
        keras.layers.Dense(21, activation=lambda t: keras.activations.gelu(t, approximate=True)),
        keras.layers.BatchNormalization(), keras.layers.Dense(CLASSES, activation="softmax", dtype="float32"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3)).astype("float32") / 127.5 - 1
    y = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, args.batch)]

    return _measure(args, *keras_steps(model, _array_batches(x, y)))


def run_timm(args, config) -> dict:
    import timm
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=CLASSES, img_size=args.image_size,
        patch_size=config["patch_size"], depth=config["num_layers"], embed_dim=config["hidden_size"],
        num_heads=config["num_heads"], mlp_ratio=config["mlp_dim"] / config["hidden_size"],
    ).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    compiled = torch.compile(model)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    pixels = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           device=device, generator=generator)
    labels = torch.randint(0, CLASSES, (args.batch,), device=device, generator=generator)

    def scaled():
        return (pixels.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def fit(steps):
        model.train()
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                loss = torch.nn.functional.cross_entropy(compiled(scaled()), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - started

    @torch.no_grad()
    def predict(steps):
        model.eval()
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                compiled(scaled()).float().softmax(-1)
        sync()
        return time.perf_counter() - started

    return _measure(args, fit, predict)


class _Repeat:
    """A PyDataset that replays another one's batches for a fixed number of steps."""

    def __new__(cls, batches, steps):
        import keras

        class Repeat(keras.utils.PyDataset):
            def __init__(self):
                super().__init__(workers=batches.workers, use_multiprocessing=False,
                                 max_queue_size=batches.max_queue_size)

            def __len__(self):
                return steps

            def __getitem__(self, index):
                return batches[index % len(batches)]

        return Repeat()


def _measure(args, fit, predict) -> dict:
    """Images per second of training and of prediction; prediction steps are 3x shorter, so 3x more."""
    fit(args.warmup)
    train_seconds = fit(args.steps)
    predict(args.warmup)
    predict_seconds = predict(3 * args.steps)
    return {"train_images_per_s": args.steps * args.batch / train_seconds,
            "infer_images_per_s": 3 * args.steps * args.batch / predict_seconds}


# Driver ----------------------------------------------------------------------------------------

def _device_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide model: checks the script on a CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_throughput.json")
    parser.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)  # set in the peer processes
    args = parser.parse_args()
    config = TINY if args.tiny else VIT_B16

    if args.peer:
        result = {"vitkit": run_vitkit, "recipe": run_recipe, "timm": run_timm}[args.peer](args, config)
        print("RESULT " + json.dumps(result), flush=True)
        return

    flops = forward_flops(config, args.image_size)
    rows = {}
    for peer in args.peers.split(","):
        command = [sys.executable, __file__, "--peer", peer, *sys.argv[1:]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        finished = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
        if finished.returncode or not lines:
            print(f"{peer} failed:\n{finished.stderr[-3000:]}", file=sys.stderr)
            continue
        rows[peer] = json.loads(lines[-1][len("RESULT "):])
        print(f"{peer}: {rows[peer]}", flush=True)
    reference = rows.get("timm")
    print(f"\nViT {'tiny' if args.tiny else 'B/16'}, {args.image_size} px, batch {args.batch}, {args.precision}, "
          f"{args.steps} timed steps, on {_device_name()} ({os.environ.get('KERAS_BACKEND', 'tensorflow')} for Keras peers)")
    print(f"{'peer':<8} {'train img/s':>12} {'infer img/s':>12} {'train/timm':>11} {'infer/timm':>11} "
          f"{'train MFU':>10} {'infer MFU':>10}")
    for peer, row in rows.items():
        row["train_mfu"] = row["train_images_per_s"] * 3 * flops / PEAK_BF16_FLOPS
        row["infer_mfu"] = row["infer_images_per_s"] * flops / PEAK_BF16_FLOPS
        if reference:
            row["train_vs_timm"] = row["train_images_per_s"] / reference["train_images_per_s"]
            row["infer_vs_timm"] = row["infer_images_per_s"] / reference["infer_images_per_s"]
        print(f"{peer:<8} {row['train_images_per_s']:>12.0f} {row['infer_images_per_s']:>12.0f} "
              f"{row.get('train_vs_timm', float('nan')):>11.2f} {row.get('infer_vs_timm', float('nan')):>11.2f} "
              f"{row['train_mfu']:>10.1%} {row['infer_mfu']:>10.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": _device_name(), "batch": args.batch, "precision": args.precision,
                                    "image_size": args.image_size, "steps": args.steps,
                                    "forward_gflops_per_image": flops / 1e9, "peers": rows}, indent=2))


if __name__ == "__main__":
    main()
