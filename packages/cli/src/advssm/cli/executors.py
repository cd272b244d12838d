"""Where a sweep's cells run: ``inline`` (in this process), or one submitit job per cell, ``local`` or ``slurm``.

A job is given its cell spec (JSON) and its cell folder and calls :func:`advssm.cli.cell_runner.run_cell`,
which trains the cell (resuming from its training state) and evaluates it. Around that call
:class:`CellJob` keeps the jobs folder (:mod:`advssm.cli.jobs`) up to date: it holds the cell's lock while it
runs, retries a failing cell up to ``retries`` times and then records it as failed with its error and log,
and through submitit's checkpoint hook a preempted or timed-out Slurm job requeues itself and continues the
cell from its last finished epoch. A multi-rank cell (``ranks_per_cell`` > 1, one per GPU by default) runs
as that many tasks (srun on Slurm); rank 0 owns the folder, the others compute their shard.

Example (a submitted sweep returns at once; ``advssm status RUN_DIR`` follows it):
    >>> from advssm.cli.executor_spec import ExecutorSpec
    >>> settings = ExecutorSpec(kind="local", max_parallel=2)
    >>> threads_per_job(settings, n_cells=4, cores=8)
    4
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import click
import submitit
import torch
from pydantic import ValidationError
from submitit.core.utils import UncompletedJobError

from . import cell_folder, interrupts, jobs, runs
from .cell_runner import run_cell
from .errors import ConfigError
from .executor_spec import EXECUTORS, ExecutorSpec
from .experiment import check_data, prepare_dir
from .files import write_text
from .output import emit
from .spec import CellSpec
from .trackers import log_reports

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


class CellJob(submitit.helpers.Checkpointable):
    """The callable of one cell's job: ``CellJob(...)(cell_json, cell_dir) -> summary``.

    Picklable (submitit sends it to the job); a requeued job calls it again with the same arguments, and
    ``run_cell`` continues from the cell's training state.
    """

    def __init__(self, run_dir: str, executor: str, retries: int, threads: int | None, slots: int = 0,
                 gpus_per_slot: int = 0, runner: Callable[[CellSpec, Path], dict] = run_cell,
                 slot_dir: str | None = None) -> None:
        self.run_dir, self.executor, self.retries = str(run_dir), executor, retries
        self.slot_dir = str(slot_dir or run_dir)  # where the slots live: a study's sweeps share one set
        self.threads, self.slots, self.gpus_per_slot, self.runner = threads, slots, gpus_per_slot, runner

    def __call__(self, cell_json: str, cell_dir: str) -> dict:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch.distributed's env:// rendezvous; every GPU
            # stays visible and the trainer picks cuda:LOCAL_RANK
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        if threads:
            torch.set_num_threads(threads)
        cell = CellSpec.model_validate_json(cell_json)
        if env.global_rank != 0:
            return self.runner(cell, Path(cell_dir))  # this rank's shard; rank 0 writes the folder
        with jobs.locked(jobs.lock_path(self.run_dir, cell.name)), self._stoppable():
            with self._slot(cell.name):
                return self._attempts(cell, Path(cell_dir), env, threads)

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A local job stops when its printed job id (submitit's controller process) is killed: the controller
        forwards SIGTERM to the cell, whose submitit handler would only log it (on Slurm, SIGTERM announces a
        preemption that USR2 handles), so here SIGTERM and SIGINT end the cell as Ctrl-C does; and a controller
        killed with SIGKILL takes the cell with it (Linux: the parent-death signal)."""
        if self.executor != "local":
            yield
            return
        _signal_when_parent_dies(signal.SIGINT)
        with interrupts.handled():
            yield

    @contextlib.contextmanager
    def _slot(self, name: str) -> Iterator[None]:
        if not self.slots:
            yield
            return
        jobs.update_record(self.run_dir, name, state="waiting")
        with jobs.slot(getattr(self, "slot_dir", self.run_dir), self.slots) as k:
            if self.gpus_per_slot:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(
                    str(g) for g in range(k * self.gpus_per_slot, (k + 1) * self.gpus_per_slot))
            yield

    def _attempts(self, cell: CellSpec, cell_dir: Path, env, threads: int | None) -> dict:
        paths = env.paths
        before = jobs.read_record(self.run_dir, cell.name)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        for attempt in range(1, self.retries + 2):
            jobs.update_record(self.run_dir, cell.name, executor=self.executor, state="running", attempt=attempt,
                               retries=self.retries, job_id=env.job_id, pid=os.getpid(), host=socket.gethostname(),
                               threads=threads, ranks=env.num_tasks, restarts=restarts,
                               stdout=str(paths.stdout), stderr=str(paths.stderr),
                               started=before.get("started") or jobs.now(), error=None)
            try:
                summary = self.runner(cell, cell_dir)
            except Exception as exc:  # the cell failed; the job says so and, with attempts left, tries again
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                traceback.print_exc()
                # submitit's own "timed out too many times" ends the job: no retry in this allocation
                if attempt <= self.retries and not isinstance(exc, UncompletedJobError):
                    print(f"advssm: cell {cell.name} failed (attempt {attempt} of {self.retries + 1}): {error}; "
                          "retrying", file=sys.stderr, flush=True)
                    jobs.update_record(self.run_dir, cell.name, state="retrying", error=error)
                    continue
                jobs.update_record(self.run_dir, cell.name, state="failed", error=error, ended=jobs.now())
                raise
            except BaseException as exc:  # SIGINT, or submitit leaving after it requeued the job (SystemExit)
                if jobs.read_record(self.run_dir, cell.name).get("state") != "requeued":
                    jobs.update_record(self.run_dir, cell.name, state="failed", ended=jobs.now(),
                                       error=f"interrupted ({type(exc).__name__}); rerun the sweep to continue")
                raise
            jobs.update_record(self.run_dir, cell.name, state="done", ended=jobs.now())
            self._report()
            return summary
        raise AssertionError("unreachable")

    def _report(self) -> None:
        """Rewrite the run's report with this cell in it (the last cell to end leaves the complete report)."""
        try:
            spec = runs.read_spec(self.run_dir)
            write_sweep_report(Path(self.run_dir), spec)
            log_reports(Path(self.run_dir), spec.cells())  # the reports as MLflow artifacts of the cells' runs
        except Exception as exc:  # the cell itself is done; the report can be rewritten with advssm report
            print(f"advssm: warning: could not rewrite {self.run_dir}/report.md ({type(exc).__name__}: {exc}); "
                  f"the cell is complete; rerun the sweep or advssm report {self.run_dir}", file=sys.stderr)

    def checkpoint(self, cell_json: str, cell_dir: str) -> submitit.helpers.DelayedSubmission:
        """submitit's preemption / timeout hook: the same call again; run_cell resumes from the last epoch."""
        name = CellSpec.model_validate_json(cell_json).name
        if submitit.JobEnvironment().global_rank == 0:
            jobs.update_record(self.run_dir, name, state="requeued")
        return super().checkpoint(cell_json, cell_dir)


