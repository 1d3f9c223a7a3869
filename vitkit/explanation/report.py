"""A self-contained HTML report of an explanation: model, metrics, and every image with its map.

One file, no external assets: images are embedded as data URIs, the style and the few lines of
script that sort and filter the table (:mod:`vitkit.explanation.report_page`) are inline. The
filter and sort state lives in the URL fragment (``report.html#verdict=wrong&sort=confidence``),
so a view can be bookmarked or shared.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from vitkit.explanation.figures import overlay, short_name, verdicts
from vitkit.explanation.report_page import PAGE, SCRIPT, STYLE
from vitkit.errors import ManifestError
from vitkit.fileio import write_text_atomic
from vitkit.progress import Progress

if TYPE_CHECKING:
    from vitkit.explanation.result import Explanation
    from vitkit.models.classifier import ImageClassifier

THUMBNAIL_SIZE = 128
_CHUNK = 64


def write_report(
    explanation: "Explanation",
    path: str | os.PathLike,
    model: "ImageClassifier",
    *,
    model_source: str | os.PathLike | None = None,
    title: str = "Attention report",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the HTML report of ``explanation`` to ``path`` (atomically).

    Args:
        explanation: maps and predictions from :func:`vitkit.explain`.
        path: the ``.html`` file to write.
        model: the classifier that made them (for its metadata).
        model_source: where the model came from (its file), shown in the report.
        title: page title.
        overwrite: replace an existing file.
        progress: show a progress bar while images are encoded.
    """
    rows = []
    with Progress(len(explanation), "report", enabled=None if progress else False) as bar:
        for start in range(0, len(explanation), _CHUNK):
            indices = np.arange(start, min(start + _CHUNK, len(explanation)))
            rows += _image_rows(explanation, indices)
            bar.update(len(indices))
    page = PAGE.format(
        title=html.escape(title),
        generated=html.escape(datetime.datetime.now().strftime("%Y-%m-%d %H:%M")),
        summary=_summary(explanation),
        model=_definition_table(model_metadata(model, explanation, model_source)),
        metrics=_metrics_section(explanation),
        controls=_controls(explanation),
        head=_table_head(explanation),
        rows="\n".join(rows),
        style=STYLE,
        script=SCRIPT,
    )
    return write_text_atomic(path, page, overwrite=overwrite)


def model_metadata(model: "ImageClassifier", explanation: "Explanation",
                   model_source: str | os.PathLike | None = None) -> dict[str, Any]:
    """What the report says about the model and how the maps were made."""
    import keras

    from vitkit import __version__

    spec = model.spec
    backbone = spec.backbone
    grid = model.backbone.grid_shape(spec.image_size)
    values: dict[str, Any] = {}
    if model_source is not None:
        values["model file"] = str(model_source)
    values.update({
        "classes": ", ".join(spec.class_names),
        "image size": f"{spec.image_size[0]} x {spec.image_size[1]} ({spec.resize_mode})",
        "backbone": (f"{backbone.num_layers} layers, width {backbone.hidden_size}, {backbone.num_heads} heads, "
                     f"MLP {backbone.mlp_dim}, patch {backbone.patch_size} ({grid[0]} x {grid[1]} patches)"),
        "parameters": f"{model.count_params():,}",
        "maps": explanation.description(),
        "tokens": explanation.tokens_read(),
        "software": f"vitkit {__version__}, Keras {keras.__version__} ({keras.backend.backend()})",
    })
    return values


def metrics_of(explanation: "Explanation") -> dict[str, Any] | None:
    """Classification metrics when every image has a known class, else None."""
    from vitkit.evaluation import classification_metrics

    if explanation.labels is None or not len(explanation):
        return None
    try:
        true = explanation.images.label_indices(explanation.class_names)
    except ManifestError:
        return None
    return classification_metrics(true, explanation.probabilities, explanation.class_names)


# Parts of the page -----------------------------------------------------------------------------

def _summary(explanation: "Explanation") -> str:
    cards = [("images", f"{len(explanation):,}"), ("method", explanation.method)]
    metrics = metrics_of(explanation)
    if metrics is not None:
        wrong = int(round(metrics["images"] * (1 - metrics["accuracy"])))
        cards += [("accuracy", f"{metrics['accuracy']:.1%}"), ("wrong", f"{wrong:,}")]
    if explanation.images.skipped:
        cards.append(("skipped (unreadable)", f"{len(explanation.images.skipped):,}"))
    return "".join(
        f'<div class="card"><div class="value">{html.escape(value)}</div>'
        f'<div class="label">{html.escape(label)}</div></div>' for label, value in cards
    )


def _definition_table(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in values.items())
    return f'<table class="facts">{rows}</table>'


