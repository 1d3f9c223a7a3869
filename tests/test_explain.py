"""Attention maps: the maths against NumPy re-implementations, the model path, the API and files."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from vitkit.data.imageset import load_images
from vitkit.errors import ConfigError, OutputExistsError
from vitkit.explanation.attention import _scores_with_attention_gradients, attention_weights, explain_images
from vitkit.explanation.explain import explain
from vitkit.explanation.rollout import (
    INTEGRATED_STEPS,
    attention_rollout,
    blur_matrix,
    class_token_attention,
    discard_lowest,
    gaussian_blur,
    gradient_rollout,
    integrated_gradients,
    map_resolution,
    mean_colour,
    normalise_maps,
    path_points,
    positive_pixel_map,
    resize_maps,
)
from vitkit.explanation.outputs import bertviz_attention, focus_position, map_keys, save_maps_file, token_names

FUSE = {"mean": np.mean, "max": np.max, "min": np.min}


# NumPy references, written from the papers' descriptions -------------------------------------

def numpy_rollout(attention: np.ndarray, head_fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """Full-matrix rollout, one image and one layer at a time; returns the class row over patches."""
    batch, layers, _, tokens, _ = attention.shape
    rows = []
    for b in range(batch):
        result = np.eye(tokens)
        for layer in range(layers):
            fused = FUSE[head_fusion](attention[b, layer].astype(np.float64), axis=0)
            if discard_ratio:
                flat = fused.reshape(-1).copy()
                candidates = np.argsort(np.where(np.arange(flat.size) == 0, np.inf, flat), kind="stable")
                flat[candidates[:int(flat.size * discard_ratio)]] = 0.0
                fused = flat.reshape(tokens, tokens)
            mixed = fused + np.eye(tokens)
            mixed = mixed / mixed.sum(axis=-1, keepdims=True)
            result = mixed @ result
        rows.append(result[0, 1:])
    return np.array(rows)


def numpy_relevance(attention: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Chefer et al. 2021: R = I; R += mean_h(relu(grad * A)) @ R, layer by layer."""
    batch, layers, _, tokens, _ = attention.shape
    rows = []
    for b in range(batch):
        relevance = np.eye(tokens)
        for layer in range(layers):
            weighted = np.maximum(gradients[b, layer] * attention[b, layer], 0).mean(axis=0)
            relevance = relevance + weighted @ relevance
        rows.append(relevance[0, 1:])
    return np.array(rows)


def scipy_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``(batch, H, W)`` maps with the kernel cut at the edges and renormalised
    there: SciPy's blur of the map padded with zeros over its blur of the map's own support (a
    kernel reaching over the whole map)."""
    from scipy.ndimage import gaussian_filter

    reach = max(maps.shape[1:]) / sigma + 1
    support = gaussian_filter(np.ones(maps.shape[1:]), sigma, mode="constant", truncate=reach)
    return np.stack([gaussian_filter(m.astype(np.float64), sigma, mode="constant", truncate=reach) / support
                     for m in maps])


def numpy_integrated_gradients(score, images: np.ndarray, steps: int, step: float = 1e-2) -> np.ndarray:
    """Integrated gradients from each image's mean colour, per pixel and summed over channels, by
    central finite differences: at pixel p, the channels' sum of ``(x - baseline) * df/dx`` is the
    derivative of ``f`` along ``x - baseline`` restricted to p. ``score(batch) -> (batch,)``; the
    path's points are the midpoints of ``steps`` equal intervals."""
    count, height, width, _ = images.shape
    attribution = np.zeros((count, height, width))
    for b in range(count):
        image = images[b].astype(np.float64)
        baseline = np.broadcast_to(image.reshape(-1, 3).mean(axis=0), image.shape)
        rows, cols = np.unravel_index(np.arange(height * width), (height, width))
        directions = np.zeros((height * width, height, width, 1))
        directions[np.arange(height * width), rows, cols] = 1.0
        directions = directions * (image - baseline)
        for alpha in (np.arange(steps) + 0.5) / steps:
            point = baseline + alpha * (image - baseline)
            up = score((point + step * directions).astype(np.float32))
            down = score((point - step * directions).astype(np.float32))
            attribution[b] += ((up - down) / (2 * step)).reshape(height, width) / steps
    return attribution


