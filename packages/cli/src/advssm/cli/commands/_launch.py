"""What ``run`` and ``sweep`` share: resolving the spec, the run folder, Ctrl-C / SIGTERM and the printed result."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click
from advssm.adv_train.distributed import gather_objects, shutdown
from advssm.adv_train.methods import NonFiniteLossError
from pydantic import ValidationError

from .. import interrupts
from ..errors import ConfigError
from ..execution.inline import execute
from ..experiment import cell_folder, run_folder
from ..experiment.cell_runner import join_process_group
from ..experiment.spec import TRACKERS, load_toml, resolve_experiment
from ..experiment.trackers import check_installed
from ..output import emit
from ..results import table

# settings a resume may change (after a NaN stop): the trainer continues from the last good epoch with them
RESUME_CHANGES = {"train.lr": "lr", "train.batch_size": "batch_size"}


def resolve_or_resume(config_file: str | None, resume: str | None, overrides: dict):
    """(spec, run folder or None, changed settings): a new experiment, or the stored one of ``--resume DIR``,
    which takes no other settings than ``--lr`` / ``--batch-size``. A tracker that is not installed is an
    error here, before anything trains."""
    spec, run_dir, changes = _resolve_or_resume(config_file, resume, overrides)
    check_installed(spec.track.trackers)
    return spec, run_dir, changes


def _resolve_or_resume(config_file: str | None, resume: str | None, overrides: dict):
    if resume:
        others = sorted(set(overrides) - set(RESUME_CHANGES))
        if config_file or others:
            raise ConfigError(f"--resume {resume} reads its settings from {resume}/{run_folder.CONFIG_FILE}; "
                              "drop the config file and the other settings (only --lr and --batch-size may change)")
        path = Path(resume) / run_folder.CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"cannot resume {resume}: {path} is missing (not a run folder?)")
        spec = run_folder.read_spec(resume)  # the spec the run resolved when it started, not resolved again
        if not overrides:
            return spec, Path(resume), ()
        changed = _with_train_changes(spec, {RESUME_CHANGES[k]: v for k, v in overrides.items()})
        keys = tuple(RESUME_CHANGES[k] for k in overrides if getattr(changed.train, RESUME_CHANGES[k]) !=
                     getattr(spec.train, RESUME_CHANGES[k]))
        return changed, Path(resume), keys
    return resolve_experiment(load_toml(config_file) if config_file else {}, overrides=overrides), None, ()


def _with_train_changes(spec, changes: dict):
    """The stored spec with new [train] values (lr, batch size), checked as ``run`` checks them: the spec's types,
    then every cell's own rules."""
    values = json.loads(spec.model_dump_json())
    values["train"].update(changes)
    try:
        changed = type(spec).model_validate_json(json.dumps(values))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting: {where}: {first['msg']}") from None
    changed.cells()  # each cell validated (a ConfigError naming the setting)
    return changed


def launch(spec, run_dir: Path | None, out: str | None, runs_root: str, dry_run: bool, as_json: bool,
           progress: bool, command: str, changes=()) -> None:
    """Print the spec (``--dry-run``) or run its cells, turning Ctrl-C / SIGTERM into a resume hint and exit 130."""
    if dry_run:
        emit(spec.to_dict(), as_json, spec.to_toml().rstrip())
        return
    info = join_process_group(spec.train.device)  # torchrun: every rank knows its rank before any file
    if out and run_dir is None:
        run_folder.check_out_folder(out)  # never write over a folder that is not ours
    fresh = run_dir is None and not (out and Path(out).exists())
    run_dir = _agreed_run_dir(info, run_dir or (Path(out) if out else None), runs_root, spec.name)
    if info.is_main:
        click.echo(f"run folder: {run_dir}", err=True)
    try:
        with interrupts.handled():  # Ctrl-C and SIGTERM (a scheduler, kill): KeyboardInterrupt, never lost
            summaries = execute(spec, run_dir, progress=progress, callbacks=[interrupts.CHECK], allow_changes=changes,
                                command=f"advssm {command}")
    except KeyboardInterrupt:
        if info.is_main:  # every rank gets the signal; one hint, with the launcher the world size needs
            again = resume_command(command, run_dir, info)
            click.echo(f"\ninterrupted; the run folder is consistent. Resume with:\n  {again}", err=True)
        sys.exit(130)
    except NonFiniteLossError as exc:
        lower, again = f"{spec.train.lr / 10:g}", resume_command(command, run_dir, info)
        if getattr(exc, "epoch", 2) > 1:
            first = (f"the checkpoints and training state of the last good epoch are kept: continue from it at a tenth "
                     f"of the rate, {again} --lr {lower}; if it stops again, that epoch's weights may be past saving: "
                     f"train afresh at the lower rate (--lr {lower}, a new folder)")
        else:
            first = (f"no epoch had finished: train the cell again from the start at a tenth of the rate, {again} "
                     f"--lr {lower}; if it stops again, lower it further (--lr {spec.train.lr / 100:g})")
        raise RuntimeError(f"{exc}. What to try, in order: {first}; for adversarial training, ramp eps up with "
                           "--eps-warmup-epochs 5; a larger --batch-size also steadies the steps. No setting is known "
                           "to fix every case") from exc
    except Exception:
        if fresh and info.is_main and not _trained_anything(run_dir):
            # e.g. a missing data set: a folder holding only config.toml would just be clutter under runs/
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if info.is_main:
        rows = list(summaries.items())
        notes = "\n".join(table.table_notes(rows))  # on which examples, and the warnings (Square's masking check)
        emit({"run_dir": str(run_dir), "cells": summaries}, as_json,
             f"{table.summary_table(rows)}\n\n{notes + chr(10) if notes else ''}"
             f"report: {run_dir / run_folder.REPORT_FILE}")
    if info.active:
        _leave_process_group()


