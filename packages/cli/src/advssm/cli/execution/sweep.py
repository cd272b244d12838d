"""``advssm sweep --executor local|slurm``: submit the cells that are neither complete nor handled by a
live job, write the (partial) report as cells end, and with ``--wait`` follow them to the table."""
from __future__ import annotations

from pathlib import Path

import click

from ..experiment import cell_folder, jobs, run_folder
from ..experiment.data_check import check_data
from ..experiment.executor_spec import ExecutorSpec
from ..experiment.run_folder import prepare_dir
from ..output import emit
from ..results import table
from .submission import submit, wait
from .sweep_report import write_sweep_report


def launch_jobs(spec, run_dir: Path, settings: ExecutorSpec, wait_for_end: bool, as_json: bool,
                poll_s: float = 5.0) -> None:
    """``advssm sweep --executor local|slurm``: submit every cell that is neither complete nor handled by a
    live job (so a rerun resubmits only unfinished and failed cells), print the job ids and the status
    command; with ``wait_for_end`` follow them to the end and print the table."""
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    run_dir = Path(run_dir)
    prepare_dir(spec, run_dir)
    cells = spec.cells()
    with jobs.sweep_lock(run_dir, f"advssm sweep --executor {settings.kind}"):
        rows = jobs.cell_statuses(run_dir, cells)
        todo = [cell for cell, row in zip(cells, rows) if row.state != "done" and not row.alive]
        if settings.kind == "local":  # its data sets are this machine's: fail now, not in the second cell's job
            check_data(todo)
        ids = submit(settings, run_dir, todo, spec.name, n_cells=len(cells))
        write_sweep_report(run_dir, spec)
        others = ", ".join(f"{n} {state}" for state in jobs.STATES
                           if (n := sum(r.state == state for r in rows if r.cell not in ids)))
        text = "\n".join([f"submitted {len(ids)} of {len(cells)} cells to {settings.kind}"
                          + (f" (the others: {others})" if others else ""),
                          *(f"  {name}: job {job_id}" for name, job_id in ids.items()),
                          f"follow them with: advssm status {run_dir}"])
        if not wait_for_end:
            emit({"run_dir": str(run_dir), "executor": settings.kind, "submitted": ids,
                  "status": f"advssm status {run_dir}"}, as_json, text)
            return
        echo(text)
        rows = wait(run_dir, [c.name for c in cells], lambda: jobs.cell_statuses(run_dir, cells), poll_s, echo)
        write_sweep_report(run_dir, spec)
    summaries = {row.cell: cell_folder.read_summary(run_dir / row.cell) for row in rows if row.state == "done"}
    failed = {row.cell: {"error": row.error, "log": row.log} for row in rows if row.state == "failed"}
    notes = "".join(line + "\n" for line in table.table_notes(list(summaries.items())))  # examples, warnings
    emit({"run_dir": str(run_dir), "cells": summaries, "failed": failed}, as_json,
         f"{table.summary_table(list(summaries.items()))}\n\n{notes}report: {run_dir / run_folder.REPORT_FILE}")
    if failed:
        details = "; ".join(f"{name}: {f['error']} (log {f['log']})" for name, f in failed.items())
        raise RuntimeError(f"{len(failed)} failed of {len(cells)} cells: {details}. Rerun the same sweep command "
                           "to resubmit them")
