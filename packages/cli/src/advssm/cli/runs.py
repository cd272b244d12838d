"""The run directory: config.toml, one sub-folder per cell (metrics.jsonl, checkpoints, summary.json),
and the top-level report.md comparing the cells in the paper's table layout.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

CONFIG_FILE = "config.toml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.md"
STAGES = ("best", "last", "diff")
COLUMNS = (("clean_acc", "Clean"), ("pgd_acc", "PGD-10"), ("aa_acc", "AA"))


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh folder ``root/<UTC timestamp>-<name>`` (a numeric suffix if that exists already)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{name}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def is_finished(cell_dir: str | Path) -> bool:
    """A cell is finished once its trainer wrote summary.json (the last thing it writes)."""
    return (Path(cell_dir) / SUMMARY_FILE).is_file()


def is_complete(cell_dir: str | Path) -> bool:
    """Finished and finally evaluated by the CLI (``final_eval`` recorded in summary.json)."""
    return is_finished(cell_dir) and "final_eval" in read_summary(cell_dir)


def read_summary(cell_dir: str | Path) -> dict:
    return json.loads((Path(cell_dir) / SUMMARY_FILE).read_text())


def read_metrics(cell_dir: str | Path) -> list[dict]:
    """The per-epoch metric lines; a half-written last line (an interrupted write) is ignored."""
    path = Path(cell_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def find_cells(run_dir: str | Path) -> list[Path]:
    """The finished cells of a run: the folder itself if it is a cell, else its sub-folders with a summary,
    in the order of the run's grid (as its own report.md lists them), else by name."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return [run_dir]
    found = sorted(p for p in run_dir.iterdir() if p.is_dir() and is_finished(p))
    order = {name: i for i, name in enumerate(_grid_order(run_dir))}
    return sorted(found, key=lambda p: (order.get(p.name, len(order)), p.name))


def _grid_order(run_dir: Path) -> list[str]:
    """Cell names in grid order from the run's config.toml; [] when it is missing or unreadable."""
    from .config import load_toml, resolve
    from .errors import ConfigError

    if not (run_dir / CONFIG_FILE).is_file():
        return []
    try:
        return [name for name, _ in resolve(load_toml(run_dir / CONFIG_FILE)).cells()]
    except ConfigError:
        return []


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}"


def _diff(best: dict, last: dict) -> dict:
    return {key: (None if best.get(key) is None or last.get(key) is None else best[key] - last[key])
            for key, _ in COLUMNS}


def pgd_label(summaries) -> str:
    """``PGD-10`` when every summary used 10 PGD steps (the paper's column), else ``PGD``."""
    steps = {(s.get("final_eval") or {}).get("pgd_steps") for s in summaries}
    return f"PGD-{steps.pop()}" if len(steps) == 1 and None not in steps else "PGD"


def summary_table(rows: list[tuple[str, dict]]) -> str:
    """The paper's table: clean / PGD-10 / AA accuracy (%) of the best and last checkpoints and Diff = Best - Last."""
    pgd = pgd_label(summary for _, summary in rows)
    labels = [label if key != "pgd_acc" else pgd for key, label in COLUMNS]
    head = ["Cell"] + [f"{stage.capitalize()} {label}" for stage in STAGES for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, summary in rows:
        best, last = summary.get("best") or {}, summary.get("last") or {}
        diff = summary.get("diff") or _diff(best, last)
        cells = [_pct(part.get(key)) for part in (best, last, diff) for key, _ in COLUMNS]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def write_report(run_dir: str | Path, cells: dict[str, Path], title: str, config_text: str | None = None) -> Path:
    """Write ``run_dir/report.md`` (and its plots) comparing the finished ``cells`` (table row name -> folder)."""
    from .final_eval import describe
    from .plots import plot_comparison, plot_metrics
    from .train_eval import read_rows

    run_dir = Path(run_dir)
    rows = [(name, read_summary(cell)) for name, cell in cells.items()]
    cells = list(cells.values())
    pgd = pgd_label(summary for _, summary in rows)
    parts = [f"# {title}", "", f"Accuracies in %; the best checkpoint has the highest {pgd} test accuracy; "
             "Diff = Best - Last (robust overfitting); '-' = not evaluated.", ""]
    protocols = {}
    for name, summary in rows:
        if summary.get("final_eval"):
            protocols.setdefault(describe(summary["final_eval"]), []).append(name)
    for text, names in protocols.items():
        scope = "" if len(protocols) == 1 else f" ({', '.join(names)})"
        parts.append(f"Protocol{scope}: {text}.")
    parts += ["", summary_table(rows), ""]
    metrics = {name: read_metrics(cell) for (name, _), cell in zip(rows, cells)}
    if any(metrics.values()):
        plot_comparison(metrics, run_dir / "accuracy.png")
        parts += ["![test accuracy per epoch](accuracy.png)", ""]
        for name, cell in zip(metrics, cells):
            if metrics[name] and cell != run_dir:
                plot_metrics(metrics[name], cell / "accuracy.png", title=name, train_set=read_rows(cell),
                             summary=dict(rows)[name])
    if config_text:
        parts += ["## Configuration", "", "```toml", config_text.strip(), "```", ""]
    path = run_dir / REPORT_FILE
    path.write_text("\n".join(parts))
    return path
