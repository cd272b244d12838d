"""``advssm report``: compare finished runs in one markdown table and one plot (and one HTML page)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from ..experiment import cell_folder, run_folder, seeds
from ..experiment.run_folder import REPORT_HTML
from ..output import emit
from ..results import report_md, table


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Folder for report.md and accuracy.png "
              "(default: the run folder when there is one, whose report.md is regenerated with its configuration; "
              "else the current folder).")
@click.option("--html", is_flag=True, help="Also write report.html: one self-contained page (sortable table, "
              "curves, AutoAttack components, warnings, the sweep's grid; opens offline). A report.html already "
              "in the folder is always rewritten, so it never disagrees with report.md.")
@click.option("--per-seed", is_flag=True, help="With a seed axis ([grid] seed): each seed's row too, under the "
              "table of each group's mean ± std over its seeds.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report(run_dirs, out, html, per_seed, as_json):
    """Paper-style table (clean / PGD-10 / AA, best and last, Diff) and accuracy plots across runs.

    Each RUN_DIR is a run folder (all its finished cells are listed) or one cell folder.

    \b
    Examples:
      advssm report runs/20260101-120000-run
      advssm report runs/a runs/b/pgd-at --out comparison
      advssm report runs/zoo --html
      advssm report runs/seeds --per-seed
    """
    cells = []
    for run_dir in map(Path, run_dirs):
        found = run_folder.find_cells(run_dir)
        if not found:
            raise ConfigError(f"{run_dir} has no finished cell (no {cell_folder.SUMMARY_FILE}); is it a run folder?")
        cells += found
    named: dict[str, Path] = {}
    for cell in cells:
        name = cell.name if len(run_dirs) == 1 else f"{cell.parent.name}/{cell.name}"
        # the same cell listed twice (a run and one of its cells) gets a numbered second row
        unique, k = name, 2
        while unique in named:
            unique, k = f"{name} #{k}", k + 1
        named[unique] = cell
    out_dir = Path(out) if out else (Path(run_dirs[0]) if len(run_dirs) == 1 else Path("."))
    run_folder.check_report_folder(out_dir)  # never write over a report.md / accuracy.png that is not ours
    out_dir.mkdir(parents=True, exist_ok=True)
    # writing into a run folder regenerates its report.md: keep the configuration section `run` wrote there
    config_file = out_dir / run_folder.CONFIG_FILE
    config_text = config_file.read_text() if config_file.is_file() else None
    html = html or (out_dir / REPORT_HTML).is_file()
    path = report_md.write_report(out_dir, named, title="advssm report: " + ", ".join(run_dirs),
                                  config_text=config_text, html=html, per_seed=per_seed)
    summaries = {name: cell_folder.read_summary(cell) for name, cell in named.items()}
    page = out_dir / REPORT_HTML if html else None
    rows = list(summaries.items())
    groups = seeds.aggregate(rows) if seeds.has_seeds(summaries) else []  # mean / std / n over each group's seeds
    text = seeds.group_table(groups, table.pgd_label(summaries.values())) if groups and not per_seed else \
        table.summary_table(rows)
    emit({"report": str(path), "html": str(page) if page else None, "cells": summaries,
          **({"groups": seeds.to_json(groups)} if groups else {})}, as_json,
         f"{text}\n" + "".join(line + "\n" for line in table.table_notes(rows))  # on which examples, warnings
         + f"\nreport: {path}" + (f"\nhtml: {page}" if page else ""))
