"""The run directory: config.toml, one sub-folder per cell (its files: ``cell_folder``), and the
top-level report.md comparing the cells in the paper's table layout.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

# the cell folder's names and readers, re-exported for the commands that list a run's cells
from .cell_folder import (  # noqa: F401
    METRICS_FILE,
    SUMMARY_FILE,
    is_complete,
    is_finished,
    read_metrics,
    read_summary,
)
from .errors import ConfigError
from .files import write_text
from .spec import load_toml, resolve_experiment

CONFIG_FILE = "config.toml"
REPORT_FILE = "report.md"
PLOT_FILE = "accuracy.png"  # the run's curves beside report.md, and each cell's in its folder
STAGES = ("best", "last", "diff")
COLUMNS = (("clean_acc", "Clean"), ("pgd_acc", "PGD-10"), ("aa_acc", "AA"))


def check_out_folder(path: str | Path) -> None:
    """Refuse an ``--out`` folder that exists and holds files but is not an advssm run folder (no config.toml):
    a run writes report.md, accuracy.png and cell folders there, over whatever the user keeps in it. An empty
    folder, or one holding only a run's lock files (a run killed before it wrote config.toml), is fine."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder; choose a new folder for the run")
    if (path / CONFIG_FILE).is_file():
        return
    foreign = sorted(p.name for p in path.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock")))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(f"--out {path} is an existing folder that is not an advssm run folder (no {CONFIG_FILE}; it "
                          f"holds {shown}); a run would write over its files: choose a new or empty folder")


def check_report_folder(path: str | Path) -> None:
    """Refuse to write a report into a folder whose report.md (or accuracy.png, without a report.md) advssm did
    not write: a report title always starts with "# advssm"."""
    path = Path(path)
    report = path / REPORT_FILE
    ours = report.is_file() and report.read_bytes()[:8] == b"# advssm"
    theirs = [name for name in (REPORT_FILE, PLOT_FILE) if (path / name).exists()]
    if theirs and not ours:
        raise ConfigError(f"--out {path} holds {' and '.join(theirs)} that advssm did not write; the report would "
                          "write over them: choose a new or empty folder")


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh folder ``root/<UTC timestamp>-<name>`` (a numeric suffix if that exists already)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{name}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def find_cells(run_dir: str | Path) -> list[Path]:
    """The finished cells of a run: the folder itself if it is a cell, else its sub-folders with a summary,
    in the order of the run's grid (as its own report.md lists them), else by name."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return [run_dir]
    found = sorted(p for p in run_dir.iterdir() if p.is_dir() and is_finished(p))
    order = {name: i for i, name in enumerate(_grid_order(run_dir))}
    return sorted(found, key=lambda p: (order.get(p.name, len(order)), p.name))


def read_spec(run_dir: str | Path):
    """The run's ``ExperimentSpec``: its config.toml, the spec the run resolved and wrote when it started
    (``experiment.prepare_dir``). Everything after the run's entry (status, the jobs' reports, a checkpoint's cell)
    reads the run's settings through here. Raises ``ConfigError`` naming the file when it is missing or invalid.

    Example::

        [cell.name for cell in read_spec("runs/2026-12-01-demo").cells()]   # ['standard', 'pgd-at']
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder ({path} is missing)")
    return resolve_experiment(load_toml(path))


def _grid_order(run_dir: Path) -> list[str]:
    """Cell names in grid order from the run's config.toml; [] when it is missing or unreadable."""
    try:
        return [cell.name for cell in read_spec(run_dir).cells()]
    except ConfigError:
        return []


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}"


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
        diff = summary.get("diff") or {}
        cells = [_pct(part.get(key)) for part in (best, last, diff) for key, _ in COLUMNS]
        name = f"{name} (unfinished)" if summary.get("unfinished") else name  # no final evaluation: not comparable
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def selection_text(summary: dict) -> str | None:
    """``the epoch with the highest PGD-10 accuracy on the test set`` (None for a folder without the record)."""
    selection = summary.get("selection")
    if not selection:
        return None
    what = {"pgd": pgd_label([summary]) if summary.get("final_eval") else "PGD", "clean": "clean"}[selection["by"]]
    where = {"test": "the test set (the paper's choice; it flatters Best)",
             "val": "a validation slice held out from the training set"}[selection["on"]]
    return f"the epoch with the highest {what} accuracy on {where}"


def _grouped(label: str, texts: list, names: list[str]) -> list[str]:
    """One line per distinct text, naming the cells it applies to when they differ."""
    groups: dict[str, list[str]] = {}
    for text, name in zip(texts, names):
        if text:
            groups.setdefault(text, []).append(name)
    every = len(groups) == 1 and len(next(iter(groups.values()))) == len(names)
    return [f"{label}{'' if every else ' (' + ', '.join(cells) + ')'}: {text}." for text, cells in groups.items()]


