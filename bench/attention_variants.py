"""Which map points at the product? Variants of the attention and gradient maps against product masks.

    python bench/attention_variants.py --model M.weights.h5 --photos SET --masks SET_masks
                                       --data SET_manifests/test.csv [--randomise]

The search behind the default of ``vitkit explain`` (``bench/attention_quality.py`` measures the
shipped methods themselves). One forward and backward pass per image gives the attention weights,
their gradients and the pixels' gradients (of the predicted class's logit); integrated gradients
add 8 passes along the path from a black image and 8 from the image's mean colour (the
baseline of ``vitkit explain``). Every variant is scored like
``attention_quality.py`` does: energy in the mask over the mask's share of the image, and the
pointing game, strictly and with the 15-pixels-at-224 tolerance.

Variants: rollout with mean / max head fusion, discard ratios 0 and 0.9, over all layers, from
layer k on and up to layer k; one layer's class-token attention; Chefer et al.'s relevance over
all layers and from layer k on; gradient x input of the tokens entering layer k; the pixels'
gradient (summed absolute value over the channels) and integrated gradients from either
baseline, at pixel resolution and summed per patch, optionally blurred with a Gaussian of half a
patch.

``--randomise`` shuffles every weight of the model first (a model-randomisation check, Adebayo
et al. 2018): a map that still points at the product then reads the photo, not the model. The
row "no model" is such a map: each pixel's distance from the photo's mean colour.
Prints the table and writes bench/results/attention_variants.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("VITKIT_PROGRESS", "0")

from attention_quality import TOLERANCE_AT_224, energy_in_mask, load_masks, pointing_hits  # noqa: E402

IG_STEPS = 8


def passes(model, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Attention, its gradients, the tokens entering each block and their gradients, the pixels'
    gradients and integrated gradients, for the predicted class (TensorFlow)."""
    import tensorflow as tf

    from vitkit.models.heads import combined_logits, head_logits

    backbone, config = model.backbone, model.backbone.config
    scale = model._parts[1]
    tokens = backbone.token_count(model.spec.image_size)

    def forward(images, offset):
        x = backbone._sequence(scale(model.augment_pixels(images, training=False)), training=False)
        states, attention = [x], []
        for i, block in enumerate(backbone.blocks):
            x, weights = block(x, training=False, return_attention=True, attention_offset=offset[:, i])
            states.append(x)
            attention.append(weights)
        final = x if config.fc_norm else backbone.encoder_norm(x)
        features = [backbone.pool(final)] + ([backbone.pool_distillation(final)] if len(model._heads) > 1 else [])
        logits = combined_logits([head_logits(h, f, training=False) for h, f in zip(model._heads, features)])
        return logits, states, attention

    out: dict[str, list] = {key: [] for key in ("logits", "attention", "attention_grad", "states",
                                                 "states_grad", "pixel_grad", "integrated_black",
                                                 "integrated_mean", "contrast")}
    for start in range(0, len(pixels), 30):
        images = tf.convert_to_tensor(pixels[start:start + 30], tf.float32)
        offset = tf.zeros((len(images), config.num_layers, config.num_heads, tokens, tokens))
        with tf.GradientTape() as tape:
            tape.watch(images)
            tape.watch(offset)
            logits, states, attention = forward(images, offset)
            classes = tf.argmax(logits, -1)
            score = tf.reduce_sum(tf.gather(logits, classes, batch_dims=1))
        grads = tape.gradient(score, [images, offset] + states)
        integrated = {}
        for name, baseline in (("black", tf.zeros_like(images)),
                               ("mean", tf.reduce_mean(images, axis=(1, 2), keepdims=True))):
            path_sum = 0.0
            for alpha in (np.arange(IG_STEPS) + 0.5) / IG_STEPS:
                point = baseline + float(alpha) * (images - baseline)
                with tf.GradientTape() as tape:
                    tape.watch(point)
                    path_logits, _, _ = forward(point, offset)
                    path_score = tf.reduce_sum(tf.gather(path_logits, classes, batch_dims=1))
                path_sum += tape.gradient(path_score, point)
            integrated[name] = tf.reduce_sum((images - baseline) * path_sum / IG_STEPS, -1)
        for key, value in (("logits", logits), ("attention", tf.stack(attention, 1)), ("attention_grad", grads[1]),
                           ("states", tf.stack(states, 1)), ("states_grad", tf.stack(grads[2:], 1)),
                           ("pixel_grad", grads[0]), ("integrated_black", integrated["black"]),
                           ("integrated_mean", integrated["mean"]),
                           ("contrast", tf.reduce_sum(tf.abs(images - tf.reduce_mean(images, axis=(1, 2), keepdims=True)), -1))):
            out[key].append(np.asarray(value, dtype=np.float64))
    return {key: np.concatenate(values) for key, values in out.items()}


