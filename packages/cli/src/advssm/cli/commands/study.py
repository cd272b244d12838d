"""``advssm study``: the paper's claims as checks over a grid run with several seeds (``advssm.cli.study``)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from .. import interrupts, study
from ..execution import options
from ..experiment import run_folder
from ..experiment.spec import parse_assignment
from ..output import emit


@click.group("study")
def study_group():
    """Studies: a grid over several seeds and claims checked over its results.

    \b
    Example:
      advssm study paper-findings --scale small --out runs/findings
    """


@study_group.command("paper-findings")
@click.option("--scale", type=click.Choice(list(study.SCALES)), default="small", show_default=True,
              metavar="[small|paper|tiny]",
              help="small: the bundled 8x8 digits, 36 cells (measured: 19 CPU-minutes, 33 minutes on 2 busy "
                   "cores); paper: the paper's presets (paper-mnist, paper-cifar10, paper-tinyimagenet) for a "
                   "GPU cluster; tiny: a smoke test in "
                   "seconds whose numbers mean nothing.")
@click.option("--dataset", "datasets", multiple=True,
              help="Data set (repeatable; default: digits for small, mnist, cifar10 and tinyimagenet for paper).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data sets' files.")
@click.option("--seeds", type=click.IntRange(min=1), help="Seeds 0..N-1 of every cell (default 3; tiny: 2).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Study folder (default: runs/<time>-paper-findings-<scale>); rerun with it to resume.")
@click.option("--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a setting of every cell, e.g. --set train.epochs=20 (repeatable).")
@click.option("--device", help="cpu, cuda or auto: where the cells train and the analysis runs.")
@click.option("--dry-run", is_flag=True, help="Validate every cell, print the sweeps (TOML) and the claims, and exit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@options.executor_options
def paper_findings(scale, datasets, data_dir, seeds, out, runs_root, assignments, device, dry_run, as_json,
                   progress, wait_for_end, **executor_flags):
    """Run the paper's grid over several seeds and check its claims: AT's gain over ST per layer (and the
    fixed-parameter SSMs' against S6's), Mega's robust overfitting, AdS on S4 / DSS, and the error propagation
    across S6's mixer against the LTI mixers. Each check is a paired t-interval over seeds (95 %) with a verdict:
    holds, does not hold or inconclusive. Writes findings.md and findings.json into the study folder, beside one
    sweep folder per part (its report.md); rerunning the command with the same --out resumes it.

    \b
    Examples:
      advssm study paper-findings --scale small --out runs/findings
      advssm study paper-findings --scale small --executor local --max-parallel 2 --wait --out runs/findings
      advssm study paper-findings --scale paper --dataset mnist --data-dir ~/data --executor slurm \\
          --partition gpu --gpus-per-cell 1 --time 24:00:00 --out runs/paper-findings
      advssm study paper-findings --scale paper --data-dir ~/data --dry-run
    """
    chosen = study.SCALES[scale]
    overrides = dict(parse_assignment(a) for a in assignments)
    if data_dir:
        overrides["data.data_dir"] = data_dir
    if device:
        overrides["train.device"] = device
    n_seeds = seeds or chosen.seeds
    parts = study.plan(chosen, datasets or None, n_seeds, overrides)
    if dry_run:
        data = {"scale": scale, "parts": {p.name: p.spec.to_dict() for p in parts},
                "cells": sum(len(p.spec.cells()) for p in parts), "claims": [c.key for c in study.CLAIMS]}
        text = "\n\n".join(f"# {p.name} ({len(p.spec.cells())} cells: "
                           f"{', '.join(c.name for c in p.spec.cells())})\n{p.spec.to_toml().rstrip()}" for p in parts)
        emit(data, as_json, f"{text}\n\n{data['cells']} cells; claims: {', '.join(data['claims'])}")
        return
    settings = options.settings_from(parts[0].spec.executor, executor_flags)
    if wait_for_end and settings.kind == "inline":
        raise click.UsageError("--wait is for --executor local or slurm (an inline study always runs to the end)")
    for warning in options.unused_settings(settings):
        click.echo(f"warning: {warning}", err=True)
    root = Path(out) if out else run_folder.new_run_dir(runs_root, f"paper-findings-{scale}")
    study.prepare(root, study.study_record(chosen, parts, n_seeds, overrides))
    again = " ".join(["advssm study paper-findings", f"--scale {scale}", *(f"--dataset {d}" for d in datasets),
                      *([f"--data-dir {shlex.quote(data_dir)}"] if data_dir else []),
                      *([f"--seeds {seeds}"] if seeds else []), *(f"--set {shlex.quote(a)}" for a in assignments),
                      *([f"--device {device}"] if device else []), f"--out {shlex.quote(str(root))}"])
    click.echo(f"study folder: {root} (resume: {again})", err=True)
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    if settings.kind == "inline":
        try:
            with interrupts.handled():  # Ctrl-C and SIGTERM: the folder stays consistent, the command resumes it
                study.run_inline(root, parts, progress)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted; the study folder is consistent. Resume with:\n  {again}", err=True)
            sys.exit(130)
        complete = True
    else:
        complete = study.run_jobs(root, parts, settings, wait_for_end, echo=echo)
    if complete:
        study.analyse(root, parts, chosen.analysis_n, device=None if device in (None, "auto") else device, echo=echo)
    table = study.collect(root, parts)
    md, js, results = study.write_findings(root, chosen, parts, table)
    summary = "\n".join(f"{r['dataset']}: {r['key']}: {r['verdict']}" for r in results)
    note = "" if complete else (f"\n\nnot every cell is complete yet: the findings cover the finished ones; rerun "
                                f"`{again}` (plus the executor options) once `advssm status` shows them done")
    emit({"study_dir": str(root), "findings": str(md), "findings_json": str(js), "complete": complete,
          "claims": [{k: r[k] for k in ("dataset", "key", "verdict")} for r in results]}, as_json,
         f"{summary}\n\nfindings: {md}{note}")
