"""report.html: the run's report as one self-contained page (inline CSS, JS and SVG; nothing fetched).

Written beside report.md by every run, sweep and ``advssm report --html``. It holds the Best / Last / Diff
table (sortable: click a header), each cell's test clean and PGD accuracy per epoch with the Best epoch
marked (and the train-set curves, the AutoAttack points), the AutoAttack components with the examples each
one broke, every warning (gradient masking included), the robustness curves that ``advssm eval --eps``
left in a cell folder, each cell's environment and spec, relative links to its files, and for a sweep a
grid (layer x method by default) of any column chosen in a select box, with the cells still pending or
running marked as such.

    write_html(run_dir, {"standard": run_dir / "standard", "pgd-at": run_dir / "pgd-at"}, "advssm run: demo")

The page's data is embedded as JSON (``<script type="application/json" id="report-data">``) for the grid's
script; the table and the plots are plain HTML and SVG, readable without JavaScript.
"""
from __future__ import annotations

import html
import itertools
import json
import math
import os
from collections import Counter
from pathlib import Path

from ..errors import ConfigError
from ..experiment import cell_folder, jobs, seeds
from ..experiment.final_eval import describe
from ..experiment.run_folder import CONFIG_FILE, REPORT_HTML, read_cells, read_spec
from ..files import write_text
from .curves import read_curves
from .table import pgd_label, selection_text

KEYS = (("clean_acc", "Clean"), ("pgd_acc", "PGD"), ("aa_acc", "AA"))
STAGES = ("best", "last", "diff")
# the grid's default rows and columns (the paper's tables: a layer per row, a training method per column)
GRID_ROWS, GRID_COLUMNS = "layer", "method"
_E = html.escape


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.2f}"


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


# -- SVG plots -----------------------------------------------------------------------------------------------

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 300, 48, 16, 16, 40
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axes(x_lo: float, x_hi: float, x_label: str, x_ticks: list[float], fmt) -> tuple[list[str], object, object]:
    sx = _scale(x_lo, x_hi, PAD_L, W - PAD_R)
    sy = _scale(0, 100, H - PAD_B, PAD_T)
    parts = [f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" '
             'fill="none" stroke="#999"/>']
    for y in range(0, 101, 20):
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{PAD_L - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y}</text>')
    for x in x_ticks:
        parts.append(f'<text x="{sx(x):.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{_E(fmt(x))}</text>')
    parts.append(f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{H - 6}" text-anchor="middle">{_E(x_label)}</text>'
                 f'<text transform="translate(12 {(PAD_T + H - PAD_B) / 2}) rotate(-90)" '
                 'text-anchor="middle">accuracy (%)</text>')
    return parts, sx, sy


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * k / (n - 1) for k in range(n)]


DASHES = ("", "6 4", "2 3", "9 3 2 3")  # solid, dashed, dotted, dash-dot: one per attack of a robustness curve
BORDERS = ("solid", "dashed", "dotted", "double")  # the legend's swatch of each


def _line(points, sx, sy, color: str, dash: bool | str, label: str, marker: bool = False) -> str:
    if not points:
        return ""
    path = " ".join(f"{sx(x):.1f},{sy(100 * y):.1f}" for x, y in points)
    pattern = "5 4" if dash is True else (dash or "")
    style = f' stroke-dasharray="{pattern}"' if pattern else ""
    out = f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{style}><title>{_E(label)}</title>' \
          "</polyline>"
    if marker or len(points) == 1:
        out += "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(100 * y):.1f}" r="3" fill="{color}"/>' for x, y in points)
    return out


def _legend(items: list[tuple[str, str, bool | str]]) -> str:
    spans = []
    for label, color, dash in items:
        style = dash if isinstance(dash, str) else ("dashed" if dash else "solid")
        spans.append(f'<span class="key"><span class="swatch" style="border-top: 3px {style} {color}"></span>'
                     f"{_E(label)}</span>")
    return f'<div class="legend">{"".join(spans)}</div>'


def _svg(parts: list[str], title: str) -> str:
    return (f'<svg class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{_E(title)}</title>{"".join(parts)}</svg>')


