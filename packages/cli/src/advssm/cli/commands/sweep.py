"""``advssm sweep``: a grid of models x methods x AdS x data sets, one cell after another."""
from __future__ import annotations

import click

from ..spec import parse_assignment
from ._experiment import common_options, launch, resolve_or_resume


@click.command()
@click.argument("grid_file", required=False, type=click.Path(dir_okay=False))
@common_options
def sweep(grid_file, out, runs_root, resume, dry_run, as_json, assignments, progress):
    """Run every cell of a grid into sub-folders and write the paper-style table across cells.

    GRID_FILE is a run TOML whose [grid] table lists the values to combine (keys: dataset, layer,
    method, ads). Rerunning with the same --out (or --resume DIR) skips finished cells and
    continues an interrupted one.

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
    """
    if not grid_file and not resume:
        raise click.UsageError("give a GRID_FILE (TOML with a [grid] table) or --resume DIR")
    overrides = dict(parse_assignment(a) for a in assignments)
    spec, run_dir, changes = resolve_or_resume(grid_file, resume, overrides)
    launch(spec, run_dir, out, runs_root, dry_run, as_json, progress, command="sweep", changes=changes)
