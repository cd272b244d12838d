"""The inline executor: run the cells of an ExperimentSpec in turn in this process, each into its own
sub-folder, skipping complete ones, then write the report."""
from __future__ import annotations

import contextlib
from pathlib import Path

import click

from .. import interrupts
from ..experiment import cell_folder, jobs
from ..experiment.cell_runner import is_main, run_cell
from ..experiment.data_check import check_data
from ..experiment.run_folder import prepare_dir
from ..experiment.trackers import log_reports
from ..results import report_md
from ..results.report_html import write_html


def _partial_page(spec, run_dir: Path, cells) -> None:
    """report.html over the cells finished so far, the others marked pending, while the next cell trains (advssm
    status links it); a failure to write it warns and the run goes on (the full report is written at the end)."""
    finished = {c.name: run_dir / c.name for c in cells if cell_folder.is_finished(run_dir / c.name)}
    try:
        with jobs.report_lock(run_dir):
            write_html(run_dir, finished, title=f"advssm run: {spec.name}", config_text=spec.to_toml())
    except Exception as exc:  # the page is a view of the folder; the training must not stop for it
        click.echo(f"warning: could not write {run_dir}/report.html so far ({type(exc).__name__}: {exc}); "
                   "it is written at the end of the run", err=True)


def execute(spec, run_dir: Path, progress: bool = True, callbacks=(), allow_changes=(),
            command: str = "advssm run") -> dict[str, dict]:
    """Run every unfinished cell of ``spec`` into ``run_dir/<cell>``, then write the report.

    Returns the table rows by cell name. A KeyboardInterrupt propagates, leaving the folder resumable.
    The run folder's sweep lock is held throughout (a second command on the folder refuses), and each cell's
    lock while it trains (``advssm status`` shows it running). Under torchrun every rank trains its shard of
    each cell and rank 0 alone writes the folder.
    """
    main = is_main()
    with jobs.sweep_lock(run_dir, command) if main else contextlib.nullcontext():
        if main:
            prepare_dir(spec, run_dir, rewrite=bool(allow_changes))
        cells = spec.cells()
        check_data([cell for cell in cells if not cell_folder.is_complete(run_dir / cell.name)])
        summaries = {}
        for i, cell in enumerate(cells, 1):
            interrupts.raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt Python swallowed stops here
            cell_dir = run_dir / cell.name
            if cell_folder.is_complete(cell_dir):
                click.echo(f"[{i}/{len(cells)}] {cell.name}: finished, skipped", err=True)
                summaries[cell.name] = cell_folder.read_summary(cell_dir)
            else:
                click.echo(f"[{i}/{len(cells)}] {cell.name}: training", err=True)
                with jobs.locked(jobs.lock_path(run_dir, cell.name)) if main else contextlib.nullcontext():
                    summaries[cell.name] = run_cell(cell, cell_dir, progress, callbacks, allow_changes=allow_changes)
                if main and i < len(cells):
                    _partial_page(spec, run_dir, cells)
        interrupts.raise_if_interrupted()
        if main:
            with jobs.report_lock(run_dir):
                report_md.write_report(run_dir, {cell.name: run_dir / cell.name for cell in cells},
                                  title=f"advssm run: {spec.name}", config_text=spec.to_toml())
            log_reports(run_dir, cells)  # the reports as MLflow artifacts of each cell's run
    return summaries
