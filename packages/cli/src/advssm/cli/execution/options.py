"""The sweep's executor flags and how they combine with the TOML's ``[executor]`` table into one
``ExecutorSpec``; the settings the chosen executor does not use, said aloud."""
from __future__ import annotations

import click
from pydantic import ValidationError

from ..errors import ConfigError
from ..experiment.executor_spec import EXECUTORS, ExecutorSpec


def executor_options(func):
    """The sweep's executor flags; each one given wins over the TOML's [executor] table."""
    options = [
        click.option("--executor", "kind", type=click.Choice(EXECUTORS),
                     help="inline: one cell after another in this process (default); local: one submitit job "
                          "per cell on this machine; slurm: one Slurm job per cell (a job array)."),
        click.option("--wait/--no-wait", "wait_for_end", default=False,
                     help="local/slurm: block until every cell is done or failed (default: return once submitted)."),
        click.option("--max-parallel", type=int, help="Cells at once (local: default one per core; slurm: the "
                     "array's limit)."),
        click.option("--retries", type=int, help="Runs of a failing cell after its first, before it is marked "
                     "failed (default 1)."),
        click.option("--partition", help="Slurm partition."),
        click.option("--time", help="Time limit of one cell's job: minutes or Slurm's D-HH:MM:SS (a timed-out "
                     "job requeues and resumes)."),
        click.option("--gpus-per-cell", type=int, help="GPUs of one cell (one rank each, under srun)."),
        click.option("--cpus-per-cell", type=int, help="CPUs of one cell (split between its ranks)."),
        click.option("--ranks-per-cell", type=int, help="torch.distributed ranks of one cell (default: one per "
                     "GPU, else 1)."),
        click.option("--mem-gb", type=float, help="Memory of one cell's job in GB."),
        click.option("--sbatch", "sbatch", multiple=True, metavar="KEY=VALUE",
                     help="Another sbatch option, e.g. --sbatch account=robust --sbatch qos=high (repeatable)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


FLAG_KEYS = ("kind", "max_parallel", "retries", "partition", "time", "gpus_per_cell", "cpus_per_cell",
             "ranks_per_cell", "mem_gb")


def settings_from(table: ExecutorSpec, flags: dict) -> ExecutorSpec:
    """The executor settings: the TOML's [executor] table with the given flags over it, validated once."""
    values = table.model_dump(exclude_unset=True)
    values.update({k: flags[k] for k in FLAG_KEYS if flags.get(k) is not None})
    if flags.get("sbatch"):
        extra = dict(values.get("sbatch") or {})
        for item in flags["sbatch"]:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--sbatch {item!r}: write KEY=VALUE, e.g. --sbatch account=robust")
            extra[key.strip().lstrip("-")] = value.strip()
        values["sbatch"] = extra
    try:
        return ExecutorSpec.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "executor"
        raise ConfigError(f"executor.{where}: {first['msg']} (the [executor] table or its flag)") from None


SLURM_ONLY = ("partition", "mem_gb", "cpus_per_cell", "sbatch")


def unused_settings(settings: ExecutorSpec) -> list[str]:
    """The settings the chosen executor does not use (said aloud, never silently dropped)."""
    if settings.kind == "slurm":
        return []
    given = settings.model_dump(exclude_defaults=True)
    return [f"executor.{key} = {given[key]!r} applies to --executor slurm; {settings.kind} does not use it"
            for key in SLURM_ONLY if key in given]