def _signal_when_parent_dies(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent ends (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call: nobody will send it
        os.kill(os.getpid(), signum)


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


# -- the sweep command's side ---------------------------------------------------------------------------------

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
    cells = spec.cells()
    with jobs.report_lock(run_dir):
        finished = {c.name: run_dir / c.name for c in cells if cell_folder.is_finished(run_dir / c.name)}
        path = runs.write_report(run_dir, finished, title=f"advssm run: {spec.name}", config_text=spec.to_toml())
        rows = jobs.cell_statuses(run_dir, cells)
        if any(row.state != "done" for row in rows):
            title, _, rest = path.read_text().partition("\n")
            write_text(path, f"{title}\n\n{partial_section(rows, run_dir)}{rest}")
    return path


def launch_jobs(spec, run_dir: Path, settings: ExecutorSpec, wait_for_end: bool, as_json: bool,
                poll_s: float = 5.0) -> None:
    """``advssm sweep --executor local|slurm``: submit every cell that is neither complete nor handled by a
    live job (so a rerun resubmits only unfinished and failed cells), print the job ids and the status
    command; with ``wait_for_end`` follow them to the end and print the table."""
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    run_dir = Path(run_dir)
    prepare_dir(spec, run_dir)
    cells = spec.cells()
    with jobs.sweep_lock(run_dir, f"advssm sweep --executor {settings.kind}"):
        rows = jobs.cell_statuses(run_dir, cells)
        todo = [cell for cell, row in zip(cells, rows) if row.state != "done" and not row.alive]
        if settings.kind == "local":  # its data sets are this machine's: fail now, not in the second cell's job
            check_data(todo)
        ids = submit(settings, run_dir, todo, spec.name, n_cells=len(cells))
        write_sweep_report(run_dir, spec)
        others = ", ".join(f"{n} {state}" for state in jobs.STATES
                           if (n := sum(r.state == state for r in rows if r.cell not in ids)))
        text = "\n".join([f"submitted {len(ids)} of {len(cells)} cells to {settings.kind}"
                          + (f" (the others: {others})" if others else ""),
                          *(f"  {name}: job {job_id}" for name, job_id in ids.items()),
                          f"follow them with: advssm status {run_dir}"])
        if not wait_for_end:
            emit({"run_dir": str(run_dir), "executor": settings.kind, "submitted": ids,
                  "status": f"advssm status {run_dir}"}, as_json, text)
            return
        echo(text)
        rows = wait(run_dir, [c.name for c in cells], lambda: jobs.cell_statuses(run_dir, cells), poll_s, echo)
        write_sweep_report(run_dir, spec)
    summaries = {row.cell: cell_folder.read_summary(run_dir / row.cell) for row in rows if row.state == "done"}
    failed = {row.cell: {"error": row.error, "log": row.log} for row in rows if row.state == "failed"}
    notes = "".join(line + "\n" for line in runs.table_notes(list(summaries.items())))  # examples, warnings
    emit({"run_dir": str(run_dir), "cells": summaries, "failed": failed}, as_json,
         f"{runs.summary_table(list(summaries.items()))}\n\n{notes}report: {run_dir / runs.REPORT_FILE}")
    if failed:
        details = "; ".join(f"{name}: {f['error']} (log {f['log']})" for name, f in failed.items())
        raise RuntimeError(f"{len(failed)} failed of {len(cells)} cells: {details}. Rerun the same sweep command "
                           "to resubmit them")


SLURM_ONLY = ("partition", "mem_gb", "cpus_per_cell", "sbatch")


def unused_settings(settings: ExecutorSpec) -> list[str]:
    """The settings the chosen executor does not use (said aloud, never silently dropped)."""
    if settings.kind == "slurm":
        return []
    given = settings.model_dump(exclude_defaults=True)
    return [f"executor.{key} = {given[key]!r} applies to --executor slurm; {settings.kind} does not use it"
            for key in SLURM_ONLY if key in given]
