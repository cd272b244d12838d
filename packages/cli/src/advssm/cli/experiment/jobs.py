"""The jobs folder of a run (``RUN_DIR/jobs``, made by the local and slurm executors): what they know about
each cell's job.

- ``jobs/<cell>.json``: the cell's job record (executor, job id, state, attempts, error, log file), written
  atomically under a small lock, by the sweep command when it submits and by the job as it runs;
- ``jobs/slots/<k>.lock``: the ``--max-parallel`` slots of the local executor;
- ``jobs/submitit/``: submitit's pickles and the jobs' logs.

and the run folder's locks (hidden files, in every run folder, inline runs included):

- ``.<cell>.lock``: held by the one process that trains the cell (two jobs of one cell never both write
  its folder; a killed job's lock goes with it, so "held" means "running now");
- ``.lock``: held by the sweep (or run) command for as long as it runs (a second one on the folder refuses);
- ``.report.lock``: taken around every write of ``report.md``.

The cell folders themselves belong to :mod:`advssm.cli.experiment.cell_folder`; nothing here writes into them.

Example:
    >>> from pathlib import Path; import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> update_record(run, "s4d-pgd-at", state="submitted", job_id="12")["job_id"]
    '12'
    >>> is_locked(lock_path(run, "s4d-pgd-at"))
    False
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..files import write_json
from . import cell_folder

JOBS_DIR = "jobs"
SUBMITIT_DIR = "submitit"
STATES = ("pending", "running", "requeued", "done", "failed")
# Slurm job states in which the job still holds (or waits for) an allocation
SLURM_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT"}


class FolderBusy(RuntimeError):
    """Another advssm command holds the run folder's sweep lock."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jobs_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / JOBS_DIR


def submitit_dir(run_dir: str | os.PathLike) -> Path:
    return jobs_dir(run_dir) / SUBMITIT_DIR


def record_path(run_dir: str | os.PathLike, cell: str) -> Path:
    return jobs_dir(run_dir) / f"{cell}.json"


def lock_path(run_dir: str | os.PathLike, cell: str) -> Path:
    """The cell's lock, held while a process trains it."""
    return Path(run_dir) / f".{cell}.lock"


def sweep_lock_path(run_dir: str | os.PathLike) -> Path:
    """The run folder's lock, held by the command that runs or submits its cells."""
    return Path(run_dir) / ".lock"


# -- locks ----------------------------------------------------------------------------------------------------

def _open_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def locked(path: str | os.PathLike, blocking: bool = True) -> Iterator[int]:
    """Hold an exclusive flock on ``path`` (created if missing); yields the file descriptor.

    With ``blocking=False`` a lock held elsewhere raises BlockingIOError at once. The kernel drops the lock
    when the holder ends, however it ends (``kill -9`` included).
    """
    fd = _open_lock(Path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def is_locked(path: str | os.PathLike) -> bool:
    """Whether some process holds ``path``'s lock now (a missing file is not locked)."""
    if not Path(path).exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def _held(lock: Path, command: str, busy: str) -> Iterator[None]:
    """The lock file ``lock`` taken at once (flock, released with the process) and signed with ``command``, or
    FolderBusy: ``busy`` with ``{holder}`` replaced by the signature of whoever has it."""
    fd = _open_lock(lock)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(busy.format(holder=lock.read_text().strip() or "another process")) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{command}, pid {os.getpid()} on {socket.gethostname()} since {now()}\n".encode())
        yield
    finally:
        os.close(fd)


def sweep_lock(run_dir: str | os.PathLike, command: str):
    """One sweep command per run folder: raises FolderBusy (naming the holder) when another one has it."""
    return _held(Path(sweep_lock_path(run_dir)), command,
                 f"{run_dir} is in use by another advssm command ({{holder}}); wait until it has returned "
                 f"(`advssm status {run_dir}` shows the cells meanwhile)")


def file_lock(path: str | os.PathLike, command: str):
    """One writer of the file ``path`` at a time (e.g. two ``advssm eval`` of one checkpoint sharing its records
    file): the lock ``.<name>.lock`` beside it, taken at once or FolderBusy naming the holder."""
    path = Path(path)
    return _held(path.parent / f".{path.name}.lock", command,
                 f"{path} is being written by another advssm command ({{holder}}); wait until it has returned, "
                 "or give this one another file (--records PATH)")


def report_lock(run_dir: str | os.PathLike):
    """Held around every write of the run's report.md (the sweep command and each finishing job write it)."""
    return locked(Path(run_dir) / ".report.lock")


@contextlib.contextmanager
def slot(run_dir: str | os.PathLike, n_slots: int, poll_s: float = 0.5) -> Iterator[int]:
    """Wait for one of ``n_slots`` free slots (the local executor's ``--max-parallel``); yields its number."""
    folder = jobs_dir(run_dir) / "slots"
    fds = [_open_lock(folder / f"{k}.lock") for k in range(n_slots)]
    try:
        while True:
            for k, fd in enumerate(fds):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                yield k
                return
            time.sleep(poll_s)
    finally:
        for fd in fds:
            os.close(fd)


# -- records --------------------------------------------------------------------------------------------------

def read_record(run_dir: str | os.PathLike, cell: str) -> dict:
    """The cell's job record, {} when it has none (never submitted: an inline run, or not yet)."""
    path = record_path(run_dir, cell)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:  # written atomically, so only a hand edit gets here
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it and rerun the sweep to resubmit the "
                         "cell") from None


