"""Matplotlib figures: training curves, confusion matrix, titled image grids."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitkit.fileio import atomic_output  # noqa: E402

RIGHT_COLOUR = "#1a7f37"
WRONG_COLOUR = "#cf222e"


def spread_indices(total: int, count: int) -> np.ndarray:
    """Up to ``count`` positions spread evenly over ``range(total)``, first and last included.

    Grids show these rather than the first ``count`` images, so a set sorted by class shows
    every class.

    Example:
        >>> spread_indices(10, 4)
        array([0, 3, 6, 9])
    """
    if total <= 0 or count <= 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def save_figure(figure: plt.Figure, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Save and close a figure atomically; the format follows the suffix (png, pdf, svg)."""
    path = Path(path)
    with atomic_output(path, overwrite=overwrite, suffix=path.suffix) as temporary:
        figure.savefig(temporary, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    return path


def history_figure(history: Sequence[dict[str, float]]) -> plt.Figure:
    """Loss and accuracy per epoch, training and validation."""
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, style, markersize=3, label=(prefix or "train_") + metric)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> plt.Figure:
    """Confusion matrix with counts, rows = true class, columns = predicted class."""
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")
    figure.tight_layout()
    return figure


def image_grid_figure(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    correct: Sequence[bool | None] | None = None,
    columns: int = 4,
) -> plt.Figure:
    """Images with titles; titles are green when ``correct`` is True, red when False."""
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for i, (image, title) in enumerate(zip(images, titles)):
        axis = axes.flat[i]
        axis.imshow(image)
        verdict = None if correct is None else correct[i]
        colour = "black" if verdict is None else RIGHT_COLOUR if verdict else WRONG_COLOUR
        axis.set_title(title, fontsize=8, color=colour)
    figure.tight_layout()
    return figure
