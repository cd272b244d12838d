"""report.md: the cells of one or several runs in the paper's table layout (``table``), the notes under it, each
cell's curves and the run's accuracy plot, and report.html beside it (``report_html``).
"""
from __future__ import annotations

from pathlib import Path

# the cell folder's names and readers, re-exported for the commands that list a run's cells
from ..experiment.cell_folder import read_metrics, read_summary, read_train_eval
from ..experiment.final_eval import describe
from ..experiment.run_folder import PLOT_FILE, REPORT_FILE
from ..experiment.seeds import aggregate, group_table, has_seeds, mean_metrics
from ..files import write_text
from .report_html import write_html
from .table import _grouped, _pct, pgd_label, selection_text, summary_table


def write_report(run_dir: str | Path, cells: dict[str, Path], title: str, config_text: str | None = None,
                 html: bool = True, per_seed: bool = False) -> Path:
    """Write ``run_dir/report.md`` (and its plots) comparing the finished ``cells`` (table row name -> folder),
    and with ``html`` the same as one self-contained page, ``run_dir/report.html`` (``report_html``).

    Cells that are seeds of one group (``<group>-seed<N>``, the grid's seed axis) are shown as one row per group,
    mean ± std over its seeds, and plotted as the group's mean curve; ``per_seed`` adds each seed's row."""
    from .plots import plot_comparison, plot_metrics

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

        write_html(run_dir, dict(zip([name for name, _ in rows], cells)), title, config_text)
    return path