def random_attention(batch=3, layers=3, heads=4, tokens=10, seed=0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 2, (batch, layers, heads, tokens, tokens))
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def to_numpy(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor))


# The maths -------------------------------------------------------------------------------------

@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_rollout_matches_numpy_reference(head_fusion, discard_ratio):
    attention = random_attention()
    expected = numpy_rollout(attention, head_fusion, discard_ratio)
    found = to_numpy(attention_rollout(attention, head_fusion, discard_ratio))
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6)


def test_discard_drops_exactly_the_lowest_and_never_the_class_token_itself():
    fused = np.random.default_rng(3).random((2, 5, 5)).astype(np.float32)
    fused[0, 0, 0] = 0.0  # the lowest value of image 0, still kept
    kept = to_numpy(discard_lowest(fused, 0.6))
    count = int(25 * 0.6)
    assert ((kept == 0).reshape(2, -1).sum(axis=1) == [count + 1, count]).all()
    others = fused[1].reshape(-1)[1:]
    threshold = np.sort(others)[count - 1]
    assert (kept[1].reshape(-1)[1:][others <= threshold] == 0).all()
    assert (kept[1].reshape(-1)[1:][others > threshold] > 0).all()
    np.testing.assert_array_equal(to_numpy(discard_lowest(fused, 0.0)), fused)


def test_gradient_rollout_matches_numpy_reference():
    attention = random_attention(seed=1)
    gradients = np.random.default_rng(2).normal(size=attention.shape).astype(np.float32)
    np.testing.assert_allclose(to_numpy(gradient_rollout(attention, gradients)),
                               numpy_relevance(attention, gradients), rtol=1e-4, atol=1e-6)


