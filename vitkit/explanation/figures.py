"""Figures of attention maps: original | overlay | masked per image, grids, per-layer strips, PDF.

Images are the uint8 arrays the model saw; maps are ``(height, width)`` floats in [0, 1]
(:meth:`vitkit.explanation.result.Explanation.maps`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from vitkit.figures import RIGHT_COLOUR, WRONG_COLOUR, image_grid_figure, plt
from vitkit.fileio import atomic_output

if TYPE_CHECKING:
    from vitkit.explanation.result import Explanation

COLORMAP = "jet"
# Opacity of the heat colours, from the map's lowest to its highest values: the photo stays
# readable where the model does not look, and the colours still show the scale everywhere.
OVERLAY_ALPHA = (0.2, 0.7)


def heat_colours(attention_map: np.ndarray, colormap: str = COLORMAP) -> np.ndarray:
    """``(h, w)`` map in [0, 1] -> ``(h, w, 3)`` float RGB colours in [0, 1]."""
    return plt.get_cmap(colormap)(np.clip(attention_map, 0.0, 1.0))[..., :3]


def overlay(image: np.ndarray, attention_map: np.ndarray, alpha: tuple[float, float] = OVERLAY_ALPHA,
            colormap: str = COLORMAP) -> np.ndarray:
    """The image blended with the map's colours, more opaque where the map is higher, uint8.

    Each pixel is ``(1 - a) * image + a * colour`` with ``a`` going linearly from ``alpha[0]``
    at map value 0 to ``alpha[1]`` at 1.
    """
    values = np.clip(attention_map, 0.0, 1.0)[..., np.newaxis]
    opacity = alpha[0] + (alpha[1] - alpha[0]) * values
    blend = (1.0 - opacity) * image.astype(np.float32) / 255.0 + opacity * heat_colours(attention_map, colormap)
    return np.clip(np.round(blend * 255.0), 0, 255).astype(np.uint8)


def masked(image: np.ndarray, attention_map: np.ndarray) -> np.ndarray:
    """The image multiplied by the map (dark where the model does not look), uint8."""
    return (image.astype(np.float32) * np.clip(attention_map, 0.0, 1.0)[..., np.newaxis]).astype(np.uint8)


def title_colour(correct: bool | None) -> str:
    """Green for a right prediction, red for a wrong one, black when the true class is unknown."""
    return "black" if correct is None else RIGHT_COLOUR if correct else WRONG_COLOUR


def explanation_figure(image: np.ndarray, attention_map: np.ndarray, title: str,
                       correct: bool | None = None, method: str = "attention") -> plt.Figure:
    """One image: original | heat-map overlay | masked image, under a title coloured by ``correct``."""
    figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.7))
    panels = ((image, "original"), (overlay(image, attention_map), f"{method} map"),
              (masked(image, attention_map), "masked by the map"))
    for axis, (pixels, caption) in zip(axes, panels):
        axis.imshow(pixels)
        axis.set_xlabel(caption, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    scale = plt.cm.ScalarMappable(cmap=COLORMAP, norm=plt.Normalize(0, 1))
    bar = figure.colorbar(scale, ax=axes[1], fraction=0.046, pad=0.02, ticks=[0, 0.5, 1])
    bar.ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10, color=title_colour(correct))
    figure.tight_layout()
    return figure


def overlay_grid_figure(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], titles: Sequence[str],
                        correct: Sequence[bool | None] | None = None, columns: int = 4) -> plt.Figure:
    """Many images as overlays in a grid, each titled (green / red when the true class is known)."""
    return image_grid_figure([overlay(image, m) for image, m in zip(images, maps)], titles, correct, columns)


def layer_strip_figure(image: np.ndarray, layer_maps: Sequence[np.ndarray], final_map: np.ndarray,
                       title: str, final_caption: str = "rollout", columns: int = 7) -> plt.Figure:
    """One image: the original, every layer's class-token map, and the final map, left to right.

    ``layer_maps`` are at image resolution, each stretched to its own range (:func:`stretched`)
    so that weak layers still show where they look.
    """
    panels = [(image, "original")]
    panels += [(overlay(image, m), f"layer {i}") for i, m in enumerate(layer_maps)]
    panels.append((overlay(image, final_map), final_caption))
    return _panel_grid(panels, title, columns)


def head_grid_figure(image: np.ndarray, head_maps: np.ndarray, title: str) -> plt.Figure:
    """One image's class-token map for every layer (rows) and head (columns), as overlays.

    Args:
        image: the image.
        head_maps: ``(layers, heads, height, width)`` maps in [0, 1].
        title: figure title.
    """
    layers, heads = head_maps.shape[:2]
    figure, axes = plt.subplots(layers, heads, figsize=(1.6 * heads + 0.6, 1.6 * layers + 0.6), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            axis = axes[layer, head]
            axis.imshow(overlay(image, head_maps[layer, head]))
            axis.set_xticks([])
            axis.set_yticks([])
            if layer == 0:
                axis.set_title(f"head {head}", fontsize=8)
            if head == 0:
                axis.set_ylabel(f"layer {layer}", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


# Figures of an Explanation ---------------------------------------------------------------------

def verdicts(explanation: "Explanation") -> list[bool | None]:
    """Per image: True when the prediction is right, False when wrong, None when the true class is unknown."""
    correct = explanation.correct
    return [None] * len(explanation) if correct is None else [bool(right) for right in correct]


def image_title(explanation: "Explanation", index: int, compact: bool = False) -> str:
    """File, predicted class and confidence, true class when known, explained class when not the predicted.

    ``compact`` puts the prediction and the true class on one line (for grids).
    """
    predicted = int(explanation.predicted[index])
    prediction = f"predicted {explanation.class_names[predicted]} ({explanation.confidence[index]:.1%})"
    lines = [short_name(explanation.names[index]), prediction]
    if explanation.labels is not None:
        truth = f"true {explanation.labels[index]}"
        if compact:
            lines[-1] += f", {truth}"
        else:
            lines.append(truth)
    explained = int(explanation.explained[index])
    if explained != predicted:
        lines.append(f"map for class {explanation.class_names[explained]}")
    return "\n".join(lines)


def short_name(name: str) -> str:
    """``.../mug/mug_01.jpg`` -> ``mug/mug_01.jpg``: enough of a path to tell images apart."""
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else name


def image_figure(explanation: "Explanation", index: int) -> plt.Figure:
    """Original | overlay | masked for image ``index`` of an explanation."""
    image = explanation.pixels([index])[0]
    return explanation_figure(image, explanation.maps([index])[0], image_title(explanation, index),
                              verdicts(explanation)[index], explanation.method)


def image_figures(explanation: "Explanation", indices: Iterable[int]) -> Iterator[plt.Figure]:
    """:func:`image_figure` for each index, made one at a time (for multi-page PDFs)."""
    for index in indices:
        yield image_figure(explanation, index)


def grid_figure(explanation: "Explanation", indices: Sequence[int], columns: int = 4) -> plt.Figure:
    """Overlays of several images of an explanation in a grid, titled and coloured by verdict."""
    indices = list(indices)
    verdict = verdicts(explanation)
    known = explanation.labels is not None
    return overlay_grid_figure(
        list(explanation.pixels(indices)), list(explanation.maps(indices)),
        [image_title(explanation, i, compact=True) for i in indices],
        [verdict[i] for i in indices] if known else None, columns,
    )


def stretched(maps: np.ndarray) -> np.ndarray:
    """Each map (first axis) stretched to [0, 1] between its own minimum and maximum.

    For the per-layer and per-head panels: a single layer's or head's attention is often nearly
    flat, and divided by its maximum alone it would paint the whole image hot.
    """
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    return ((flat - low[:, None]) / span[:, None]).reshape(maps.shape)


def layer_figure(explanation: "Explanation", index: int) -> plt.Figure:
    """The per-layer strip of image ``index``: original, each layer's class-token map, final map."""
    from vitkit.explanation.rollout import resize_maps

    image = explanation.pixels([index])[0]
    layer_maps = resize_maps(stretched(explanation.layer_maps[index]), explanation.image_size)
    title = (image_title(explanation, index).replace("\n", ", ")
             + f"\nclass-token attention per layer (heads: {explanation.head_fusion}), then the {explanation.method} map")
    return layer_strip_figure(image, list(layer_maps), explanation.maps([index])[0], title, f"{explanation.method} map")


