"""The fixed parts of the HTML report: the page skeleton, its style sheet and its script.

:data:`PAGE` is a ``str.format`` template; :func:`vitkit.explanation.report.write_report` fills
its fields (``title``, ``generated``, ``summary``, ``model``, ``metrics``, ``controls``, ``head``,
``rows``, ``style``, ``script``). :data:`SCRIPT` sorts and filters the image table and keeps that
state in the URL fragment; it needs no library and no network.
"""

STYLE = """
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

SCRIPT = """
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

PAGE = """<!DOCTYPE html>
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
