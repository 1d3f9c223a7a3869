"""Speed of the in-model training augmentation on the CPU: vitkit's fused augmentation against the
chain of Keras preprocessing layers it replaced, in one process.

    python bench/augment_speed.py [--repeats 7] [--shapes 32x64,16x224] [--no-step]
    KERAS_BACKEND=jax python bench/augment_speed.py

(a) One augmented batch, per recipe's augmentation (``plain``: flip, rotation, zoom,
    translation, brightness, contrast; ``small-data``: zoom and two RandAugment rounds), at each
    ``BATCHxPIXELS`` shape: the Keras layers (``RandomFlip``, ``RandomRotation``...,
    and a RandAugment that runs its ten Keras layers on the whole batch every round, as vitkit
    did before) against ``vitkit.data.preprocessing.Augment``.
(b) The demo's model (``vit_micro`` at 48 px, batch 32, the small-data recipe): one training
    step with either augmentation and without any, and the share of the step spent augmenting,
    measured two ways: ``(step - step without augmentation) / step``, and the augmentation of
    that batch timed alone against the step.

Both peers run compiled as training runs them: ``tf.function`` on TensorFlow (``vitkit train``
turns on op determinism there, which keeps XLA off), ``jax.jit`` on JAX; compilation is not
timed. Peers are timed alternately: (a) gives the median of ``--repeats`` calls, (b) the
fastest. Prints a table and
writes bench/results/augment_speed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from common import save_results, table  # noqa: E402
from vitkit.data.preprocessing import Augment  # noqa: E402
from vitkit.data.inputconfig import AugmentConfig  # noqa: E402
from vitkit.training.recipes import PLAIN, SMALL_DATA  # noqa: E402

RECIPE_AUGMENT = {"plain": AugmentConfig(),
                  "small-data": AugmentConfig.from_dict(dict(SMALL_DATA.options["augment"]))}
assert PLAIN.options["augment"] is True   # the plain recipe takes AugmentConfig's defaults


# The peer: vitkit's augmentation before it was fused, Keras layers one after another ---------


class KerasLayerAugment(keras.layers.Layer):
    """``AugmentConfig`` applied by Keras' preprocessing layers, one resampling per layer."""

    def __init__(self, options: AugmentConfig, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.steps = _keras_steps(options, seed)

    def build(self, input_shape):
        for step in self.steps:
            step.build(input_shape)

    def call(self, images, training=None):
        if not training:
            return images
        for step in self.steps:
            images = step(images, training=True)
        return images


def _keras_steps(config: AugmentConfig, seed: int | None) -> list:
    layers = keras.layers
    steps = []
    if config.flip:
        steps.append(layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        steps.append(layers.RandomRotation(config.rotation, seed=seed))
    if config.zoom:
        steps.append(layers.RandomZoom(config.zoom, config.zoom, seed=seed))
    if config.translation:
        steps.append(layers.RandomTranslation(config.translation, config.translation, seed=seed))
    if config.brightness:
        steps.append(layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed))
    if config.contrast:
        steps.append(layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    if config.randaugment_ops:
        steps.append(KerasLayerRandAugment(config.randaugment_ops, config.randaugment_magnitude, seed=seed))
    return steps


class KerasLayerRandAugment(keras.layers.Layer):
    """Every round runs all ten operations on the whole batch and keeps one per image."""

    def __init__(self, num_ops: int, m: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        layers, value_range = keras.layers, (0, 255)
        self.num_ops = num_ops
        self.ops_layers = [
            layers.Identity(),
            layers.RandomRotation(30.0 / 360.0 * m, fill_mode="constant", seed=seed),
            layers.RandomShear(0.3 * m, 0.3 * m, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.3 * m, 0.3 * m, fill_mode="constant", seed=seed),
            layers.RandomBrightness(0.5 * m, value_range=value_range, seed=seed),
            layers.RandomContrast(0.5 * m, value_range=value_range, seed=seed),
            layers.RandomColorDegeneration(0.9 * m, value_range=value_range, seed=seed),
            layers.RandomSharpness((0.5 - 0.45 * m, 0.5 + 0.45 * m), value_range=value_range, seed=seed),
            layers.Solarization(threshold_factor=(1.0 - 0.5 * m, 1.0), value_range=value_range, seed=seed),
            layers.AutoContrast(value_range=value_range),
        ]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        for layer in self.ops_layers:
            layer.build(input_shape)

    def call(self, images, training=None):
        ops = keras.ops
        count = len(self.ops_layers)
        for _ in range(self.num_ops):
            choice = keras.random.randint((ops.shape(images)[0],), 0, count, seed=self.seed_generator)
            chosen = ops.reshape(ops.one_hot(choice, count, dtype=images.dtype), (-1, 1, 1, 1, count))
            results = ops.stack([layer(images, training=True) for layer in self.ops_layers], axis=-1)
            images = ops.clip(ops.sum(results * chosen, axis=-1), 0.0, 255.0)
        return images


# Timing ----------------------------------------------------------------------------------


def compiled(layer, images):
    """A no-argument function running ``layer`` in training mode, compiled as training compiles it."""
    if keras.backend.backend() == "jax":
        import jax

        layer(images[:1], training=True)   # builds it
        state = [v.value for v in layer.non_trainable_variables]

        @jax.jit
        def run(state, images):
            return layer.stateless_call([], state, images, training=True)

        def call():
            nonlocal state
            out, state = run(state, images)
            out.block_until_ready()
        return call
    import tensorflow as tf

    traced = tf.function(lambda batch: layer(batch, training=True))
    return lambda: traced(images).numpy()


def timed(functions: dict, repeats: int) -> dict[str, list[float]]:
    """Each function called once to compile, then ``repeats`` times, alternating; the seconds of each call."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def augmentation_rows(shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    rows = []
    for batch, size in shapes:
        images = keras.ops.convert_to_tensor(
            np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32"))
        for recipe, config in RECIPE_AUGMENT.items():
            seconds = {name: statistics.median(values) for name, values in timed({
                "keras": compiled(KerasLayerAugment(config, seed=0), images),
                "fused": compiled(Augment(config, seed=0), images),
            }, repeats).items()}
            rows.append({"augmentation": recipe, "batch": batch, "pixels": size,
                         "keras_ms": 1000 * seconds["keras"], "fused_ms": 1000 * seconds["fused"],
                         "speed-up": seconds["keras"] / seconds["fused"]})
    return rows


def demo_step_rows(repeats: int) -> list[dict]:
    """One training step of the demo's model (vit_micro, 48 px, batch 32, small-data recipe)."""
    from vitkit.demo import FROM_SCRATCH
    from vitkit.models import classifier

    size, batch = FROM_SCRATCH["image_size"], FROM_SCRATCH["batch_size"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    targets = np.eye(4, dtype="float32")[rng.integers(0, 4, batch)]

    def step(augment, layer_class=Augment):
        with mock.patch.object(classifier, "Augment", layer_class):
            model = classifier.build_model(4, backbone=FROM_SCRATCH["backbone"], image_size=size, augment=augment,
                                           seed=0, **dict(SMALL_DATA.backbone_options))
        # As vitkit train compiles: jit_compile "auto" (TensorFlow runs under op determinism,
        # which keeps XLA off; JAX jits unless a layer does not support it).
        model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                      jit_compile="auto" if keras.backend.backend() == "jax" else False)
        return lambda: model.train_on_batch(images, targets)

    config = RECIPE_AUGMENT["small-data"]
    pixels = keras.ops.convert_to_tensor(images.astype("float32"))
    # The fastest of the repeats: a step is long enough for other load on a shared CPU to
    # blur the small difference between steps with and without augmentation.
    seconds = {name: min(values) for name, values in timed({
        "none": step(False), "keras": step(config, KerasLayerAugment), "fused": step(config),
        "keras alone": compiled(KerasLayerAugment(config, seed=0), pixels),
        "fused alone": compiled(Augment(config, seed=0), pixels),
    }, repeats).items()}
    return [{"augmentation": name, "step_ms": 1000 * seconds[name],
             "step_share": (seconds[name] - seconds["none"]) / seconds[name] if name != "none" else 0.0,
             "alone_ms": 1000 * seconds[f"{name} alone"] if name != "none" else 0.0,
             "alone_share": seconds[f"{name} alone"] / seconds[name] if name != "none" else 0.0}
            for name in ("keras", "fused", "none")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", default="32x64,16x224", help="BATCHxPIXELS, comma-separated")
    parser.add_argument("--no-step", action="store_true", help="skip (b), the demo model's training step")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]

    backend = keras.backend.backend()
    rows = augmentation_rows(shapes, args.repeats)
    print(f"(a) one augmented batch, CPU, Keras backend {backend}, median of {args.repeats}")
    print(table(rows, ["augmentation", "batch", "pixels", "keras_ms", "fused_ms", "speed-up"]))
    steps = [] if args.no_step else demo_step_rows(args.repeats)
    if steps:
        print(f"\n(b) the demo's model (vit_micro, 48 px, batch 32, small-data recipe): one training step, "
              f"fastest of {args.repeats}")
        print(table(steps, ["augmentation", "step_ms", "step_share", "alone_ms", "alone_share"]))
    path = save_results("augment_speed", {"backend": backend, "repeats": args.repeats,
                                          "augmentation": rows, "demo_step": steps})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