def epoch_plot(name: str, metrics: list[dict], summary: dict, train_set: list[dict]) -> str:
    """Test clean (dashed) and PGD (solid) accuracy per epoch, train-set ones in another colour, the final AA of
    the best and last checkpoints as points, and the Best epoch as a vertical line."""
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(metrics)]
    if not epochs:
        return '<p class="empty">no finished epoch yet</p>'
    lo, hi = min(epochs), max(max(epochs), min(epochs) + 1)
    step = max(1, round((hi - lo) / 6))
    parts, sx, sy = _axes(lo, hi, "epoch", list(range(lo, hi + 1, step)), lambda v: f"{v:g}")
    legend = []
    series = [(metrics, "clean_acc", "test clean", COLORS[1], True),
              (metrics, "pgd_acc", "test PGD", COLORS[1], False),
              (train_set, "clean_acc", "train clean", COLORS[0], True),
              (train_set, "pgd_acc", "train PGD", COLORS[0], False)]
    for rows, key, label, color, dash in series:
        points = [(row.get("epoch", i + 1), row[key]) for i, row in enumerate(rows)
                  if _number(row.get(key)) is not None]
        if points:
            parts.append(_line(points, sx, sy, color, dash, label))
            legend.append((label, color, dash))
    aa = [(summary[s]["epoch"], summary[s]["aa_acc"]) for s in ("best", "last")
          if _number((summary.get(s) or {}).get("aa_acc")) is not None]
    if aa:
        parts += [f'<rect x="{sx(x) - 4:.1f}" y="{sy(100 * y) - 4:.1f}" width="8" height="8" fill="{COLORS[3]}">'
                  f"<title>AA {100 * y:.2f} % (epoch {x})</title></rect>" for x, y in aa]
        legend.append(("AA of the best and last checkpoints", COLORS[3], False))
    best = (summary.get("best") or {}).get("epoch")
    if best is not None:
        x = sx(best)
        right = x > (PAD_L + W - PAD_R) / 2  # the label on the side with room
        parts.append(f'<line class="best-epoch" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{H - PAD_B}" '
                     f'stroke="#2ca02c" stroke-width="1.5" stroke-dasharray="2 3"/>'
                     f'<text x="{x - 4 if right else x + 4:.1f}" y="{PAD_T + 12}" fill="#2ca02c" '
                     f'text-anchor="{"end" if right else "start"}">Best (epoch {best})</text>')
    return _svg(parts, f"{name}: accuracy per epoch") + _legend(legend)


def curve_plot(curves: list[dict], title: str) -> str:
    """Accuracy against eps (eps 0 = clean) of the curves ``advssm eval --eps`` wrote."""
    eps = sorted({p["eps"] for c in curves for p in c["points"]})
    parts, sx, sy = _axes(0.0, max(eps), "eps", [0.0, *eps], lambda v: f"{v:g}")
    legend = []
    for i, curve in enumerate(curves):  # a colour per checkpoint, a line style per attack
        names = list(curve["attacks"]) + (["worst"] if len(curve["attacks"]) > 1 else [])
        color = COLORS[i % len(COLORS)]
        for j, name in enumerate(names):
            points = [(0.0, curve["clean_acc"])] + [
                (p["eps"], p["worst_acc"] if name == "worst" else p["robust_acc"][name]) for p in curve["points"]]
            label = f"{curve['label']} {name}"
            parts.append(_line(points, sx, sy, color, DASHES[j % len(DASHES)], label, marker=True))
            legend.append((label, color, BORDERS[j % len(BORDERS)]))
    return _svg(parts, title) + _legend(legend)


# -- the data --------------------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def aa_breakdown(cell_dir: Path, stage: str) -> Counter:
    """How many examples each AutoAttack component (or PGD) broke first, from the final evaluation's records."""
    path = cell_folder.records_file(cell_dir, stage)
    counts: Counter = Counter()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if record.get("broken_by"):
                counts[record["broken_by"]] += 1
    return counts


def _grid_source(out_dir: Path, cells: dict[str, Path]):
    """(run folder, ExperimentSpec) whose config.toml names the grid: the report's folder, else the one folder all
    the cells are in; (None, None) for a comparison of several runs."""

    parents = {Path(p).resolve().parent for p in cells.values()}
    for folder in [out_dir, *parents] if len(parents) <= 1 else [out_dir]:
        if (folder / CONFIG_FILE).is_file():
            try:
                return folder, read_spec(folder)
            except ConfigError:
                return None, None
    return None, None