def update_record(run_dir: str | os.PathLike, cell: str, **changes) -> dict:
    """Read, change and atomically rewrite the cell's record under its record lock; returns the new record."""
    path = record_path(run_dir, cell)
    with locked(path.with_suffix(".json.lock")):
        record = {**read_record(run_dir, cell), **changes, "cell": cell, "updated": now()}
        write_json(path, record, end="\n")
    return record


def _tail_lines(path: Path) -> list[str]:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 8192))
        tail = f.read().decode(errors="replace")
    lines = [line.rsplit("\r", 1)[-1].strip() for line in tail.splitlines()]  # after a bar's last redraw
    return [line for line in lines if line]


def last_log_line(record: dict) -> str:
    """The job's last word: the last line the cell printed (its stderr: epoch lines, errors), else the last
    line of submitit's own log."""
    paths = {key: Path(record[key]) for key in ("stderr", "stdout") if record.get(key)}
    paths = {key: p for key, p in paths.items() if p.is_file()}
    if "stderr" in paths:
        own = [line for line in _tail_lines(paths["stderr"]) if not line.startswith("submitit ")]
        if own:
            return own[-1]
    for path in paths.values():
        if lines := _tail_lines(path):
            return lines[-1]
    return ""


# -- what is running ------------------------------------------------------------------------------------------

def slurm_queue(job_ids) -> dict[str, tuple[str, str]]:
    """Slurm's view of ``job_ids``: id -> (state, reason), for the jobs its queue still lists.

    Raises RuntimeError when squeue cannot be asked (not on a Slurm machine).
    """
    job_ids = {str(j) for j in job_ids if j}
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        raise RuntimeError("squeue is not on PATH: run this on a machine of the Slurm cluster")
    mains = sorted({j.split("_")[0] for j in job_ids})
    done = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(mains)],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
    queue = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in job_ids:
            queue[parts[0]] = (parts[1], parts[2])
    return queue


def pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a finished child of this very process stays a zombie until reaped
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class CellStatus:
    """One row of ``advssm status``."""

    cell: str
    state: str  # one of STATES
    alive: bool  # a job is training the cell, or queued to
    epochs_done: int
    epochs_total: int
    best_pgd: float | None
    job_id: str | None
    executor: str | None
    attempt: int
    log: str | None
    last_line: str
    error: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def job_state(run_dir: str | os.PathLike, cell: str, record: dict, complete: bool,
              queue: dict[str, tuple[str, str]] | None = None) -> tuple[str, bool, str | None]:
    """(state, alive, error): the cell's state (one of STATES), whether a job is handling it now (training it,
    or queued to), and the error to show; from its folder, lock, record and Slurm's queue.

    ``queue`` is :func:`slurm_queue`'s answer for the run's Slurm jobs (None: it could not be asked).
    """
    if complete:
        return "done", False, None
    if is_locked(lock_path(run_dir, cell)):
        return ("pending" if record.get("state") == "waiting" else "running"), True, None
    state, executor, job_id = record.get("state"), record.get("executor"), record.get("job_id")
    if state is None:  # never submitted (an inline sweep's cell that has not started, or a new cell)
        return "pending", False, None
    if executor == "slurm" and state != "failed":
        if queue is None:  # squeue could not be asked: the record's last word
            return ({"running": "running", "requeued": "requeued"}.get(state, "pending"), True,
                    "Slurm's queue could not be read (squeue); the state is the job's last record")
        slurm_state = (queue.get(str(job_id)) or ("", ""))[0] if job_id else "PENDING"  # being submitted now
        if slurm_state == "RUNNING":
            return "running", True, None
        if slurm_state in SLURM_ALIVE:
            return ("requeued" if record.get("started") or state == "requeued" else "pending"), True, None
    elif executor == "local" and state != "failed" and (not job_id or pid_alive(record.get("controller_pid"))):
        return ("requeued" if state == "requeued" else "pending"), True, None
    if state == "failed":
        return "failed", False, record.get("error")
    # not complete, nobody holds the cell, and the job is gone: it died without saying why (kill -9, OOM, node)
    return "failed", False, (f"job {job_id} ended before the cell was complete (killed, out of memory, or lost "
                             "with its node); see its log")


def cell_statuses(run_dir: str | os.PathLike, cells) -> list[CellStatus]:
    """One CellStatus per cell (``CellSpec``s, in grid order), from the cell folders and the jobs folder."""
    run_dir = Path(run_dir)
    records = {cell.name: read_record(run_dir, cell.name) for cell in cells}
    slurm_ids = [r["job_id"] for r in records.values() if r.get("executor") == "slurm" and r.get("job_id")]
    try:
        queue = slurm_queue(slurm_ids) if slurm_ids else {}
    except (RuntimeError, OSError, subprocess.SubprocessError):
        queue = None
    rows = []
    for cell in cells:
        record = records[cell.name]
        progress = cell_folder.read_progress(run_dir / cell.name)
        state, alive, error = job_state(run_dir, cell.name, record, progress["complete"], queue)
        rows.append(CellStatus(
            cell=cell.name, state=state, alive=alive, epochs_done=progress["epochs_done"],
            epochs_total=cell.train.epochs,
            best_pgd=progress["best_pgd_acc"], job_id=record.get("job_id"), executor=record.get("executor"),
            attempt=int(record.get("attempt") or 0), log=record.get("stderr"), last_line=last_log_line(record),
            error=error))
    return rows