def test_integrated_gradient_maths_match_numpy_reference():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (2, 10, 13, 3)).astype(np.float32)
    gradients = rng.normal(size=images.shape).astype(np.float32)
    baseline = to_numpy(mean_colour(images))
    np.testing.assert_allclose(baseline[:, 0, 0], [image.reshape(-1, 3).mean(axis=0) for image in images], rtol=1e-5)
    attribution = to_numpy(integrated_gradients(images, baseline, gradients, 4))
    np.testing.assert_allclose(attribution, ((images - baseline) * gradients).sum(-1) / 4, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(path_points(4), [0.125, 0.375, 0.625, 0.875])


@pytest.mark.parametrize("shape, sigma", [((2, 10, 13), 1.5), ((1, 32, 24), 4.0), ((1, 7, 5), 0.5)])
def test_gaussian_blur_matches_scipy_with_the_kernel_renormalised_at_the_edges(shape, sigma):
    maps = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(to_numpy(gaussian_blur(maps, sigma)), scipy_blur(maps, sigma), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(blur_matrix(9, 2.0).sum(axis=1), 1.0, rtol=1e-6)
    flat = np.full((1, 6, 11), 3.0, np.float32)
    np.testing.assert_allclose(to_numpy(gaussian_blur(flat, sigma)), flat, rtol=1e-5)
    pixel_map = to_numpy(positive_pixel_map(maps, patch_size=2 * sigma))
    assert pixel_map.shape == shape and pixel_map.min() >= 0
    np.testing.assert_allclose(pixel_map, scipy_blur(np.maximum(maps, 0), sigma), rtol=1e-4, atol=1e-5)
    assert map_resolution("integrated") == "pixels"
    assert {map_resolution(m) for m in ("rollout", "gradient", "layer")} == {"patches"}


def test_resize_matches_opencv_linear():
    cv2 = pytest.importorskip("cv2")
    grid = np.random.default_rng(4).random((2, 3, 5)).astype(np.float32)
    found = resize_maps(grid, (24, 35))
    for one, resized in zip(grid, found):
        np.testing.assert_allclose(resized, cv2.resize(one, (35, 24)), atol=1e-5)


def test_normalise_maps_divides_by_the_maximum_and_keeps_zero_maps():
    maps = np.array([[[1.0, 3.0]], [[0.0, 0.0]]])
    np.testing.assert_allclose(normalise_maps(maps), [[[1 / 3, 1.0]], [[0.0, 0.0]]])


# The model path --------------------------------------------------------------------------------

def shapes(count=6, size=32, seed=0):
    from conftest import TINY_CLASSES, draw_shape

    rng = np.random.default_rng(seed)
    labels = [TINY_CLASSES[i % 3] for i in range(count)]
    height, width = (size, size) if isinstance(size, int) else size
    images = np.stack([np.asarray(draw_shape(label, max(height, width), rng).resize((width, height)))
                       for label in labels])
    return images, labels


def sharpen(model, seed=0, scale=0.35):
    """Give the backbone weights of a trained-looking spread, so attention is far from uniform."""
    rng = np.random.default_rng(seed)
    for variable in model.backbone.weights:
        if "LayerNorm" in variable.path or "encoder_norm" in variable.path:
            continue
        variable.assign(rng.normal(0, scale, variable.shape).astype("float32"))
    return model


def test_explicit_attention_path_leaves_outputs_unchanged(tiny_model):
    model = sharpen(tiny_model())
    images, _ = shapes()
    fused = model.predict(images, verbose=0)
    probabilities, attention = model.attention_model().predict(images, verbose=0)
    logits, attention_again = model.logits_and_attention(images)
    np.testing.assert_allclose(probabilities, fused, atol=1e-5)
    np.testing.assert_allclose(to_numpy(keras.ops.softmax(logits)), fused, atol=1e-5)
    np.testing.assert_allclose(to_numpy(attention_again), attention, atol=1e-5)
    assert attention.shape == (6, 2, 4, 17, 17)
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)
    scaled = keras.ops.convert_to_tensor(images.astype("float32") / 127.5 - 1)
    features = to_numpy(model.backbone(scaled))
    with_offset = to_numpy(model.backbone(scaled, attention_offset=np.zeros(attention.shape, "float32")))
    np.testing.assert_allclose(with_offset, features, atol=1e-6)


def test_explained_rollout_equals_numpy_rollout_of_the_model_attention(tiny_model):
    model = sharpen(tiny_model())
    images, labels = shapes(count=5)
    result = explain_images(model, load_images((images, labels), (32, 32)), method="rollout", head_fusion="max",
                            discard_ratio=0.5, batch_size=2, progress=False)
    probabilities, attention = model.attention_model().predict(images, verbose=0)
    expected = normalise_maps(numpy_rollout(attention, "max", 0.5).reshape(5, 4, 4))
    np.testing.assert_allclose(result.native_maps, expected, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, probabilities, atol=1e-5)
    np.testing.assert_allclose(result.layer_maps, class_token_attention(attention.max(axis=2)).reshape(5, 2, 4, 4), atol=1e-5)
    maps = result.maps()
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.9
    np.testing.assert_array_equal(result.explained, result.predicted)


def test_layer_method_is_one_layers_class_token_attention(tiny_model):
    model = sharpen(tiny_model())
    images, _ = shapes(count=3)
    _, attention = model.attention_model().predict(images, verbose=0)
    for layer in (0, -1):
        result = explain_images(model, load_images(images, (32, 32)), method="layer", layer=layer, progress=False)
        expected = normalise_maps(attention[:, layer].mean(axis=1)[:, 0, 1:].reshape(3, 4, 4))
        np.testing.assert_allclose(result.native_maps, expected, atol=1e-5)


def test_attention_gradients_match_finite_differences(tiny_model):
    model = sharpen(tiny_model(), seed=1)
    images, _ = shapes(count=2)
    targets = np.array([2, 0], dtype="int32")
    logits, attention, gradients = (to_numpy(t) for t in _scores_with_attention_gradients(model, images, targets))
    rng = np.random.default_rng(0)
    step = 1e-2
    for _ in range(4):
        position = tuple(int(rng.integers(0, n)) for n in attention.shape[1:])
        for image in range(2):
            offset = np.zeros((2,) + attention.shape[1:], "float32")
            offset[(image,) + position] = step
            up = to_numpy(model.logits_and_attention(images, offset)[0])
            offset[(image,) + position] = -step
            down = to_numpy(model.logits_and_attention(images, offset)[0])
            numeric = (up[image, targets[image]] - down[image, targets[image]]) / (2 * step)
            assert abs(numeric - gradients[(image,) + position]) < 2e-3 + 0.02 * abs(numeric)


def test_gradient_maps_follow_chefer_rule_differ_from_rollout_and_depend_on_the_class(tiny_model):
    model = sharpen(tiny_model(), seed=2)
    images, labels = shapes(count=4)
    data = load_images((images, labels), (32, 32))
    rollout_maps = explain_images(model, data, method="rollout", progress=False).native_maps
    predicted = explain_images(model, data, method="gradient", progress=False)
    per_class = {name: explain_images(model, data, method="gradient", class_name=name, progress=False)
                 for name in model.class_names}
    _, attention, gradients = _scores_with_attention_gradients(model, images, np.full(4, -1, "int32"))
    expected = normalise_maps(numpy_relevance(to_numpy(attention), to_numpy(gradients)).reshape(4, 4, 4))
    np.testing.assert_allclose(predicted.native_maps, expected, atol=1e-5)
    assert np.abs(predicted.native_maps - rollout_maps).max() > 0.05
    first, second = per_class["circle"].native_maps, per_class["square"].native_maps
    assert np.abs(first - second).max() > 0.05
    assert (per_class["square"].explained == 1).all()
    for i, best in enumerate(predicted.predicted):
        np.testing.assert_allclose(per_class[model.class_names[best]].native_maps[i], predicted.native_maps[i], atol=1e-6)


def test_integrated_maps_equal_blurred_finite_difference_integrated_gradients_and_depend_on_the_class(tiny_model):
    model = sharpen(tiny_model(image_size=16, patch_size=4), seed=3)
    images, labels = shapes(count=2, size=(16, 16))
    data = load_images((images, labels), (16, 16))
    predicted = explain_images(model, data, method="integrated", progress=False)
    assert predicted.resolution == "pixels" and predicted.native_maps.shape == (2, 16, 16)
    for i, explained in enumerate(predicted.explained):
        def score(batch, i=i, explained=explained):
            return to_numpy(model.logits_and_attention(batch)[0])[:, explained].astype(np.float64)

        attribution = numpy_integrated_gradients(score, images[i:i + 1], INTEGRATED_STEPS)
        # the positive part, blurred by half a patch (sigma 2 px), divided by its maximum
        expected = normalise_maps(scipy_blur(np.maximum(attribution, 0), 2.0))
        np.testing.assert_allclose(predicted.native_maps[i:i + 1], expected, atol=2e-3)
    maps = predicted.maps()
    np.testing.assert_array_equal(maps, predicted.native_maps)
    assert maps.dtype == np.float32 and maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    rollout_maps = explain_images(model, data, method="rollout", progress=False).maps()
    assert np.abs(maps - rollout_maps).max() > 0.05
    circle = explain_images(model, data, method="integrated", class_name="circle", progress=False)
    square = explain_images(model, data, method="integrated", class_name="square", progress=False)
    assert np.abs(circle.native_maps - square.native_maps).max() > 0.05 and (square.explained == 1).all()
    assert predicted.description().startswith("integrated gradients")
    assert "per pixel" in predicted.description() and predicted.tokens_read().startswith("no tokens")


@pytest.mark.parametrize("image_size, patch_size", [((32, 48), 8), ((24, 40), 4)])
def test_non_square_images_and_other_patch_sizes(tiny_model, image_size, patch_size):
    model = sharpen(tiny_model(image_size=image_size, patch_size=patch_size))
    images, labels = shapes(count=3, size=image_size)
    rows, cols = image_size[0] // patch_size, image_size[1] // patch_size
    for method in ("integrated", "rollout", "gradient", "layer"):
        result = explain_images(model, load_images((images, labels), image_size), method=method, progress=False)
        assert result.native_maps.shape == ((3, *image_size) if method == "integrated" else (3, rows, cols))
        assert result.layer_maps.shape == (3, 2, rows, cols)
        assert result.maps().shape == (3, *image_size)
    _, attention = model.attention_model().predict(images, verbose=0)
    rollout_maps = explain_images(model, load_images(images, image_size), method="rollout", progress=False).native_maps
    np.testing.assert_allclose(rollout_maps, normalise_maps(numpy_rollout(attention).reshape(3, rows, cols)), atol=1e-5)


def test_options_are_checked(tiny_model):
    model = tiny_model()
    images, _ = shapes(count=2)
    cases = [({"method": "saliency"}, "method must be one of"),
             ({"head_fusion": "median"}, "head fusion must be one of"),
             ({"discard_ratio": 1.0}, "discard ratio"),
             ({"layer": 2}, "layer 2 does not exist"),
             ({"method": "rollout", "class_name": "circle"}, "use method integrated or gradient"),
             ({"method": "gradient", "class_name": "hexagon"}, "not one of the model's classes")]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            explain(model, images, progress=False, **options)


# Files -----------------------------------------------------------------------------------------

def test_save_maps_writes_one_array_per_image_keyed_by_name(tiny_model, tmp_path):
    model = sharpen(tiny_model())
    images, labels = shapes(count=3)
    result = explain_images(model, load_images((images, labels), (32, 32)), progress=False)
    result.images.names = ["photos/a.jpg", "photos/b.jpg", "photos/a.jpg"]
    path = save_maps_file(result, tmp_path / "maps.npz", chunk=2)
    with np.load(path) as saved:
        assert sorted(saved.files) == ["photos/a.jpg", "photos/a.jpg#2", "photos/b.jpg"]
        np.testing.assert_allclose(saved["photos/b.jpg"], result.maps([1])[0])
        assert saved["photos/a.jpg#2"].shape == (32, 32)
    with pytest.raises(OutputExistsError):
        save_maps_file(result, path)
    assert map_keys(["x", "x", "x"]) == ["x", "x#2", "x#3"]


def test_bertviz_layout():
    attention = random_attention(batch=1, layers=2, heads=3, tokens=7)[0]
    data = json.loads(json.dumps(bertviz_attention(attention, (2, 3))))
    assert data["tokens"] == token_names((2, 3)) == ["CLS", "patch_0_0", "patch_0_1", "patch_0_2",
                                                     "patch_1_0", "patch_1_1", "patch_1_2"]
    entry = data["attention"][0]
    assert entry["left_text"] == entry["right_text"] == data["tokens"]
    attn = np.array(entry["attn"])
    assert attn.shape == (2, 3, 7, 7)
    np.testing.assert_allclose(attn, attention, atol=1e-5)
    # the checks BertViz's head_view / model_view make before drawing
    assert len(entry["attn"][0][0]) == len(entry["left_text"])
    assert len(entry["attn"][0][0][0]) == len(entry["right_text"])
    assert data["include_layers"] == [0, 1] and data["include_heads"] == [0, 1, 2] and data["total_heads"] == 3
    with pytest.raises(ConfigError):
        bertviz_attention(attention, (3, 3))


def test_attention_weights_for_a_few_images(tiny_model):
    model = sharpen(tiny_model())
    images, _ = shapes(count=2)
    probabilities, attention = attention_weights(model, images)
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)
    assert attention.shape == (2, 2, 4, 17, 17)


