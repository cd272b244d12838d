"""What ``run`` and ``sweep`` share: resolving the config, the run folder, Ctrl-C and the printed result."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from .. import runs
from ..config import RunConfig, load_toml, resolve
from ..errors import ConfigError
from ..experiment import execute
from ..output import emit


def resolve_or_resume(config_file: str | None, resume: str | None, overrides: dict) -> tuple[RunConfig, Path | None]:
    """The config of a new experiment, or the stored one of ``--resume DIR`` (which takes no other settings)."""
    if resume:
        if config_file or overrides:
            raise ConfigError(f"--resume {resume} reads its settings from {resume}/{runs.CONFIG_FILE}; "
                              "drop the config file and the other settings")
        path = Path(resume) / runs.CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"cannot resume {resume}: {path} is missing (not a run folder?)")
        return resolve(load_toml(path)), Path(resume)
    return resolve(load_toml(config_file) if config_file else {}, overrides=overrides), None


def launch(config: RunConfig, run_dir: Path | None, out: str | None, runs_root: str, dry_run: bool, as_json: bool,
           progress: bool, command: str) -> None:
    """Print the config (``--dry-run``) or run the cells, turning Ctrl-C into a resume hint and exit 130."""
    if dry_run:
        emit(config.to_dict(), as_json, config.to_toml().rstrip())
        return
    fresh = run_dir is None and not (out and Path(out).exists())
    run_dir = run_dir or (Path(out) if out else runs.new_run_dir(runs_root, config.name))
    click.echo(f"run folder: {run_dir}", err=True)
    try:
        summaries = execute(config, run_dir, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; the run folder is consistent. Resume with:\n  advssm {command} --resume {run_dir}",
                   err=True)
        sys.exit(130)
    except Exception:
        if fresh and not _trained_anything(run_dir):
            # e.g. a missing data set: a folder holding only config.toml would just be clutter under runs/
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    table = runs.summary_table(list(summaries.items()))
    emit({"run_dir": str(run_dir), "cells": summaries}, as_json,
         f"{table}\n\nreport: {run_dir / runs.REPORT_FILE}")


def _trained_anything(run_dir: Path) -> bool:
    """Whether any cell of ``run_dir`` finished an epoch (then the folder is worth keeping and resuming)."""
    return any(path.stat().st_size > 0 for path in run_dir.glob(f"*/{runs.METRICS_FILE}"))


def common_options(func):
    """--out, --resume, --dry-run, --json, --set, --no-progress."""
    options = [
        click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<time>-<name>)."),
        click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False),
                     help="Where new run folders go."),
        click.option("--resume", type=click.Path(file_okay=False), help="Continue the run in this folder."),
        click.option("--dry-run", is_flag=True, help="Print the resolved config (TOML) and exit."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
        click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                     help="Override any setting, e.g. --set train.aa_n=100 (repeatable)."),
        click.option("--progress/--no-progress", default=True, help="Progress bars on stderr."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