def head_figure(model, explanation: "Explanation", index: int) -> plt.Figure:
    """Every layer's and head's class-token map (mean of the patch rows for a mean-pooled model)
    for image ``index`` (one extra forward pass).

    Each panel is stretched to its own range (:func:`stretched`).
    """
    from vitkit.explanation.attention import attention_weights
    from vitkit.explanation.rollout import class_token_attention, resize_maps

    image = explanation.pixels([index])[0]
    _, attention = attention_weights(model, image[np.newaxis])
    config = model.backbone.config
    rows = class_token_attention(attention[0], config.prefix_tokens, config.pooling)
    layers, heads = rows.shape[:2]
    grid = model.backbone.grid_shape(model.spec.image_size)
    maps = resize_maps(stretched(rows.reshape(layers * heads, *grid)), explanation.image_size)
    return head_grid_figure(image, maps.reshape(layers, heads, *explanation.image_size),
                            image_title(explanation, index).replace("\n", ", "))


def _panel_grid(panels: list[tuple[np.ndarray, str]], title: str, columns: int) -> plt.Figure:
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.2 * rows + 0.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (pixels, caption) in zip(axes.flat, panels):
        axis.imshow(pixels)
        axis.set_title(caption, fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def save_pdf(figures: Iterable[plt.Figure], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write figures as the pages of one PDF, atomically; each figure is closed once drawn."""
    from matplotlib.backends.backend_pdf import PdfPages

    path = Path(path)
    with atomic_output(path, overwrite=overwrite, suffix=".pdf") as temporary:
        with PdfPages(temporary) as pages:
            for figure in figures:
                pages.savefig(figure, bbox_inches="tight")
                plt.close(figure)
    return path