def _metrics_section(explanation: "Explanation") -> str:
    metrics = metrics_of(explanation)
    if metrics is None:
        reason = ("the images have no known classes" if explanation.labels is None
                  else "some true classes are not among the model's classes")
        return f'<p class="note">No metrics: {html.escape(reason)}.</p>'
    headline = {"accuracy": f"{metrics['accuracy']:.4f}", "loss": f"{metrics['loss']:.4f}",
                "macro F1": f"{metrics['macro_f1']:.4f}"}
    headline.update({key.replace("_", " "): f"{metrics[key]:.4f}" for key in ("top2_accuracy", "top3_accuracy") if key in metrics})
    per_class = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
        f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>"
        for name, m in metrics["per_class"].items()
    )
    return (
        _definition_table(headline)
        + '<div class="pair"><table class="grid"><caption>per class</caption>'
        + "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
        + per_class + "</table>"
        + _confusion_table(np.array(metrics["confusion_matrix"]), metrics["class_names"]) + "</div>"
    )


def _confusion_table(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    top = max(int(matrix.max()), 1) if matrix.size else 1
    head = "".join(f"<th>{html.escape(name)}</th>" for name in class_names)
    body = []
    for i, name in enumerate(class_names):
        cells = []
        for j, count in enumerate(matrix[i]):
            shade = 0.08 + 0.72 * count / top if count else 0.0
            colour = "26, 127, 55" if i == j else "207, 34, 46"
            cells.append(f'<td style="background: rgba({colour}, {shade:.2f})">{count}</td>')
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return ('<table class="grid confusion"><caption>confusion (rows true, columns predicted)</caption>'
            f"<tr><th></th>{head}</tr>{''.join(body)}</table>")


def _controls(explanation: "Explanation") -> str:
    def select(name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
        items = "".join(f'<option value="{html.escape(value)}">{html.escape(text)}</option>' for value, text in options)
        return f'<label>{label} <select id="filter-{name}" data-filter="{name}">{items}</select></label>'

    every_class = sorted(set(explanation.class_names) | set(explanation.labels or []))
    classes = [("", "all")] + [(name, name) for name in every_class]
    parts = [select("predicted", "predicted", classes)]
    if explanation.labels is not None:
        parts.append(select("true", "true class", classes))
        parts.append(select("verdict", "prediction", [("", "all"), ("right", "right"), ("wrong", "wrong")]))
    parts.append('<label>file <input id="filter-name" data-filter="name" type="search" placeholder="part of the name"></label>')
    parts.append('<span id="shown" aria-live="polite"></span>')
    return "".join(parts)


_COLUMNS = (("index", "#", "number"), (None, "image", None), (None, "map", None), ("name", "file", "text"),
            ("predicted", "predicted", "text"), ("confidence", "confidence", "number"))


def _table_head(explanation: "Explanation") -> str:
    columns = list(_COLUMNS)
    if _shows_explained(explanation):
        columns.append(("explained", "map for", "text"))
    if explanation.labels is not None:
        columns += [("true", "true class", "text"), ("verdict", "verdict", "text")]
    cells = []
    for key, label, kind in columns:
        if key is None:
            cells.append(f"<th>{label}</th>")
        else:
            cells.append(f'<th aria-sort="none"><button type="button" data-sort="{key}" data-kind="{kind}">{label}</button></th>')
    return "<tr>" + "".join(cells) + "</tr>"


def _shows_explained(explanation: "Explanation") -> bool:
    return bool((explanation.explained != explanation.predicted).any())


def _image_rows(explanation: "Explanation", indices: np.ndarray) -> list[str]:
    pixels = explanation.pixels(indices)
    maps = explanation.maps(indices)
    verdict = verdicts(explanation)
    explained_column = _shows_explained(explanation)
    rows = []
    for index, image, attention_map in zip(indices, pixels, maps):
        name = explanation.names[index]
        predicted = explanation.class_names[int(explanation.predicted[index])]
        confidence = float(explanation.confidence[index])
        data = {"index": str(index + 1), "name": name, "predicted": predicted, "confidence": f"{confidence:.6f}"}
        cells = [
            f'<td class="num">{index + 1}</td>',
            f'<td><img src="{image_data_uri(image)}" alt="image {index + 1}" width="{THUMBNAIL_SIZE}"></td>',
            f'<td><img src="{image_data_uri(overlay(image, attention_map))}" alt="map {index + 1}" width="{THUMBNAIL_SIZE}"></td>',
            f'<td class="name" title="{html.escape(name)}">{html.escape(short_name(name))}</td>',
            f"<td>{html.escape(predicted)}</td>",
            f'<td class="num">{confidence:.1%}</td>',
        ]
        if explained_column:
            cells.append(f"<td>{html.escape(explanation.class_names[int(explanation.explained[index])])}</td>")
        if explanation.labels is not None:
            right = verdict[index]
            data.update({"true": explanation.labels[index], "verdict": "right" if right else "wrong"})
            cells.append(f"<td>{html.escape(explanation.labels[index])}</td>")
            cells.append(f'<td><span class="badge {data["verdict"]}">{data["verdict"]}</span></td>')
        attributes = " ".join(f'data-{key}="{html.escape(value)}"' for key, value in data.items())
        rows.append(f"<tr {attributes}>{''.join(cells)}</tr>")
    return rows


def image_data_uri(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> str:
    """A uint8 image as a JPEG ``data:`` URI, scaled so that its longer side is ``size`` pixels."""
    picture = Image.fromarray(image)
    scale = size / max(picture.size)
    if scale != 1:
        target = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(target, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
