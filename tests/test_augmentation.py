"""Training augmentation: one resampling per image and per-image colour amounts, checked against a
plain NumPy warp, Keras' own preprocessing layers given the same amounts, the documented ranges,
and inference (where it must do nothing). Every test here also runs on JAX (the last test)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from vitkit.data import colour, warp
from vitkit.data.preprocessing import RANDAUGMENT_OPS, Augment, BatchDraws, RandAugmentOps
from vitkit.data.inputconfig import AugmentConfig
from vitkit.errors import ConfigError

from conftest import ROOT

TOLERANCE = 1e-3   # float32 rounding of 0-255 values; the interpolation schemes are the same


def numpy(tensor) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(tensor))

def noise(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype("float32")

def all_images(batch: int) -> np.ndarray:
    return np.ones(batch, dtype=bool)

def reference_warp(images: np.ndarray, matrices: np.ndarray, fill: str) -> np.ndarray:
    """Each output pixel bilinearly read at ``matrix @ (x, y, 1)`` of the image padded by
    half-sample reflection (``np.pad`` ``symmetric``) or zeros."""
    batch, height, width, _ = images.shape
    pad = 2 * max(height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype("float64")
    out = np.empty(images.shape, "float64")
    for i in range(batch):
        padded = np.pad(images[i].astype("float64"), ((pad, pad), (pad, pad), (0, 0)),
                        mode="symmetric" if fill == "reflect" else "constant")
        m = matrices[i]
        sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] + pad
        sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] + pad
        x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
        fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
        top = (1 - fx) * padded[y0, x0] + fx * padded[y0, x0 + 1]
        bottom = (1 - fx) * padded[y0 + 1, x0] + fx * padded[y0 + 1, x0 + 1]
        out[i] = (1 - fy) * top + fy * bottom
    return out


def random_affine(batch: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    """Affine matrices mixing rotation, scale, shear and shift, some reading well outside."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(-0.6, 0.6, batch)
    scale = rng.uniform(0.7, 1.4, (batch, 2))
    shear = rng.uniform(-0.3, 0.3, batch)
    matrices = np.zeros((batch, 3, 3))
    matrices[:, 0, 0] = scale[:, 0] * np.cos(angle)
    matrices[:, 0, 1] = -np.sin(angle) + shear
    matrices[:, 1, 0] = np.sin(angle)
    matrices[:, 1, 1] = scale[:, 1] * np.cos(angle)
    matrices[:, 0, 2] = rng.uniform(-0.4, 0.4, batch) * width
    matrices[:, 1, 2] = rng.uniform(-0.4, 0.4, batch) * height
    matrices[:, 2, 2] = 1.0
    return matrices


def fused(images, matrix, fill: str):
    """One stage of ``fill``: reflected transforms come first in the chain, blanked ones after."""
    if fill == "reflect":
        return numpy(warp.warp(images, matrix))
    return numpy(warp.warp(images, None, [(matrix, all_images(len(images)))]))


# The resampling ---------------------------------------------------------------------------


@pytest.mark.parametrize("fill", ["reflect", "constant"])
def test_warp_matches_a_numpy_bilinear_warp(fill):
    images = noise(6, 17, 23)
    matrices = random_affine(6, 17, 23)
    expected = reference_warp(images, matrices, fill)
    got = fused(images, matrices.astype("float32"), fill)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    assert np.abs(got - images).mean() > 20   # the transforms moved the content


def _keras_layer_and_matrix(kind: str, fill: str, height: int, width: int):
    """A Keras layer, one of its own random draws, and the same transform built by ``warp``."""
    images = noise(6, height, width)
    if kind == "flip":
        layer = keras.layers.RandomFlip("horizontal_and_vertical", seed=3)
        drawn = layer.get_random_transformation(images, training=True)
        flipped = numpy(drawn["flips"]).reshape(-1).astype("float32")
        return layer, drawn, warp.flip(flipped, flipped, height, width)
    if kind == "rotation":
        layer = keras.layers.RandomRotation(0.2, fill_mode=fill, seed=3)
        drawn = layer.get_random_transformation(images, training=True)
        return layer, drawn, warp.rotation(numpy(drawn["angle"]), height, width)
    if kind == "zoom":
        layer = keras.layers.RandomZoom(0.3, 0.3, fill_mode=fill, seed=3)
        drawn = layer.get_random_transformation(images, training=True)
        return layer, drawn, warp.zoom(numpy(drawn["width_zoom"])[:, 0], numpy(drawn["height_zoom"])[:, 0],
                                       height, width)
    if kind == "translation":
        layer = keras.layers.RandomTranslation(0.3, 0.3, fill_mode=fill, seed=3)
        drawn = layer.get_random_transformation(images, training=True)
        shift = numpy(drawn["translations"])
        return layer, drawn, warp.translation(shift[:, 0], shift[:, 1])
    layer = keras.layers.RandomShear(0.3, 0.3, fill_mode=fill, seed=3)
    drawn = layer.get_random_transformation(images, training=True)
    factors = numpy(drawn["shear_factor"])
    return layer, drawn, warp.shear(factors[:, 0], factors[:, 1])