def test_focus_position():
    names = ["/data/photos/mug/a.jpg", "/data/photos/can/a.jpg", "/data/photos/can/b.jpg"]
    assert focus_position(names, None) == 0
    assert focus_position(names, "2") == 2 and focus_position(names, -1) == 2
    assert focus_position(names, "b.jpg") == 2
    assert focus_position(names, "mug/a.jpg") == 0
    with pytest.raises(ConfigError, match="matches 2 images"):
        focus_position(names, "a.jpg")
    with pytest.raises(ConfigError, match="matches no image"):
        focus_position(names, "c.jpg")
    with pytest.raises(ConfigError, match="does not exist"):
        focus_position(names, 3)


def test_explain_writes_figures_pdf_and_table(tiny_model, tmp_path):
    model = sharpen(tiny_model())
    images, labels = shapes(count=5)
    out = tmp_path / "out"
    result = explain(model, (images, labels), out=out, pdf=tmp_path / "maps.pdf", method="gradient",
                     focus="array[3]", progress=False)
    figures = sorted((out / "figures").iterdir())
    assert [p.name for p in figures] == [f"{i:04d}_array_{i}.png" for i in range(5)]
    for name in ("grid.png", "layers.png", "heads.png"):
        assert (out / name).stat().st_size > 1000
    import pandas as pd

    table = pd.read_csv(out / "explanations.csv")
    assert list(table["predicted"]) == [model.class_names[i] for i in result.predicted]
    assert (table["explained"] == table["predicted"]).all()
    pdf = (tmp_path / "maps.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") >= 5
    with pytest.raises(OutputExistsError):
        explain(model, (images, labels), out=out, progress=False)


