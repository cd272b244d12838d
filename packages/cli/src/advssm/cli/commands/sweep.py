"""``advssm sweep``: a grid of models x methods x AdS x data sets, inline or one job per cell (local, Slurm)."""
from __future__ import annotations

from pathlib import Path

import click

from ..execution import options
from ..execution.sweep import launch_jobs
from ..experiment import run_folder
from ..experiment.spec import parse_assignment
from ._launch import common_options, launch, resolve_or_resume, tracker_overrides


@click.command()
@click.argument("grid_file", required=False, type=click.Path(dir_okay=False))
@common_options
@options.executor_options
def sweep(grid_file, out, runs_root, resume, dry_run, as_json, assignments, progress, trackers, wait_for_end,
          **executor_flags):
    """Run every cell of a grid into sub-folders and write the paper-style table across cells.

    GRID_FILE is a run TOML whose [grid] table lists the values to combine (keys: dataset, layer,
    method, ads). Rerunning with the same --out (or --resume DIR) skips finished cells and
    continues an interrupted one.

    With --executor local or slurm (or an [executor] table in the TOML) each cell is one submitit
    job; the command returns once they are submitted (--wait: once every cell has ended), printing
    the job ids and the `advssm status RUN_DIR` command. Rerunning it resubmits only the cells that
    are neither complete nor handled by a live job.

    \b
    Example grid.toml:
      name = "ssm-zoo"
      [grid]
      layer = ["s4d", "s6"]
      method = ["standard", "pgd-at"]
      ads = ["none", "relu"]
      [train]
      epochs = 5

    \b
    Examples:
      advssm sweep grid.toml --out runs/zoo
      advssm sweep --resume runs/zoo
      advssm sweep grid.toml --out runs/zoo --executor local --max-parallel 2 --wait
      advssm sweep grid.toml --tracker tensorboard
      advssm sweep grid.toml --out runs/zoo --executor slurm --partition gpu --gpus-per-cell 1 --time 24:00:00
    """
    if not grid_file and not resume:
        raise click.UsageError("give a GRID_FILE (TOML with a [grid] table) or --resume DIR")
    overrides = {**tracker_overrides(trackers), **dict(parse_assignment(a) for a in assignments)}
    spec, run_dir, changes = resolve_or_resume(grid_file, resume, overrides)
    settings = options.settings_from(spec.executor, executor_flags)
    if settings.kind == "inline" or dry_run:
        if wait_for_end and not dry_run:
            raise click.UsageError("--wait is for --executor local or slurm (an inline sweep always runs to the end)")
        launch(spec, run_dir, out, runs_root, dry_run, as_json, progress, command="sweep", changes=changes)
        return
    if changes:
        raise click.UsageError("--resume with --lr / --batch-size continues the cells inline: add --executor inline")
    for warning in options.unused_settings(settings):
        click.echo(f"warning: {warning}", err=True)
    if out and not run_dir:
        run_folder.check_out_folder(out)
    run_dir = run_dir or (Path(out) if out else run_folder.new_run_dir(runs_root, spec.name))
    click.echo(f"run folder: {run_dir}", err=True)
    launch_jobs(spec, run_dir, settings, wait_for_end, as_json)
