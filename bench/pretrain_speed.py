"""Pre-training throughput against supervised training of the same backbone, in one process.

    python bench/pretrain_speed.py [--image-size 64] [--batch 32] [--steps 8] [--repeats 3]

The small-data recipe's backbone (``vit_micro``, convolutional stem, locality attention, drop
path 0.1) at ``--image-size``, batch ``--batch``, through Keras ``fit`` on a stream of random
uint8 images:

- ``pretrain``: ``vitkit pretrain``'s model (default augmentation, mask ratio 0.6, L1 on
  normalized patches, AdamW);
- ``pretrain-dino``: ``vitkit pretrain --method dino``'s (2 global and 4 local views, student
  and EMA teacher, 1024 prototypes, AdamW); images/s counts photos, not views;
- ``train``: the small-data recipe's classifier step (RandAugment, label smoothing, AdamW), 10
  classes.

The arms alternate, one ``fit`` of ``--steps`` batches per repeat after a warm-up fit (compilation);
each reports the median images/s over its repeats. Prints a table and writes
bench/results/pretrain_speed.json, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from common import save_results, table  # noqa: E402
from vitkit.models.classifier import build_model  # noqa: E402
from vitkit.training.fitting import make_optimizer  # noqa: E402
from vitkit.training.pretrain import build_pretraining_model  # noqa: E402
from vitkit.training.pretrainsettings import resolve_pretrain_settings  # noqa: E402
from vitkit.training.settings import resolve_settings  # noqa: E402


class RandomImages(keras.utils.PyDataset):
    def __init__(self, size: int, batch: int, steps: int, labels: int | None):
        super().__init__()
        rng = np.random.default_rng(0)
        self.x = rng.integers(0, 256, (steps, batch, size, size, 3), dtype=np.uint8)
        self.y = None if labels is None else np.eye(labels, dtype=np.float32)[rng.integers(0, labels, (steps, batch))]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return (self.x[index],) if self.y is None else (self.x[index], self.y[index])


def pretrain_arm(size: int, batch: int, steps: int, method: str = "simmim"):
    settings = resolve_pretrain_settings(method=method, image_size=size, batch_size=batch, epochs=10)
    model = build_pretraining_model(settings, steps)
    model.compile(optimizer=make_optimizer(settings, settings.epochs, steps))
    return model, RandomImages(size, batch, steps, None)


def train_arm(size: int, batch: int, steps: int):
    settings = resolve_settings(recipe="small-data", image_size=size, batch_size=batch, epochs=10)
    model = build_model([str(i) for i in range(10)], settings.backbone, None, settings.image_size,
                        **settings.model_options())
    model.compile(optimizer=make_optimizer(settings, settings.epochs, steps),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=settings.label_smoothing))
    return model, RandomImages(size, batch, steps, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    keras.utils.set_random_seed(0)
    arms = {"pretrain": pretrain_arm(args.image_size, args.batch, args.steps),
            "pretrain-dino": pretrain_arm(args.image_size, args.batch, args.steps, "dino"),
            "train": train_arm(args.image_size, args.batch, args.steps)}
    for model, data in arms.values():
        model.fit(data, epochs=1, verbose=0)  # compiles
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, (model, data) in arms.items():
            started = time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - started))
    rows = [{"arm": name, "images/s": round(statistics.median(values), 1),
             "relative": round(statistics.median(values) / statistics.median(rates["train"]), 2)}
            for name, values in rates.items()]
    print(f"vit_micro (small-data: conv stem, locality attention), {args.image_size} px, batch {args.batch}, "
          f"{keras.backend.backend()}, load before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(table(rows, ["arm", "images/s", "relative"]))
    save_results("pretrain_speed", {"args": vars(args), "rates": rates, "rows": rows,
                                    "load_before": load_before, "load_after": os.getloadavg()})


if __name__ == "__main__":
    main()
