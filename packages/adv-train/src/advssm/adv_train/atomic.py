"""Atomic writes: adv-train's one way to write a file that a reader, a resume or a crash must never see half of.

Every file a run writes goes through ``atomic_write`` (the trainer's checkpoints, training state, summary and
environment; ``evaluate()``'s rewritten records file). The append-only logs (``metrics.jsonl``, the records
file) append whole lines and are read back without a cut-off last line instead.

    from advssm.adv_train.atomic import atomic_write
    atomic_write("run/summary.json", b'{"best": {}}')
"""
from __future__ import annotations

import errno
import io
import os
import secrets
from pathlib import Path

import torch

__all__ = ["atomic_write", "remove_stale_temps", "torch_bytes"]

AGAIN = "write it again (the previous file under that name is intact)"


def atomic_write(path: str | os.PathLike, data: bytes, when_full: str = AGAIN) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it onto ``path``.

    The temporary file lives in the target folder (a rename is only atomic within one file system) under a
    unique name ``.<name>.<pid>.<hex>.tmp`` and is created by ``open``, so the file gets the permissions any
    new file gets (mkstemp's would be owner-only). A full disk raises one ``OSError`` naming the file and
    ``when_full``, the advice for the reader (default: write it again).

    Example::

        atomic_write(Path("run") / "summary.json", json.dumps(summary).encode(),
                     when_full="free some space, then resume")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.exists():
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(exc.errno, f"no space left on the device holding {path}: free some space, "
                                     f"then {when_full}") from exc
        raise
    _fsync_folder(path.parent)


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temporary files a killed writer of ``path`` left (``.<name>.<pid>.<hex>.tmp`` of a dead pid);
    a live writer's are kept.

    Example::

        remove_stale_temps(Path("run") / "metrics.jsonl")
    """
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 2:].split(".")[0])
            os.kill(pid, 0)  # raises if no such process: the writer is gone
            alive = pid != os.getpid()  # our own pid: a write of ours that was cut (we write one at a time)
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:  # someone else's live process
            alive = True
        if not alive:
            tmp.unlink(missing_ok=True)


def torch_bytes(obj) -> bytes:
    """``torch.save(obj)`` into memory, for ``atomic_write``: torch's own file writer reports a full disk as
    "[enforce fail at inline_container.cc:672] . unexpected pos", which names neither the cause nor the file; a
    plain write raises OSError(ENOSPC), which ``atomic_write`` turns into a message naming the path.

    Example::

        atomic_write("run/train_state.pt", torch_bytes({"epoch": 3}))
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); folders cannot be opened for fsync on every platform."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
