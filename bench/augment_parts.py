"""Where the fused training augmentation spends its time: each part timed alone, per batch.

    KERAS_BACKEND=jax python bench/augment_parts.py --batch 128 --size 224

Times, compiled as training compiles them (``jax.jit`` / ``tf.function``), the median of
``--repeats`` calls of: a copy of the batch (the floor), the plain and small-data recipes'
whole augmentation, and the small-data augmentation split into its resampling (zoom and the two
RandAugment rounds' geometry) and its colour steps, and each colour operation alone on every
image. Prints one table (ms per batch) and writes bench/results/augment_parts.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import keras  # noqa: E402

from augment_speed import RECIPE_AUGMENT, compiled, timed  # noqa: E402
from common import save_results, table  # noqa: E402
from vitkit.data import colour  # noqa: E402
from vitkit.data.preprocessing import Augment, BatchDraws  # noqa: E402


class Part(keras.layers.Layer):
    """The small-data recipe's draws, applying only ``part``: ``warp``, ``colour``, or one colour
    operation (``name=amount`` drawn for every image)."""

    def __init__(self, part: str, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.part = part
        self.options = RECIPE_AUGMENT["small-data"]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        draws = BatchDraws(images, self.seed_generator)
        draws.draw_options(self.options)
        for _ in range(self.options.randaugment_ops):
            draws.draw_randaugment_round(self.options.randaugment_magnitude)
        if self.part == "warp":
            draws.colour_steps = []
            return draws.apply(images)
        if self.part == "colour":
            draws.reflected, draws.blanked = [], []
            return draws.apply(images)
        name, low, high = self.part.split(":")
        return colour.adjust(images, {name: draws.uniform(float(low), float(high))})


class Copy(keras.layers.Layer):
    def call(self, images, training=None):
        return images + 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    images = keras.ops.convert_to_tensor(
        np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32"))
    layers = {
        "copy of the batch": Copy(),
        "plain: whole augmentation": Augment(RECIPE_AUGMENT["plain"], seed=0),
        "small-data: whole augmentation": Augment(RECIPE_AUGMENT["small-data"], seed=0),
        "small-data: resampling only": Part("warp"),
        "small-data: colour steps only": Part("colour"),
        "brightness, every image": Part("brightness:-60:60"),
        "contrast, every image": Part("contrast:1:1.25"),
        "colour, every image": Part("colour:-0.45:0.45"),
        "autocontrast, every image": Part("autocontrast:1:1"),
        "sharpness, every image": Part("sharpness:-0.45:0.45"),
        "solarize, every image": Part("solarize:192:255"),
    }
    seconds = timed({name: compiled(layer, images) for name, layer in layers.items()}, args.repeats)
    rows = [{"part": name, "ms": 1000 * statistics.median(values)} for name, values in seconds.items()]
    print(f"\n{keras.backend.backend()}, batch {args.batch} x {args.size} px, median of {args.repeats}")
    print(table(rows, ["part", "ms"]))
    save_results("augment_parts", {"batch": args.batch, "size": args.size, "rows": rows})


if __name__ == "__main__":
    main()