def rollout(attention, fusion: str, discard: float, prefix: int, pooling: str, first: int = 0, last: int | None = None):
    from vitkit.explanation.rollout import attention_rollout

    return np.asarray(attention_rollout(attention[:, first:last].astype(np.float32), fusion, discard, prefix, pooling))


def chefer(attention, gradients, prefix: int, pooling: str, first: int = 0):
    """Chefer et al. 2021 with the layers before ``first`` left out."""
    weighted = np.maximum(gradients * attention, 0).mean(axis=2)
    weighted[:, :first] = 0
    relevance = np.broadcast_to(np.eye(weighted.shape[-1]), weighted[:, 0].shape).copy()
    for layer in range(weighted.shape[1]):
        relevance = relevance + np.einsum("bij,bjk->bik", weighted[:, layer], relevance)
    row = relevance[:, prefix:].mean(axis=1) if pooling == "mean" else relevance[:, 0]
    return row[:, prefix:]


def blurred(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (clamped to the map) of ``(n, rows, cols)`` maps, ``sigma`` in cells."""
    def kernel(size):
        cells = np.arange(size)
        weights = np.exp(-(cells[:, None] - cells[None]) ** 2 / (2 * sigma ** 2))
        return weights / weights.sum(axis=1, keepdims=True)

    return np.einsum("hr,nrc,wc->nhw", kernel(maps.shape[1]), maps, kernel(maps.shape[2]))


def variants(data: dict, prefix: int, pooling: str, grid: tuple[int, int], size: tuple[int, int]) -> dict:
    """Every variant's ``(n, height, width)`` map at image resolution."""
    from vitkit.explanation.rollout import normalise_maps, resize_maps

    attention = data["attention"]
    count, layers = attention.shape[:2]
    patch = (size[0] // grid[0], size[1] // grid[1])

    def from_grid(rows, sigma=0.0):
        cells = np.maximum(np.asarray(rows).reshape(count, *grid), 0)
        return np.clip(resize_maps(normalise_maps(blurred(cells, sigma) if sigma else cells), size), 0, 1)

    def from_pixels(values, sigma=0.0):
        return normalise_maps(blurred(values, sigma) if sigma else values)

    def per_patch(values):
        cropped = values[:, :grid[0] * patch[0], :grid[1] * patch[1]]
        return cropped.reshape(count, grid[0], patch[0], grid[1], patch[1]).sum(axis=(2, 4))

    maps = {}
    for fusion in ("mean", "max"):
        for discard in (0.0, 0.9):
            name = f"rollout {fusion}, discard {discard:g}"
            maps[name] = from_grid(rollout(attention, fusion, discard, prefix, pooling))
            for first in range(1, layers):
                maps[f"{name}, layers {first}-{layers - 1}"] = from_grid(rollout(attention, fusion, discard, prefix, pooling, first))
                maps[f"{name}, layers 0-{first - 1}"] = from_grid(rollout(attention, fusion, discard, prefix, pooling, 0, first))
    for layer in range(layers):
        maps[f"layer {layer} class-token attention (mean)"] = from_grid(rollout(attention, "mean", 0.0, prefix, pooling, layer, layer + 1))
    for first in range(layers):
        maps[f"Chefer relevance, layers {first}-{layers - 1}"] = from_grid(chefer(attention, data["attention_grad"], prefix, pooling, first))
    for layer in range(layers + 1):
        product = (data["states"][:, layer] * data["states_grad"][:, layer]).sum(-1)[:, prefix:]
        maps[f"token gradient x input entering layer {layer}, positive"] = from_grid(np.maximum(product, 0))
        maps[f"token gradient x input entering layer {layer}, absolute"] = from_grid(np.abs(product))
    pixel_gradient = np.abs(data["pixel_grad"]).sum(-1)
    half_patch = patch[0] / 2
    maps["pixel gradient |dS/dx|"] = from_pixels(pixel_gradient)
    maps["pixel gradient |dS/dx|, blurred half a patch"] = from_pixels(pixel_gradient, half_patch)
    for baseline in ("black", "mean"):
        signed = data[f"integrated_{baseline}"]
        name = f"integrated gradients from {'black' if baseline == 'black' else 'the mean colour'}"
        maps[f"{name}, positive, pixels"] = from_pixels(np.maximum(signed, 0))
        maps[f"{name}, positive, pixels, blurred half a patch"] = from_pixels(np.maximum(signed, 0), half_patch)
        maps[f"{name}, absolute, per patch"] = from_grid(per_patch(np.abs(signed)))
        maps[f"{name}, positive, per patch"] = from_grid(per_patch(np.maximum(signed, 0)))
    maps["no model: |photo - its mean colour|, per patch"] = from_grid(per_patch(data["contrast"]))
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--data", required=True, help="the images to measure (a manifest)")
    parser.add_argument("--randomise", action="store_true", help="shuffle every weight first (a sanity check)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attention_variants.json")
    args = parser.parse_args()

    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("attention_variants.py runs on the tensorflow backend")
    from vitkit.models.modelfile import load_model
    from vitkit.prediction import images_for

    model = load_model(args.model)
    if args.randomise:
        rng = np.random.default_rng(0)
        for weight in model.weights:
            if "moving" not in weight.path:
                values = np.asarray(weight.numpy())
                weight.assign(rng.permutation(values.ravel()).reshape(values.shape))
    images = images_for(model, args.data)
    size = tuple(model.spec.image_size)
    masks = load_masks(images.names, args.photos, args.masks, size, model.spec.resize_mode)
    labels = images.label_indices(model.class_names)
    data = passes(model, images.read(np.arange(len(images))).astype(np.float32))
    config = model.backbone.config
    share = float(masks.mean())
    tolerance = TOLERANCE_AT_224 * min(size) / 224
    rows = {}
    for name, maps in variants(data, config.prefix_tokens, config.pooling, model.backbone.grid_shape(size), size).items():
        rows[name] = {"energy_over_share": float(energy_in_mask(maps, masks).mean()) / share,
                      "pointing_game": float(pointing_hits(maps, masks).mean()),
                      "pointing_game_tolerance": float(pointing_hits(maps, masks, tolerance).mean())}
    accuracy = float((data["logits"].argmax(1) == labels).mean())
    print(f"{len(images)} images, model {args.model}{' (weights shuffled)' if args.randomise else ''}, "
          f"accuracy {accuracy:.1%}, mask share {share:.3f}")
    print(f"{'map':82s}{'energy/share':>13s}{'pointing':>10s}{'+ tolerance':>12s}")
    for name, values in sorted(rows.items(), key=lambda item: -item[1]["pointing_game"]):
        print(f"{name:82s}{values['energy_over_share']:12.2f}x{values['pointing_game']:10.3f}"
              f"{values['pointing_game_tolerance']:12.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "randomised": args.randomise, "accuracy": accuracy,
                                    "mask_share": share, "variants": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
