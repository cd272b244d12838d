"""The ``[executor]`` table of a sweep TOML (and the sweep's executor flags): where and how the cells run.

Resolved once into a frozen :class:`ExecutorSpec`; flags given on the command line win over the table.

Example:
    >>> spec = ExecutorSpec.model_validate({"kind": "slurm", "partition": "gpu", "time": "12:00:00",
    ...                                     "gpus_per_cell": 4, "sbatch": {"account": "robust"}})
    >>> spec.time_minutes, spec.ranks
    (720, 4)
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EXECUTORS = ("inline", "local", "slurm")


def parse_time(value: str | int) -> int:
    """Slurm's time formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) or an int
    of minutes, as whole minutes (seconds round up)."""
    if isinstance(value, bool):
        raise ValueError("time must be minutes (int) or a Slurm time string such as '12:00:00'")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"time must be at least 1 minute, got {value}")
        return value
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"time {value!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS, ...)")
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        h, m, s = (parts + [0, 0])[:3]
        seconds = ((int(days) * 24 + h) * 60 + m) * 60 + s
    elif len(parts) == 3:
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    elif len(parts) == 2:  # MM:SS
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 60
    minutes = -(-seconds // 60)
    if minutes < 1:
        raise ValueError(f"time {value!r} is shorter than a minute")
    return minutes


class ExecutorSpec(BaseModel):
    """How a sweep's cells run. Every cell is one job with these resources.

    Attributes:
        kind: ``inline`` (one after another in this process, the default), ``local`` (submitit jobs on this
            machine) or ``slurm`` (submitit jobs on a Slurm cluster).
        max_parallel: local: cells running at once (default: as many as cores, at most the number of
            cells), the CPU threads split between them; slurm: the job array's ``%`` limit (default none).
        retries: times a failing cell is run again before it is marked failed.
        partition, time, mem_gb, cpus_per_cell, gpus_per_cell: the Slurm allocation of one cell (``time`` in
            Slurm's formats or minutes; local: ``time`` is the job's timeout).
        ranks_per_cell: processes per cell (torch.distributed ranks; default one per GPU, else 1). Rank 0
            owns the cell folder.
        sbatch: more sbatch options, e.g. ``{account = "robust", qos = "high", constraint = "a100"}``.
        setup: shell lines run before the job starts (``module load``, activating an environment).
        max_requeues: times a timed-out job requeues itself (preemptions do not count).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["inline", "local", "slurm"] = "inline"
    max_parallel: int | None = Field(default=None, ge=1)
    retries: int = Field(default=1, ge=0)
    partition: str | None = None
    time: str | int | None = None
    mem_gb: float | None = Field(default=None, gt=0)
    cpus_per_cell: int | None = Field(default=None, ge=1)
    gpus_per_cell: int = Field(default=0, ge=0)
    ranks_per_cell: int | None = Field(default=None, ge=1)
    sbatch: dict[str, str | int | float | bool] = Field(default_factory=dict)
    setup: tuple[str, ...] = ()
    max_requeues: int = Field(default=10, ge=0)

    @field_validator("time")
    @classmethod
    def _check_time(cls, value):
        if value is not None:
            parse_time(value)
        return value

    @field_validator("sbatch")
    @classmethod
    def _check_sbatch(cls, value):
        owned = {"partition", "time", "mem", "cpus-per-task", "gpus-per-node", "ntasks-per-node", "output",
                 "error", "array", "signal", "job-name", "open-mode"}
        clash = sorted(k for k in value if k.replace("_", "-") in owned)
        if clash:
            raise ValueError(f"sbatch option(s) {clash} are set by the executor itself; use the executor's own "
                             "settings (partition, time, mem_gb, cpus_per_cell, gpus_per_cell, ranks_per_cell)")
        return value

    @property
    def time_minutes(self) -> int | None:
        return None if self.time is None else parse_time(self.time)

    @property
    def ranks(self) -> int:
        """Processes per cell: ranks_per_cell, else one per GPU, else one."""
        return self.ranks_per_cell or max(1, self.gpus_per_cell)
