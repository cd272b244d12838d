"""The sweep's report.md while its jobs run: over the cells that finished training, marked partial (with the
others' state and progress) until every cell is complete. Written by the sweep command and by each job as it ends."""
from __future__ import annotations

from pathlib import Path

from ..experiment import cell_folder, jobs, run_folder
from ..files import write_text
from ..results import report_md


def partial_section(rows: list[jobs.CellStatus], run_dir: Path) -> str:
    """The report's note on the cells that are not complete: their state and progress so far."""
    n_done = sum(row.state == "done" for row in rows)
    waiting = [row for row in rows if row.state != "done"]
    lines = [f"**Partial results: {n_done} of {len(rows)} cells are complete.** The table holds the cells "
             "that finished training; the numbers of one still in its final evaluation are the trainer's "
             "per-epoch ones (no AutoAttack yet). This report is rewritten as cells end; "
             f"`advssm status {run_dir}` shows them live.", "",
             "| Cell | State | Epochs | Best PGD so far (per-epoch test PGD, %) |", "|---|---|---|---|"]
    for row in waiting:
        best = "-" if row.best_pgd is None else f"{100 * row.best_pgd:.2f}"
        state = f"failed: {row.error}" if row.state == "failed" and row.error else row.state
        lines.append(f"| {row.cell} | {state.replace('|', '/')} | {row.epochs_done}/{row.epochs_total} | {best} |")
    return "\n".join(lines) + "\n"


def write_sweep_report(run_dir: Path, spec) -> Path:
    """report.md over the cells that finished training, marked partial (with the others' progress) until every
    cell is complete. Taken under the run's report lock: the sweep command and each finishing job write it."""
    run_dir = Path(run_dir)
    cells = run_folder.read_cells(run_dir)  # the cells' own specs, written when the sweep was submitted
    with jobs.report_lock(run_dir):
        finished = {c.name: run_dir / c.name for c in cells if cell_folder.is_finished(run_dir / c.name)}
        path = report_md.write_report(run_dir, finished, title=f"advssm run: {spec.name}", config_text=spec.to_toml())
        rows = jobs.cell_statuses(run_dir, cells)
        if any(row.state != "done" for row in rows):
            title, _, rest = path.read_text().partition("\n")
            write_text(path, f"{title}\n\n{partial_section(rows, run_dir)}{rest}")
    return path