def table_notes(rows: list[tuple[str, dict]]) -> list[str]:
    """The lines under a printed table: on which examples its numbers are (the final evaluation's protocol, which
    the per-epoch lines do not share), which rows are unfinished, and every warning (Square's gradient-masking
    check among them), so the terminal says what report.md says."""
    from .final_eval import describe

    names = [name for name, _ in rows]
    lines = _grouped("Numbers", [describe(s["final_eval"]) if s.get("final_eval") else
                                 "the trainer's per-epoch numbers (no final evaluation)" for _, s in rows], names)
    lines += [f"{name}: unfinished: {s['unfinished']}" for name, s in rows if s.get("unfinished")]
    lines += [f"warning ({name}): {w}" for name, s in rows for w in s.get("warnings", [])]
    return lines


def write_report(run_dir: str | Path, cells: dict[str, Path], title: str, config_text: str | None = None,
                 html: bool = True, per_seed: bool = False) -> Path:
    """Write ``run_dir/report.md`` (and its plots) comparing the finished ``cells`` (table row name -> folder),
    and with ``html`` the same as one self-contained page, ``run_dir/report.html`` (``report_html``).

    Cells that are seeds of one group (``<group>-seed<N>``, the grid's seed axis) are shown as one row per group,
    mean ± std over its seeds, and plotted as the group's mean curve; ``per_seed`` adds each seed's row."""
    from .cell_folder import read_train_eval
    from .final_eval import describe
    from .plots import plot_comparison, plot_metrics
    from .seeds import aggregate, group_table, has_seeds, mean_metrics

    run_dir = Path(run_dir)
    rows = [(name, read_summary(cell)) for name, cell in cells.items()]
    cells = list(cells.values())
    parts = [f"# {title}", "", "Accuracies in %; Diff = Best - Last (robust overfitting); '-' = not evaluated.", ""]
    for label, texts in (("Protocol", [describe(s["final_eval"]) if s.get("final_eval") else None for _, s in rows]),
                         ("Best", [selection_text(s) for _, s in rows]),
                         ("Initialised from", [s.get("init_from") for _, s in rows])):
        parts += _grouped(label, texts, [name for name, _ in rows])
    if has_seeds(name for name, _ in rows):
        parts += ["", "Mean ± sample standard deviation over each group's seeds (n = seeds with a final evaluation)"
                  + ("; each seed's row below." if per_seed else "; each seed's row: `advssm report RUN --per-seed`."),
                  "", group_table(aggregate(rows), pgd_label(s for _, s in rows)), ""]
        if per_seed:
            parts += ["## Per seed", "", summary_table(rows), ""]
    else:
        parts += ["", summary_table(rows), ""]
    val = [(name, s) for name, s in rows if (s.get("selection") or {}).get("on") == "val"]
    if val:
        parts += ["Best chosen on the validation slice; its accuracies there (the table shows the test set):", ""]
        parts += [f"- {name}: val clean {_pct(s['selection']['val'].get('val_clean_acc'))}, val PGD "
                  f"{_pct(s['selection']['val'].get('val_pgd_acc'))}" for name, s in val if "val" in s["selection"]]
        parts.append("")
    notes = [f"- {name}: unfinished: {s['unfinished']}" for name, s in rows if s.get("unfinished")]
    notes += [f"- {name}: {w}" for name, s in rows for w in s.get("warnings", [])]
    notes += [f"- {name}: from epoch {c['from_epoch']} "
              + ", ".join(f"{k} {v['was']} -> {v['now']}" for k, v in c.items() if k != "from_epoch")
              + " (resumed with a changed setting; not bitwise equal to a run without the change)"
              for name, s in rows for c in s.get("changes", [])]
    if notes:
        parts += ["## Warnings", "", *notes, ""]
    metrics = {name: read_metrics(cell) for (name, _), cell in zip(rows, cells)}
    if any(metrics.values()):
        # seeds of one group: its mean curve (one line per group, not per seed)
        plot_comparison(mean_metrics(metrics) if has_seeds(metrics) else metrics, run_dir / PLOT_FILE)
        parts += ["![test accuracy per epoch](accuracy.png)", ""]
        for name, cell in zip(metrics, cells):
            # only the run's own cells: a report written elsewhere (advssm report RUN --out DIR) writes under DIR
            # alone, and the source cells keep the curves their run drew
            if metrics[name] and cell != run_dir and cell.resolve().parent == run_dir.resolve():
                plot_metrics(metrics[name], cell / PLOT_FILE, title=name, train_set=read_train_eval(cell),
                             summary=dict(rows)[name])
    if config_text:
        parts += ["## Configuration", "", "```toml", config_text.strip(), "```", ""]
    path = run_dir / REPORT_FILE
    write_text(path, "\n".join(parts))  # a full disk names the file and never leaves half a report
    if html:
        from .report_html import write_html

        write_html(run_dir, dict(zip([name for name, _ in rows], cells)), title, config_text)
    return path