def test_default_pixel_maps_reach_every_output(tiny_model, tmp_path):
    from PIL import Image

    from vitkit.explanation.figures import image_figure, overlay
    from vitkit.figures import plt

    model = sharpen(tiny_model())
    images, labels = shapes(count=3)
    out = tmp_path / "out"
    result = explain(model, (images, labels), out=out, pdf=tmp_path / "maps.pdf", report=tmp_path / "report.html",
                     save_maps=tmp_path / "maps.npz", progress=False)
    assert result.method == "integrated" and result.native_maps.shape == (3, 32, 32)
    with np.load(tmp_path / "maps.npz") as saved:
        for index, name in enumerate(result.names):
            np.testing.assert_array_equal(saved[name], result.native_maps[index])
    assert len(list((out / "figures").iterdir())) == 3
    for name in ("grid.png", "layers.png", "heads.png"):
        assert Image.open(out / name).size[0] > 300
    page = (tmp_path / "report.html").read_text()
    assert "positive part per pixel" in page and "no tokens: one value for each of the 32 x 32 pixels" in page
    assert (tmp_path / "maps.pdf").read_bytes().startswith(b"%PDF")
    figure = image_figure(result, 0)
    np.testing.assert_array_equal(np.asarray(figure.axes[1].images[0].get_array()),
                                  overlay(result.pixels([0])[0], result.native_maps[0]))
    plt.close(figure)


