"""One submitit job per cell, ``local`` or ``slurm``: the executor with the cell's resources, the
threads and slots of each job, the submission, and the wait for every job to end.

Example:
    >>> from advssm.cli.experiment.executor_spec import ExecutorSpec
    >>> settings = ExecutorSpec(kind="local", max_parallel=2)
    >>> threads_per_job(settings, n_cells=4, cores=8)
    4
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import click
import submitit

from ..experiment import jobs
from ..experiment.cell_runner import run_cell
from ..experiment.executor_spec import ExecutorSpec
from ..experiment.spec import CellSpec
from .cell_job import CellJob

FOREVER_MIN = 60 * 24 * 365  # the local executor's timeout when none is given


def threads_per_job(settings: ExecutorSpec, n_cells: int, cores: int | None = None) -> int | None:
    """CPU threads of each rank of a job: local splits the machine's cores between the cells running at once;
    slurm uses the cell's CPUs (None: the job's ``SLURM_CPUS_PER_TASK``, read inside the job)."""
    ranks = settings.ranks
    if settings.kind == "local":
        cores = cores or os.cpu_count() or 1
        return max(1, cores // (max_parallel(settings, n_cells, cores) * ranks))
    if settings.kind == "slurm" and settings.cpus_per_cell:
        return max(1, settings.cpus_per_cell // ranks)
    return None


def job_threads(settings: ExecutorSpec, n_cells: int, cores: int | None = None) -> int | None:
    """The threads each job sets: under the local executor the user's ``OMP_NUM_THREADS`` where it is set (it
    was ignored: every job set the even split of the cores), else ``threads_per_job``."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if settings.kind == "local" and value.isdigit() and int(value) > 0:
        return int(value)
    return threads_per_job(settings, n_cells, cores)


def max_parallel(settings: ExecutorSpec, n_cells: int, cores: int | None = None) -> int:
    """Cells running at once under the local executor: the setting, else one per core, at most n_cells."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(n_cells, settings.max_parallel or max(1, cores // settings.ranks)))


def make_executor(settings: ExecutorSpec, run_dir: Path, n_cells: int, name: str):
    """The submitit executor for ``settings`` with the cell's resources, its folder under RUN_DIR/jobs."""
    folder = jobs.submitit_dir(run_dir)
    ranks = settings.ranks
    if settings.kind == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.max_requeues)
        executor.update_parameters(timeout_min=settings.time_minutes or FOREVER_MIN, tasks_per_node=ranks,
                                   **({"setup": list(settings.setup)} if settings.setup else {}))
        return executor
    if settings.kind != "slurm":
        raise ValueError(f"no submitit executor for {settings.kind!r}")
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    params = {"job_name": f"advssm-{name}", "time": settings.time_minutes or 60, "ntasks_per_node": ranks,
              "nodes": 1}
    if settings.partition:
        params["partition"] = settings.partition
    if settings.cpus_per_cell:
        params["cpus_per_task"] = max(1, settings.cpus_per_cell // ranks)
    if settings.gpus_per_cell:
        params["gpus_per_node"] = settings.gpus_per_cell
    if settings.mem_gb:
        params["mem"] = f"{int(settings.mem_gb * 1024)}MB"
    if settings.max_parallel:
        params["array_parallelism"] = settings.max_parallel
    if settings.setup:
        params["setup"] = list(settings.setup)
    if settings.sbatch:
        params["additional_parameters"] = {k.replace("-", "_"): v for k, v in settings.sbatch.items()}
    executor.update_parameters(**params)
    return executor


@contextlib.contextmanager
def _stdio_to(path: Path) -> Iterator[None]:
    """Point this process's stdout/stderr file descriptors at ``path`` while submitting local jobs: their
    controllers inherit them, and a pipe held open by a controller would keep a caller that reads this
    command's output waiting until the last cell ends."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def submit(settings: ExecutorSpec, run_dir: Path, cells: Sequence[CellSpec], name: str, n_cells: int | None = None,
           runner: Callable[[CellSpec, Path], dict] = run_cell, slot_dir: Path | None = None) -> dict[str, str]:
    """Submit one job per cell; returns cell name -> job id. Each cell's record says "submitted" first.

    ``n_cells``: the sweep's number of cells (default: these), over which the local slots and threads are
    counted, so that a rerun's jobs share the slots of the jobs still running; ``slot_dir`` (default ``run_dir``)
    holds the local slots, so that several sweeps submitted together (a study's) share ``max_parallel``."""
    if not cells:
        return {}
    run_dir = Path(run_dir).absolute()
    n_cells = n_cells or len(cells)
    executor = make_executor(settings, run_dir, len(cells), name)
    parallel = max_parallel(settings, n_cells) if settings.kind == "local" else 0
    job = CellJob(str(run_dir), settings.kind, settings.retries, job_threads(settings, n_cells),
                  slots=parallel, gpus_per_slot=settings.gpus_per_cell if settings.kind == "local" else 0,
                  runner=runner, slot_dir=str(Path(slot_dir).absolute()) if slot_dir else None)
    for cell in cells:
        jobs.update_record(run_dir, cell.name, executor=settings.kind, state="submitted", job_id=None, attempt=0,
                           error=None, started=None, ended=None, submitted=jobs.now())
    args = [(cell.model_dump_json(), str(run_dir / cell.name)) for cell in cells]
    if settings.kind == "local":
        jobs.submitit_dir(run_dir).mkdir(parents=True, exist_ok=True)
        with _stdio_to(jobs.submitit_dir(run_dir) / "controllers.log"):
            submitted = [executor.submit(job, *a) for a in args]
    else:
        with executor.batch():  # one job array: one sbatch call, and max_parallel as its % limit
            submitted = [executor.submit(job, *a) for a in args]
    ids = {}
    for cell, sub in zip(cells, submitted):
        extra = {"controller_pid": int(sub.job_id)} if settings.kind == "local" else {}
        paths = sub.paths
        jobs.update_record(run_dir, cell.name, job_id=str(sub.job_id), stdout=str(paths.stdout),
                           stderr=str(paths.stderr), **extra)
        ids[cell.name] = str(sub.job_id)
    return ids


def wait(run_dir: Path, cell_names: Sequence[str], status_of: Callable[[], list[jobs.CellStatus]],
         poll_s: float = 5.0, echo: Callable[[str], None] = lambda text: click.echo(text, err=True)) -> list:
    """Block until every cell is done or failed, printing each change of state; returns the last statuses.

    Polls every half second after a change, slowing down to every ``poll_s`` seconds while nothing moves."""
    seen: dict[str, tuple] = {}
    delay = 0.5
    while True:
        rows = [row for row in status_of() if row.cell in cell_names]
        changed = False
        for row in rows:
            key = (row.state, row.epochs_done)
            if seen.get(row.cell) != key:
                seen[row.cell], changed = key, True
                detail = f" ({row.error})" if row.state == "failed" and row.error else ""
                echo(f"{row.cell}: {row.state}, epoch {row.epochs_done}/{row.epochs_total}{detail}")
        if rows and all(row.state in ("done", "failed") for row in rows):
            return rows
        delay = 0.5 if changed else min(poll_s, delay * 1.5)
        time.sleep(delay)
