"""One cell as a submitit job (``CellJob``): it is given its cell spec (JSON) and its cell folder and calls
:func:`advssm.cli.experiment.cell_runner.run_cell`, which trains the cell (resuming from its training
state) and evaluates it. Around that call it keeps the jobs folder (:mod:`advssm.cli.experiment.jobs`) up to
date: it holds the cell's lock while it runs, retries a failing cell up to ``retries`` times and then
records it as failed with its error and log, and through submitit's checkpoint hook a preempted or
timed-out Slurm job requeues itself and continues the cell from its last finished epoch. A multi-rank
cell (``ranks_per_cell`` > 1, one per GPU by default) runs as that many tasks (srun on Slurm); rank 0
owns the folder, the others compute their shard.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import submitit
import torch
from submitit.core.utils import UncompletedJobError

from .. import interrupts
from ..experiment import jobs, run_folder
from ..experiment.cell_runner import run_cell
from ..experiment.spec import CellSpec
from ..experiment.trackers import log_reports
from .sweep_report import write_sweep_report


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
            write_sweep_report(Path(self.run_dir), run_folder.read_spec(self.run_dir))
            log_reports(Path(self.run_dir), run_folder.read_cells(self.run_dir))  # as MLflow artifacts of each cell
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
