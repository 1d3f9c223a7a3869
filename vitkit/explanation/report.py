"""A self-contained HTML report of an explanation: model, metrics, and every image with its map.

One file, no external assets: images are embedded as data URIs, the style and the few lines of
script that sort and filter the table are inline. The filter and sort state lives in the URL
fragment (``report.html#verdict=wrong&sort=confidence``), so a view can be bookmarked or shared.
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
    page = _PAGE.format(
        title=html.escape(title),
        generated=html.escape(datetime.datetime.now().strftime("%Y-%m-%d %H:%M")),
        summary=_summary(explanation),
        model=_definition_table(model_metadata(model, explanation, model_source)),
        metrics=_metrics_section(explanation),
        controls=_controls(explanation),
        head=_table_head(explanation),
        rows="\n".join(rows),
        style=_STYLE,
        script=_SCRIPT,
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


_STYLE = """
:root { --right: #1a7f37; --wrong: #cf222e; --line: #d0d7de; --muted: #57606a; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0 auto; padding: 24px 32px 48px; max-width: 1200px; }
h1 { font-size: 24px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.generated, .note { color: var(--muted); }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0 4px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 120px; background: var(--soft); }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; }
table.facts th { text-align: left; padding: 3px 16px 3px 0; color: var(--muted); font-weight: 500; vertical-align: top; }
table.facts td { padding: 3px 0; }
.pair { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; margin-top: 12px; }
table.grid caption { text-align: left; color: var(--muted); padding-bottom: 4px; }
table.grid th, table.grid td { border: 1px solid var(--line); padding: 4px 10px; text-align: right; }
table.grid th { background: var(--soft); font-weight: 600; }
table.grid tr th:first-child { text-align: left; }
.controls { display: flex; gap: 16px; flex-wrap: wrap; align-items: center; margin: 8px 0 12px;
            position: sticky; top: 0; background: #fff; padding: 8px 0; z-index: 2; border-bottom: 1px solid var(--line); }
.controls select, .controls input { font: inherit; padding: 3px 6px; border: 1px solid var(--line); border-radius: 6px; }
#shown { color: var(--muted); margin-left: auto; }
table#images { width: 100%; }
table#images th { text-align: left; background: var(--soft); border-bottom: 2px solid var(--line); padding: 6px 8px; white-space: nowrap; }
table#images th button { font: inherit; font-weight: 600; border: 0; background: none; cursor: pointer; padding: 0; color: inherit; }
table#images th[aria-sort="ascending"] button::after { content: " \\25B2"; font-size: 10px; }
table#images th[aria-sort="descending"] button::after { content: " \\25BC"; font-size: 10px; }
table#images td { border-bottom: 1px solid var(--line); padding: 6px 8px; vertical-align: middle; }
table#images td img { display: block; border-radius: 4px; height: auto; }
table#images tr:hover td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { max-width: 260px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600; }
.badge.right { background: var(--right); }
.badge.wrong { background: var(--wrong); }
"""

_SCRIPT = """
(function () {
  "use strict";
  var body = document.querySelector("#images tbody");
  var rows = Array.prototype.slice.call(body.rows);
  var filters = Array.prototype.slice.call(document.querySelectorAll("[data-filter]"));
  var buttons = Array.prototype.slice.call(document.querySelectorAll("th button[data-sort]"));
  var state = { sort: "index", order: "asc" };

  function readHash() {
    var values = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
      if (!pair) return;
      var parts = pair.split("=");
      values[decodeURIComponent(parts[0])] = decodeURIComponent(parts.slice(1).join("=") || "");
    });
    filters.forEach(function (control) {
      var key = control.dataset.filter;
      if (key in values) control.value = values[key];
    });
    if (values.sort && buttons.some(function (b) { return b.dataset.sort === values.sort; })) state.sort = values.sort;
    if (values.order === "asc" || values.order === "desc") state.order = values.order;
  }

  function writeHash() {
    var parts = [];
    filters.forEach(function (control) {
      if (control.value) parts.push(control.dataset.filter + "=" + encodeURIComponent(control.value));
    });
    if (state.sort !== "index" || state.order !== "asc") parts.push("sort=" + state.sort, "order=" + state.order);
    var hash = parts.length ? "#" + parts.join("&") : " ";
    history.replaceState(null, "", hash === " " ? location.pathname + location.search : hash);
  }

  function matches(row) {
    return filters.every(function (control) {
      var wanted = control.value.trim();
      if (!wanted) return true;
      var have = row.dataset[control.dataset.filter] || "";
      if (control.dataset.filter === "name") return have.toLowerCase().indexOf(wanted.toLowerCase()) >= 0;
      return have === wanted;
    });
  }

  function compare(a, b) {
    var kind = "text";
    buttons.forEach(function (b) { if (b.dataset.sort === state.sort) kind = b.dataset.kind; });
    var x = a.dataset[state.sort] || "", y = b.dataset[state.sort] || "";
    var order = kind === "number" ? parseFloat(x) - parseFloat(y) : x.localeCompare(y, undefined, { numeric: true });
    if (order === 0) order = parseFloat(a.dataset.index) - parseFloat(b.dataset.index);
    return state.order === "asc" ? order : -order;
  }

  function apply() {
    var shown = 0;
    rows.slice().sort(compare).forEach(function (row) {
      row.hidden = !matches(row);
      if (!row.hidden) shown += 1;
      body.appendChild(row);
    });
    buttons.forEach(function (button) {
      var active = button.dataset.sort === state.sort;
      button.parentNode.setAttribute("aria-sort", active ? (state.order === "asc" ? "ascending" : "descending") : "none");
    });
    document.getElementById("shown").textContent = "showing " + shown + " of " + rows.length;
    document.body.dataset.shown = String(shown);
    writeHash();
  }

  filters.forEach(function (control) { control.addEventListener("input", apply); });
  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      if (state.sort === button.dataset.sort) state.order = state.order === "asc" ? "desc" : "asc";
      else { state.sort = button.dataset.sort; state.order = button.dataset.kind === "number" ? "desc" : "asc"; }
      apply();
    });
  });
  window.addEventListener("hashchange", function () { readHash(); apply(); });
  readHash();
  apply();
  document.body.dataset.ready = "true";
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<div class="generated">made by vitkit on {generated}</div>
<div class="cards">{summary}</div>
<h2>Model</h2>
{model}
<h2>Metrics</h2>
{metrics}
<h2>Images</h2>
<div class="controls">{controls}</div>
<table id="images">
<thead>{head}</thead>
<tbody>
{rows}
</tbody>
</table>
<script>{script}</script>
</body>
</html>
"""