def resume_command(command: str, run_dir: Path, info) -> str:
    """The command that resumes ``run_dir``: under torchrun the same number of processes (a plain ``advssm run
    --resume`` refuses the training state of another world size)."""
    if not info.active:
        return f"advssm {command} --resume {run_dir}"

    per_node = os.environ.get("LOCAL_WORLD_SIZE", str(info.world_size))
    nodes = "" if per_node == str(info.world_size) else f" --nnodes {info.world_size // max(1, int(per_node))} (and " \
        "the rendezvous options of this launch)"
    return f"torchrun --nproc-per-node {per_node}{nodes} -m advssm.cli {command} --resume {run_dir}"


def _agreed_run_dir(info, chosen: Path | None, runs_root: str, name: str) -> Path:
    """The run folder: ``chosen``, else a new one under ``runs_root``; under torchrun rank 0 alone creates it and
    every rank gets rank 0's path (or rank 0's error)."""
    if not info.active:
        return chosen or run_folder.new_run_dir(runs_root, name)
    answer = None
    if info.is_main:
        try:
            answer = str(chosen or run_folder.new_run_dir(runs_root, name))
        except Exception as exc:  # every rank raises it, instead of the others waiting for a path forever
            answer = exc
    answer = gather_objects(answer, info)[0]
    if isinstance(answer, Exception):
        raise answer
    return Path(answer)


def _leave_process_group() -> None:
    """End a torchrun rank once everything is written: leave the group together, then exit at once.

    The interpreter's own teardown can abort in gloo's threads after destroy_process_group has returned
    ("terminate called without an active exception", about 1 launch in 30 on torch 2.13's CPU build), which
    torchrun would report as a failed rank of a finished run."""
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _trained_anything(run_dir: Path) -> bool:
    """Whether any cell of ``run_dir`` finished an epoch (then the folder is worth keeping and resuming)."""
    return any(path.stat().st_size > 0 for path in run_dir.glob(f"*/{cell_folder.METRICS_FILE}"))


def tracker_overrides(trackers) -> dict:
    """The override of --tracker flags: given ones replace the TOML's list; none leave it."""
    return {"track.trackers": list(trackers)} if trackers else {}


def common_options(func):
    """--out, --resume, --dry-run, --json, --set, --no-progress, --tracker."""
    options = [
        click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: runs/<time>-<name>)."),
        click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False),
                     help="Where new run folders go."),
        click.option("--resume", type=click.Path(file_okay=False),
                     help="Continue the run in this folder (with --lr / --batch-size: at a new rate, recorded)."),
        click.option("--dry-run", is_flag=True, help="Validate every cell, print the resolved config (TOML) and exit."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
        click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                     help="Override any setting, e.g. --set train.aa_n=100 (repeatable)."),
        click.option("--progress/--no-progress", default=True, help="Progress bars on stderr."),
        click.option("--tracker", "trackers", multiple=True, type=click.Choice(TRACKERS),
                     help="Log each cell to this experiment tracker (repeatable; its package must be installed): "
                          "tensorboard, mlflow (track.mlflow_uri, default a SQLite store in the run folder), wandb "
                          "(offline). Replaces the TOML's [track] trackers."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