@pytest.mark.parametrize("kind,fill", [
    ("flip", "reflect"),
    ("rotation", "reflect"), ("zoom", "reflect"), ("translation", "reflect"),   # AugmentConfig's
    ("rotation", "constant"), ("shear", "constant"), ("translation", "constant"),  # RandAugment's
    ("shear", "reflect"), ("zoom", "constant"),
])
def test_each_transform_matches_the_keras_layer_with_the_same_draw(kind, fill):
    images = noise(6, 19, 26)
    layer, drawn, matrix = _keras_layer_and_matrix(kind, fill, 19, 26)
    expected = numpy(layer.transform_images(images, drawn, training=True))
    got = fused(images, matrix, fill)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    if kind == "rotation":
        np.testing.assert_allclose(numpy(matrix).reshape(-1, 9)[:, :6], numpy(drawn["rotation_matrix"])[:, :6],
                                   atol=1e-5)


def smooth(batch: int, size: int) -> np.ndarray:
    """Slowly varying colours, on which resampling twice or once differ only a little."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    phases = np.random.default_rng(2).uniform(0, 2 * np.pi, (batch, 1, 1, 3))
    return (127.5 + 100 * np.sin(2 * np.pi * xs[None, ..., None] + phases)
            * np.cos(np.pi * ys[None, ..., None] + phases / 2)).astype("float32")


def test_a_chain_is_one_resampling_close_to_the_keras_layers_one_after_another():
    size = 48
    images = smooth(4, size)
    flipped = np.array([1, 0, 1, 0], "float32")
    angle = np.array([10.0, -7.0, 3.0, 0.0], "float32")
    zoom = np.array([[0.9, 1.05], [1.1, 0.95], [0.92, 0.92], [1.0, 1.0]], "float32")
    shift = np.array([[3.0, -2.0], [-1.5, 2.5], [0.0, 0.0], [2.0, 2.0]], "float32")
    chain = warp.compose(warp.flip(flipped, 0 * flipped, size, size), warp.rotation(angle, size, size),
                         warp.zoom(zoom[:, 0], zoom[:, 1], size, size), warp.translation(shift[:, 0], shift[:, 1]))
    got = numpy(warp.warp(images, chain))

    keras_images = numpy(keras.layers.RandomFlip("horizontal").transform_images(
        images, {"flips": flipped.reshape(-1, 1, 1, 1) > 0}, training=True))
    keras_images = numpy(keras.layers.RandomRotation(0.1).transform_images(
        keras_images, {"rotation_matrix": numpy(warp.rotation(angle, size, size)).reshape(-1, 9)[:, :8]}))
    keras_images = numpy(keras.layers.RandomZoom(0.1, 0.1).transform_images(
        keras_images, {"width_zoom": zoom[:, :1], "height_zoom": zoom[:, 1:]}))
    keras_images = numpy(keras.layers.RandomTranslation(0.1, 0.1).transform_images(
        keras_images, {"translations": shift}))
    inner = slice(8, size - 8)   # where no step reads outside the image
    difference = np.abs(got - keras_images)[:, inner, inner]
    assert difference.mean() < 0.3 and difference.max() < 2.0, (difference.mean(), difference.max())
    np.testing.assert_allclose(got, reference_warp(images, numpy(chain), "reflect"), atol=TOLERANCE)


def test_each_randaugment_round_keeps_its_own_black_border():
    """Round 1 moves the content 5 px right, round 2 moves it back for the first image only:
    as with Keras' layers one after another, the first image keeps round 2's border only."""
    images = noise(2, 12, 16)
    right = warp.translation(np.array([5.0, 5.0], "float32"), np.zeros(2, "float32"))
    left = warp.translation(np.array([-5.0, -5.0], "float32"), np.zeros(2, "float32"))
    got = numpy(warp.warp(images, None, [(right, all_images(2)), (left, np.array([True, False]))]))

    layer = keras.layers.RandomTranslation(0.5, 0.5, fill_mode="constant")
    once = numpy(layer.transform_images(images, {"translations": np.array([[5.0, 0.0], [5.0, 0.0]], "float32")}))
    twice = numpy(layer.transform_images(once, {"translations": np.array([[-5.0, 0.0], [-5.0, 0.0]], "float32")}))
    np.testing.assert_allclose(got[0], twice[0], atol=TOLERANCE)
    np.testing.assert_allclose(got[1], once[1], atol=TOLERANCE)
    assert np.all(got[0][:, -5:] == 0) and np.all(got[0][:, :-5] > 0)
    assert np.all(got[1][:, :5] == 0) and np.all(got[1][:, 5:] > 0)


# Colour -----------------------------------------------------------------------------------


def _keras_colour(name: str, images: np.ndarray, rng: np.random.Generator):
    """``(Keras layer's output, vitkit's amount)`` for one per-image amount of operation ``name``."""
    batch = len(images)

    def per_image(values):
        return values.astype("float32").reshape(-1, 1, 1, 1)

    if name == "brightness":
        delta = rng.uniform(-100, 100, batch)
        return keras.layers.RandomBrightness(0.5).transform_images(images, {"rgb_delta": per_image(delta)}), delta
    if name == "contrast":
        factor = rng.uniform(0.5, 1.5, batch)
        return keras.layers.RandomContrast(0.5).transform_images(images, {"contrast_factor": per_image(factor)}), factor
    if name == "colour":
        factor = rng.uniform(-0.9, 0.9, batch)
        return keras.layers.RandomColorDegeneration(0.9).transform_images(images, {"factor": per_image(factor)}), factor
    if name == "sharpness":
        factor = rng.uniform(0.05, 0.95, batch).astype("float32")
        return keras.layers.RandomSharpness(0.5).transform_images(images, {"factor": factor}), 1.0 - 2.0 * factor
    if name == "solarize":
        threshold = rng.uniform(0, 255, batch)
        drawn = {"thresholds": per_image(threshold), "additions": per_image(np.zeros(batch))}
        return keras.layers.Solarization(threshold_factor=0.5).transform_images(images, drawn), threshold
    return keras.layers.AutoContrast().transform_images(images), np.ones(batch)


@pytest.mark.parametrize("name", list(colour.OPERATIONS))
def test_each_colour_operation_matches_the_keras_layer_with_the_same_amounts(name):
    images = noise(6, 10, 12) * 0.6 + 40   # room for autocontrast to stretch
    images[0, ..., 1] = 90.0               # a flat channel autocontrast must leave alone
    expected, amount = _keras_colour(name, images, np.random.default_rng(4))
    got = numpy(colour.adjust(images, {name: amount}))
    np.testing.assert_allclose(got, numpy(expected), atol=TOLERANCE)
    assert np.abs(got - images).max() > 1


def test_a_step_gives_each_image_its_own_operation():
    images = noise(6, 10, 12) * 0.6 + 40
    rng = np.random.default_rng(5)
    names = list(colour.OPERATIONS)
    amounts = {name: np.full(6, colour.IDENTITY[name], "float32") for name in names}
    expected = []
    for i, name in enumerate(names):
        keras_output, amount = _keras_colour(name, images, rng)
        amounts[name][i] = amount[i]
        expected.append(numpy(keras_output)[i])
    np.testing.assert_allclose(numpy(colour.adjust(images, amounts)), np.stack(expected), atol=TOLERANCE)


@pytest.mark.parametrize("name", list(colour.OPERATIONS))
def test_identity_amounts_change_nothing(name):
    images = noise(3, 9, 11)
    np.testing.assert_array_equal(numpy(colour.adjust(images, {name: np.full(3, colour.IDENTITY[name])})), images)


def test_identity_transforms_and_inactive_rounds_change_nothing():
    images = noise(3, 9, 11)
    identity = np.tile(np.eye(3, dtype="float32"), (3, 1, 1))
    shift = warp.translation(np.full(3, 2.5, "float32"), np.full(3, -1.5, "float32"))
    np.testing.assert_array_equal(numpy(warp.warp(images, identity, [(shift, np.zeros(3, bool))])), images)


# Draws ------------------------------------------------------------------------------------


def assert_uniform(values, low: float, high: float, what: str) -> None:
    """Within ``[low, high]``, reaching both ends, and uniform (Kolmogorov-Smirnov, p < 1e-4 to fail)."""
    values = np.sort(np.asarray(values, "float64").ravel())
    span = high - low
    assert low - 1e-5 * span <= values[0] and values[-1] <= high + 1e-5 * span, (what, values[0], values[-1])
    assert values[0] < low + 0.01 * span and values[-1] > high - 0.01 * span, (what, values[0], values[-1])
    cdf = np.arange(1, len(values) + 1) / len(values)
    distance = np.abs(cdf - (values - low) / span).max()
    assert distance < 2.0 / math.sqrt(len(values)), (what, distance)


def draws_for(batch: int, size: int = 8, seed: int = 0) -> BatchDraws:
    images = np.zeros((batch, size, 2 * size, 3), "float32")
    return BatchDraws(images, keras.random.SeedGenerator(seed))


def test_option_draws_cover_their_documented_ranges():
    config = AugmentConfig(flip="horizontal", rotation=0.05, zoom=0.1, translation=0.1, brightness=0.1,
                           contrast=0.1)
    draws = draws_for(4000)
    draws.draw_options(config)
    flip, rotation, zoom, translation = (numpy(matrix) for matrix in draws.reflected)
    assert set(np.unique(flip[:, 0, 0])) == {-1.0, 1.0} and np.all(flip[:, 1, 1] == 1)
    assert abs((flip[:, 0, 0] < 0).mean() - 0.5) < 0.04
    assert_uniform(np.degrees(np.arctan2(rotation[:, 1, 0], rotation[:, 0, 0])), -18, 18, "rotation degrees")
    assert_uniform(zoom[:, 0, 0], 0.9, 1.1, "zoom x")
    assert_uniform(zoom[:, 1, 1], 0.9, 1.1, "zoom y")
    assert abs(np.corrcoef(zoom[:, 0, 0], zoom[:, 1, 1])[0, 1]) < 0.1   # drawn apart
    assert_uniform(-translation[:, 0, 2] / 16, -0.1, 0.1, "shift x")
    assert_uniform(-translation[:, 1, 2] / 8, -0.1, 0.1, "shift y")
    brightness, contrast = draws.colour_steps   # in this order, one operation per step
    assert list(brightness) == ["brightness"] and list(contrast) == ["contrast"]
    assert_uniform(numpy(brightness["brightness"]) / 255, -0.1, 0.1, "brightness")
    assert_uniform(numpy(contrast["contrast"]), 1.0, 1.1, "contrast")


MAGNITUDE = 0.6
RANDAUGMENT_RANGES = {   # the table of RandAugmentOps' docstring, at MAGNITUDE
    "brightness": (-0.5 * MAGNITUDE * 255, 0.5 * MAGNITUDE * 255),
    "contrast": (1.0, 1.0 + 0.5 * MAGNITUDE),
    "color": (-0.9 * MAGNITUDE, 0.9 * MAGNITUDE),
    "sharpness": (-0.9 * MAGNITUDE, 0.9 * MAGNITUDE),
    "solarize": (1.0 - 0.5 * MAGNITUDE, 255.0),
}
COLOUR_NAMES = {"color": "colour"}   # RandAugment's name -> vitkit.data.colour's


def test_randaugment_draws_one_operation_per_image_per_round_in_its_documented_range():
    batch = 8000
    draws = draws_for(batch)
    for _ in range(2):
        draws.draw_randaugment_round(MAGNITUDE)
    assert len(draws.blanked) == len(draws.colour_steps) == 2
    first, second = (numpy(choice) for choice in draws.choices)
    counts = np.bincount(first, minlength=len(RANDAUGMENT_OPS)) / batch
    assert np.all(np.abs(counts - 0.1) < 0.015), counts
    assert abs(np.mean(first == second) - 0.1) < 0.015   # rounds draw apart
    names = list(RANDAUGMENT_OPS)
    matrix, active = (numpy(part) for part in draws.blanked[0])
    amounts = {name: numpy(value) for name, value in draws.colour_steps[0].items()}
    geometric = np.isin(first, [names.index(n) for n in ("rotate", "shear", "translate")])
    np.testing.assert_array_equal(active, geometric)
    np.testing.assert_array_equal(matrix[~geometric], np.tile(np.eye(3), (int((~geometric).sum()), 1, 1)))

    rotate = first == names.index("rotate")
    assert_uniform(np.degrees(np.arctan2(matrix[rotate, 1, 0], matrix[rotate, 0, 0])), -18, 18, "rotate")
    shear = first == names.index("shear")
    assert_uniform(matrix[shear, 0, 1], -0.18, 0.18, "shear x")
    assert_uniform(matrix[shear, 1, 0], -0.18, 0.18, "shear y")
    translate = first == names.index("translate")
    assert_uniform(-matrix[translate, 0, 2] / 16, -0.18, 0.18, "translate x")
    assert_uniform(-matrix[translate, 1, 2] / 8, -0.18, 0.18, "translate y")
    for name, (low, high) in RANDAUGMENT_RANGES.items():
        chosen = first == names.index(name)
        values = amounts[COLOUR_NAMES.get(name, name)]
        assert_uniform(values[chosen], low, high, name)
        assert np.all(values[~chosen] == colour.IDENTITY[COLOUR_NAMES.get(name, name)]), name
    np.testing.assert_array_equal(amounts["autocontrast"] > 0, first == names.index("autocontrast"))


def test_only_the_operations_drawn_for_an_image_touch_it():
    images = noise(400, 12, 12)
    draws = draws_for(400)
    draws.draw_randaugment_round(0.5)
    out = numpy(draws.apply(images))
    choice = numpy(draws.choices[0])
    names = list(RANDAUGMENT_OPS)
    untouched = choice == names.index("identity")
    np.testing.assert_array_equal(out[untouched], images[untouched])
    step = draws.colour_steps[0]
    for name in ("brightness", "contrast", "color", "sharpness", "solarize", "autocontrast"):
        chosen = choice == names.index(name)
        key = COLOUR_NAMES.get(name, name)
        alone = colour.adjust(images[chosen], {key: numpy(step[key])[chosen]})
        np.testing.assert_allclose(out[chosen], numpy(alone), atol=TOLERANCE, err_msg=name)
    moved = ~untouched & (choice < names.index("brightness"))
    assert np.abs(out[moved] - images[moved]).reshape(int(moved.sum()), -1).max(1).min() > 1


# The layers -------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [
    Augment({"randaugment_ops": 2, "flip": "horizontal_and_vertical"}, seed=1),
    Augment(AugmentConfig(), seed=None),
    RandAugmentOps(num_ops=2, magnitude=0.9, seed=2),
], ids=["augment+randaugment", "augment", "randaugment"])
def test_layers_change_images_only_in_training(layer):
    images = noise(8, 16, 16)
    for training in (False, None):
        np.testing.assert_array_equal(numpy(layer(images, training=training)), images)
    out = numpy(layer(images, training=True))
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 255
    changed = np.abs(out - images).reshape(8, -1).max(1) > 0
    assert changed.mean() >= 0.75, changed   # RandAugment alone may draw identity for an image
    np.testing.assert_array_equal(numpy(Augment(AugmentConfig.off(), seed=1)(images, training=True)), images)


def test_draws_change_from_batch_to_batch():
    layer = Augment({"randaugment_ops": 1}, seed=1)
    images = noise(4, 16, 16)
    assert not np.allclose(numpy(layer(images, training=True)), numpy(layer(images, training=True)))


@pytest.mark.parametrize("options,match", [
    ({"flip": "diagonal"}, "flip must be one of"),
    ({"rotation": 1.5}, "rotation must be in"),
    ({"zoom": -0.1}, "zoom must be in"),
    ({"randaugment_magnitude": 2.0}, "randaugment_magnitude"),
])
def test_bad_options_are_named(options, match):
    with pytest.raises(ConfigError, match=match):
        AugmentConfig.from_dict(options)


@pytest.mark.slow
def test_everything_above_on_jax():
    if keras.backend.backend() == "jax":
        pytest.skip("already on JAX")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                           __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