@pytest.mark.parametrize("total", [0, 1, 5, 16, 17, 24, 1000])
def test_spread_indices_cover_the_set_evenly(total):
    from vitkit.figures import spread_indices

    chosen = spread_indices(total, 16)
    if total <= 16:
        assert list(chosen) == list(range(total))
    else:
        step = (total - 1) / 15
        assert len(chosen) == 16 and chosen[0] == 0 and chosen[-1] == total - 1
        assert set(np.diff(chosen)) <= {int(np.floor(step)), int(np.ceil(step))}


def test_attention_grid_shows_every_class_of_a_class_sorted_set(tiny_model, tmp_path, monkeypatch):
    """24 images sorted by class (8 each): the first 16 would be two classes; the grid shows all three."""
    from vitkit.explanation import figures

    drawn = []

    def recording_grid(explanation, indices, *args, **kwargs):
        figure = original(explanation, indices, *args, **kwargs)
        drawn.extend(axis.get_title().split("\n")[0] for axis in figure.axes if axis.get_title())
        return figure

    original = figures.grid_figure
    monkeypatch.setattr(figures, "grid_figure", recording_grid)
    images, labels = shapes(count=24)
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], [labels[i] for i in order]
    explain(tiny_model(), (images, labels), out=tmp_path / "out", progress=False)
    positions = [int(name[len("array["):-1]) for name in drawn]
    assert len(positions) == 16 and positions == sorted(positions)
    assert positions[0] == 0 and positions[-1] == 23
    assert {labels[i] for i in positions} == {"circle", "square", "triangle"}