def _grid(spec, statuses: dict[str, dict], rows_by_name: dict[str, dict]) -> dict | None:
    """The grid view's layout: the row and column axes, one table per value of the other varied axes."""
    axes = spec.grid.axes()
    if not axes:
        return None
    names = list(axes)
    row_axis = GRID_ROWS if GRID_ROWS in axes else names[0]
    col_axis = GRID_COLUMNS if GRID_COLUMNS in axes and GRID_COLUMNS != row_axis else next(
        (a for a in names if a != row_axis), None)
    others = [a for a in names if a not in (row_axis, col_axis)]
    tables = []
    for fixed in itertools.product(*(axes[a] for a in others)):
        where = dict(zip(others, fixed))
        grid_rows = []
        for r in axes[row_axis]:
            line = []
            for c in (axes[col_axis] if col_axis else [None]):
                values = {**where, row_axis: r, **({col_axis: c} if col_axis else {})}
                name = "-".join(str(values[a]) for a in names)
                line.append(name)
            grid_rows.append({"value": r, "cells": line})
        tables.append({"where": ", ".join(f"{k} {v}" for k, v in where.items()), "rows": grid_rows})
    return {"row_axis": row_axis, "col_axis": col_axis, "columns": axes[col_axis] if col_axis else [""],
            "tables": tables, "cells": {name: {"state": statuses.get(name, {}).get("state", "done"),
                                               "progress": statuses.get(name), "row": rows_by_name.get(name)}
                                        for table in tables for row in table["rows"] for name in row["cells"]}}


def _statuses(run_dir: Path | None) -> dict[str, dict]:
    """Each cell's job state and progress, from the cells' own specs (written when the run was submitted)."""
    if run_dir is None:
        return {}
    return {row.cell: {"state": row.state, "epochs_done": row.epochs_done, "epochs_total": row.epochs_total,
                       "best_pgd": row.best_pgd, "error": row.error}
            for row in jobs.cell_statuses(run_dir, read_cells(run_dir))}


def _files(cell_dir: Path, out_dir: Path) -> list[tuple[str, str]]:
    return [(p.name, Path(os.path.relpath(p, out_dir)).as_posix()) for p in sorted(cell_dir.iterdir())
            if p.is_file() and not p.name.startswith(".")]


# -- the page ----------------------------------------------------------------------------------------------

