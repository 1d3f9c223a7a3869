"""Evaluation on labelled images: metrics, confusion matrix, error grid, probability tables."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from vitkit.data.imageset import write_skipped
from vitkit.errors import ManifestError
from vitkit.figures import confusion_figure, image_grid_figure, save_figure
from vitkit.fileio import check_writable, write_text_atomic
from vitkit.prediction import (Predictor, as_predictor, images_while_preparing, predict_probabilities,
                               prediction_table, write_table)

OUTPUT_FILES = (
    "metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "misclassified.png",
    "probabilities.csv", "class_probabilities.csv", "skipped.csv",
)


def classification_metrics(true: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, loss, top-k accuracy, per-class precision/recall/F1, macro means, confusion matrix.

    Args:
        true: class indices ``(n,)``.
        probabilities: ``(n, classes)``.
        class_names: names of the columns.
    """
    count, classes = probabilities.shape
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    picked = probabilities[np.arange(count), true]
    ranks = (probabilities > picked[:, None]).sum(axis=1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(confusion[i].sum())}
    present = [m for m in per_class.values() if m["support"]]
    return {
        "images": int(count),
        "accuracy": float((predicted == true).mean()) if count else 0.0,
        "loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()) if count else 0.0,
        **{f"top{k}_accuracy": float((ranks < k).mean()) for k in (2, 3) if k < classes},
        "macro_precision": float(np.mean([m["precision"] for m in present])) if present else 0.0,
        "macro_recall": float(np.mean([m["recall"] for m in present])) if present else 0.0,
        "macro_f1": float(np.mean([m["f1"] for m in present])) if present else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }


def evaluate(
    model: Predictor | str | os.PathLike,
    data: Any,
    *,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    preprocess: str | None = None,
    num_heads: int | None = None,
    precision: str = "float32",
    **load_options: Any,
) -> dict[str, Any]:
    """Evaluate a model on labelled images and, with ``out``, write the report files there.

    Files in ``out``: ``metrics.json``, ``confusion_matrix.csv`` / ``.png``,
    ``misclassified.png`` (up to 16 errors), ``probabilities.csv`` (every image, every class)
    and ``class_probabilities.csv`` (mean probability of each predicted class per true class);
    ``skipped.csv`` lists the images that could not be read, when there are any.
    ``preprocess`` and ``num_heads`` (with ``classes`` as the class names) serve weights files
    of other tools, as in :func:`vitkit.load_model`. ``precision``: the dtype policy a model
    file is loaded in, as in :func:`vitkit.predict`.

    Returns:
        The metrics (see :func:`classification_metrics`).
    """
    if out is not None:
        for name in OUTPUT_FILES:
            check_writable(Path(out) / name, overwrite)
    model = as_predictor(model, load_options.get("classes"), precision, preprocess=preprocess, num_heads=num_heads)
    images = images_while_preparing(model, data, batch_size, **load_options)
    if images.labels is None:
        raise ManifestError("evaluation needs labelled images: give a manifest with classes")
    class_names = model.class_names
    true = images.label_indices(class_names)
    probabilities = predict_probabilities(model, images, batch_size)
    metrics = classification_metrics(true, probabilities, class_names)
    metrics["skipped"] = len(images.skipped)
    if out is not None:
        _write_report(Path(out), metrics, images, probabilities, class_names)
    return metrics


def _write_report(out: Path, metrics, images, probabilities, class_names) -> None:
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2), overwrite=True)
    confusion = np.array(metrics["confusion_matrix"])
    frame = pd.DataFrame(confusion, index=pd.Index(class_names, name="true"), columns=class_names)
    write_table(frame.reset_index(), out / "confusion_matrix.csv", overwrite=True)
    save_figure(confusion_figure(confusion, class_names), out / "confusion_matrix.png")
    table = prediction_table(images, probabilities, class_names)
    write_table(table, out / "probabilities.csv", overwrite=True)
    means = table.groupby("true")[[f"p_{name}" for name in class_names]].mean().reindex(class_names)
    write_table(means.reset_index(), out / "class_probabilities.csv", overwrite=True)
    wrong = np.flatnonzero(~table["correct"].to_numpy())[:16]
    titles = [f"{Path(table.image[i]).name}\ntrue {table.true[i]}, predicted\n{table.predicted[i]} ({table.confidence[i]:.0%})" for i in wrong]
    figure = image_grid_figure(list(images.read(wrong)), titles, [False] * len(wrong)) if len(wrong) else \
        image_grid_figure([np.full((8, 8, 3), 255, np.uint8)], ["no misclassified images"])
    save_figure(figure, out / "misclassified.png")
    (out / "skipped.csv").unlink(missing_ok=True)
    if images.skipped:
        write_skipped(images.skipped, out / "skipped.csv", overwrite=True)
