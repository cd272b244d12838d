"""``advssm status RUN_DIR``: where each cell of a sweep stands, whichever executor runs it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..experiment import jobs
from ..experiment.run_folder import REPORT_HTML, read_cells
from ..output import emit

FINAL = ("done", "failed")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def status_table(rows: list[jobs.CellStatus], width: int = 60) -> str:
    """The status rows as a Markdown table (the last log line cut to ``width`` characters)."""
    head = ["Cell", "State", "Epochs", "Best PGD so far", "Job", "Last log line"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        last = row.error if row.state == "failed" and row.error else row.last_line
        last = (last[: width - 3] + "...") if len(last) > width else last
        job = "-" if not row.job_id else f"{row.executor} {row.job_id}"
        if row.attempt > 1:
            job += f" (attempt {row.attempt})"
        cells = [row.cell, row.state, f"{row.epochs_done}/{row.epochs_total}", _pct(row.best_pgd), job,
                 last.replace("|", "/") or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts(rows: list[jobs.CellStatus]) -> dict[str, int]:
    return {state: n for state in jobs.STATES if (n := sum(row.state == state for row in rows))}


def summary_line(rows: list[jobs.CellStatus]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts(rows).items())


def report_link(page: Path) -> str:
    """The line naming the sweep's HTML report (a file:// link a terminal can open), or "" before there is one."""
    if not page.is_file():
        return ""
    return f"\nreport: {page.resolve().as_uri()} (rewritten as cells end; partial cells are marked)"


def read_status(run_dir: Path) -> list[jobs.CellStatus]:
    """The status of every cell of the sweep in ``run_dir`` (each cell's own resolved spec, written at submission)."""
    return jobs.cell_statuses(run_dir, read_cells(run_dir))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Refresh until every cell is done or failed (Ctrl-C stops watching).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds between refreshes with --watch.")
def status(run_dir, as_json, watch, interval):
    """Each cell of a sweep: its state (pending, running, requeued, done, failed), epochs done of the total,
    the best PGD accuracy so far, its job and the last line of its log (or its error).

    Reads the run folder only; it works while the sweep runs, under any executor, and after it ended.
    The last line links the sweep's report.html once one is written.

    \b
    Examples:
      advssm status runs/zoo
      advssm status runs/zoo --watch --interval 30
      advssm status runs/zoo --json
    """
    run_dir = Path(run_dir)
    while True:
        rows = read_status(run_dir)
        page = run_dir / REPORT_HTML
        payload = {"run_dir": str(run_dir), "counts": counts(rows), "cells": [row.to_dict() for row in rows],
                   "report_html": str(page) if page.is_file() else None}
        if watch and as_json:
            click.echo(json.dumps(payload))  # one compact document per refresh (JSON lines)
        else:
            if watch and click.get_text_stream("stdout").isatty():
                click.clear()
            emit(payload, as_json, f"{status_table(rows)}\n\n{summary_line(rows)}{report_link(page)}")
        if not watch or all(row.state in FINAL for row in rows):
            break
        time.sleep(interval)