def _table(rows: list[tuple[str, dict]], pgd_heading: str) -> str:
    head = ['<th data-type="text" aria-sort="none">Cell</th>']
    head += [f'<th data-type="number" aria-sort="none">{stage.capitalize()} '
             f'{pgd_heading if k == "pgd_acc" else label}</th>' for stage in STAGES for k, label in KEYS]
    body = []
    for name, summary in rows:
        # a cell whose final evaluation did not finish shows the trainer's numbers: not comparable, so marked
        mark = ' <span class="unfinished" title="{}">(unfinished)</span>'.format(_E(summary["unfinished"])) \
            if summary.get("unfinished") else ""
        tds = [f'<td><a href="#cell-{_E(name)}">{_E(name)}</a>{mark}</td>']
        for stage in STAGES:
            part = summary.get(stage) or {}
            for key, _ in KEYS:
                value = _number(part.get(key))
                sort = "" if value is None else f"{value:.6f}"
                tds.append(f'<td class="num" data-value="{sort}">{_pct(value)}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (f'<table id="summary" class="sortable"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _aa_section(cell_dir: Path, summary: dict) -> str:
    protocol = summary.get("final_eval") or {}
    parts = protocol.get("components") or []
    if not parts:
        return "<p>AutoAttack: " + _E({None: "not run", "trainer": "the trainer's, every train.aa_every epochs"}.get(
            protocol.get("aa"), str(protocol.get("aa")))) + "</p>"
    counts = {stage: aa_breakdown(cell_dir, stage) for stage in cell_folder.CHECKPOINTS}
    listed = {part["name"] for part in parts}
    # records of folders written before the components were named as listed call them by class ("apgd", "apgd'")
    others = sorted({key for c in counts.values() for key in c} - listed - {"pgd"})
    parts = [*parts, *({"name": key, "unlisted": True} for key in others)]
    lines = ["<table class=\"aa\"><thead><tr><th>AutoAttack component</th><th>budget</th>"
             "<th>broke first (best)</th><th>broke first (last)</th></tr></thead><tbody>"]
    for part in parts:
        budget = ", ".join(f"{k} {part[k]}" for k in ("steps", "queries", "restarts", "eot_iter") if k in part)
        if part.get("unlisted"):
            budget = "(as the records name it)"
        lines.append(f"<tr><td>{_E(part['name'])}</td><td>{_E(budget)}</td>"
                     + "".join(f'<td class="num">{counts[s].get(part["name"], 0)}</td>'
                               for s in cell_folder.CHECKPOINTS)
                     + "</tr>")
    pgd = {s: counts[s].get("pgd", 0) for s in cell_folder.CHECKPOINTS}
    lines.append(f"<tr><td>PGD-{protocol.get('pgd_steps', '?')} (what AA left)</td><td></td>"
                 + "".join(f'<td class="num">{pgd[s]}</td>' for s in cell_folder.CHECKPOINTS) + "</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def _cell_section(name: str, cell_dir: Path, summary: dict, out_dir: Path) -> str:

    metrics = cell_folder.read_metrics(cell_dir)
    train_set = cell_folder.read_train_eval(cell_dir)
    curves, problems = read_curves(cell_dir)
    out = [f'<section class="cell" id="cell-{_E(name)}"><h3>{_E(name)}</h3>']
    facts = []
    if summary.get("final_eval"):
        facts.append(f"Protocol: {describe(summary['final_eval'])}.")
    if selection_text(summary):
        facts.append(f"Best: {selection_text(summary)}.")
    out += [f"<p>{_E(f)}</p>" for f in facts]
    out.append(epoch_plot(name, metrics, summary, train_set))
    out.append(_aa_section(cell_dir, summary))
    warnings = list(summary.get("warnings", [])) + [f"robustness curve {c['label']}: {w}" for c in curves
                                                   for w in c.get("warnings", [])] + problems
    if warnings:
        out.append('<ul class="warnings">' + "".join(f"<li>{_E(w)}</li>" for w in warnings) + "</ul>")
    if curves:
        out.append("<h4>Robustness curve (advssm eval --eps)</h4>"
                   + curve_plot(curves, f"{name}: accuracy against eps"))
    environment = _read_json(cell_dir / cell_folder.ENVIRONMENT_FILE)
    if environment:
        out.append("<details><summary>Environment</summary><pre>"
                   + _E(json.dumps(environment, indent=2)) + "</pre></details>")
    spec = _read_json(cell_dir / cell_folder.CELL_FILE)
    if spec:
        out.append("<details><summary>Cell spec (cell.json)</summary><pre>"
                   + _E(json.dumps(spec, indent=2)) + "</pre></details>")
    links = " ".join(f'<a href="{_E(href)}">{_E(label)}</a>' for label, href in _files(cell_dir, out_dir))
    out.append(f'<p class="files">Files: {links}</p></section>')
    return "".join(out)


def _partial(grid: dict | None) -> str:
    if not grid:
        return ""
    states = Counter(c["state"] for c in grid["cells"].values())
    if set(states) <= {"done"}:
        return ""
    done = states.get("done", 0)
    detail = ", ".join(f"{n} {s}" for s, n in states.items() if s != "done")
    return (f'<p class="partial-banner">Partial results: {done} of {sum(states.values())} cells are complete '
            f"({_E(detail)}). This page is rewritten as cells end.</p>")


def render(out_dir: Path, cells: dict[str, Path], title: str, config_text: str | None = None) -> str:
    """The page's HTML for the finished ``cells`` (table row name -> folder), relative links from ``out_dir``."""

    out_dir = Path(out_dir)
    rows = [(name, cell_folder.read_summary(cell)) for name, cell in cells.items()]
    run_dir, spec = _grid_source(out_dir, cells)
    statuses = _statuses(run_dir) if spec is not None else {}
    grid = _grid(spec, statuses, dict(rows)) if spec is not None else None
    pgd = pgd_label(s for _, s in rows)
    columns = [{"key": f"{stage}.{key}", "label": f"{stage.capitalize()} {pgd if key == 'pgd_acc' else label}"}
               for stage in STAGES for key, label in KEYS]
    data = {"columns": columns, "grid": grid}
    body = [f"<h1>{_E(title)}</h1>", _partial(grid),
            "<p>Accuracies in %; Diff = Best - Last (robust overfitting); '-' = not evaluated. "
            "Click a column header to sort.</p>",
            _table(rows, pgd)]
    if seeds.has_seeds(name for name, _ in rows):  # the seed axis: each group's mean ± std, as report.md
        body += ["<h2>Mean ± std over seeds</h2><p>Sample standard deviation; n = seeds with a final evaluation."
                 "</p>", seeds.group_table_html(seeds.aggregate(rows), pgd)]
    if grid:
        options = "".join(f'<option value="{c["key"]}"{" selected" if c["key"] == "best.pgd_acc" else ""}>'
                          f'{_E(c["label"])}</option>' for c in columns)
        axes = grid["row_axis"] + (f' x {grid["col_axis"]}' if grid["col_axis"] else "")
        body.append(f'<h2>Grid: {_E(axes)}</h2>'
                    f'<label>Column <select id="grid-column">{options}</select></label><div id="grid"></div>')
    comparison, problems = read_curves(out_dir)
    if comparison:
        body.append("<h2>Robustness curves</h2>" + curve_plot(comparison, "accuracy against eps"))
    body += [f'<p class="warnings">{_E(p)}</p>' for p in problems]
    body.append("<h2>Cells</h2>")
    body += [_cell_section(name, cell, dict(rows)[name], out_dir) for name, cell in cells.items()]
    if config_text:
        body.append(f"<h2>Configuration</h2><pre>{_E(config_text.strip())}</pre>")
    payload = json.dumps(data).replace("</", "<\\/")  # never closes the script element early
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_E(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>"
            f"<body>{''.join(body)}<script type=\"application/json\" id=\"report-data\">{payload}</script>"
            f"<script>{JS}</script></body></html>\n")


def write_html(out_dir: str | Path, cells: dict[str, Path], title: str, config_text: str | None = None) -> Path:
    """Write ``out_dir/report.html`` atomically; returns its path."""
    path = Path(out_dir) / REPORT_HTML
    write_text(path, render(Path(out_dir), cells, title, config_text))
    return path


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; }
th { background: #f3f3f3; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
svg.plot { display: block; font-size: 11px; background: #fff; max-width: 100%; height: auto; }
.legend { font-size: 0.85em; margin: 0.2em 0 0.8em; }
.key { margin-right: 1.2em; white-space: nowrap; }
.swatch { display: inline-block; width: 2em; margin-right: 0.4em; vertical-align: middle; }
.warnings, ul.warnings li, .unfinished { color: #8a4b00; }
.partial-banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em; }
td.partial { background: #fff8e1; color: #6b5200; font-style: italic; }
td.failed { background: #fde2e2; color: #8a1c1c; }
section.cell { border-top: 1px solid #ddd; padding-top: 0.5em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.files a { margin-right: 0.8em; }
"""

JS = r"""
(function () {
  "use strict";
  function cellValue(td, type) {
    if (type === "number") {
      var v = td.getAttribute("data-value");
      return v === "" || v === null ? null : parseFloat(v);
    }
    return td.textContent;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, index) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (other) { other.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var type = th.getAttribute("data-type");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a.cells[index], type), y = cellValue(b.cells[index], type);
          if (x === null && y === null) { return 0; }
          if (x === null) { return 1; }   /* not evaluated: always last */
          if (y === null) { return -1; }
          var order = type === "number" ? x - y : x.localeCompare(y);
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });

  var data = JSON.parse(document.getElementById("report-data").textContent);
  var grid = data.grid, select = document.getElementById("grid-column");
  if (!grid || !select) { return; }
  function pct(v) { return v === null || v === undefined ? "-" : (100 * v).toFixed(2); }
  function text(tag, content, cls) {
    var el = document.createElement(tag);
    el.textContent = content;
    if (cls) { el.className = cls; }
    return el;
  }
  function draw() {
    var parts = select.value.split("."), stage = parts[0], key = parts[1];
    var holder = document.getElementById("grid");
    holder.textContent = "";
    grid.tables.forEach(function (t) {
      if (t.where) { holder.appendChild(text("h3", t.where)); }
      var table = document.createElement("table");
      table.className = "grid";
      var head = table.createTHead().insertRow();
      var chosen = select.options[select.selectedIndex].text;
      head.appendChild(text("th", grid.col_axis ? grid.row_axis + " \\ " + grid.col_axis : grid.row_axis));
      grid.columns.forEach(function (c) { head.appendChild(text("th", grid.col_axis ? c : chosen)); });
      var body = table.createTBody();
      t.rows.forEach(function (r) {
        var tr = body.insertRow();
        tr.appendChild(text("th", r.value));
        r.cells.forEach(function (name) {
          var cell = grid.cells[name] || {state: "pending"}, td;
          if (cell.row) {
            td = text("td", pct((cell.row[stage] || {})[key]), "num");
            if (cell.state !== "done") { td.className += " partial"; td.title = name + ": " + cell.state; }
          } else {
            var p = cell.progress || {};
            var label = cell.state + (p.epochs_total ? " " + p.epochs_done + "/" + p.epochs_total : "");
            if (p.best_pgd !== null && p.best_pgd !== undefined) { label += ", best PGD so far " + pct(p.best_pgd); }
            td = text("td", label, cell.state === "failed" ? "failed" : "partial");
            td.title = name + (p.error ? ": " + p.error : "");
          }
          td.setAttribute("data-cell", name);
          tr.appendChild(td);
        });
      });
      holder.appendChild(table);
    });
  }
  select.addEventListener("change", draw);
  draw();
})();
"""
