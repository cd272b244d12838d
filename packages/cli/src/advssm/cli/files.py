"""Writing the CLI's files: every JSON, markdown, TOML and PNG file the CLI writes goes through here.

Each write is atomic (``advssm.ssm_layers.checkpoint.atomic_write``: a temporary file beside the target,
flushed, then renamed), so a reader, a resumed run or a crash never sees half a file, and a full disk raises
one error naming the file. The append-only logs (job logs, per-example records) append whole lines instead.

    from .files import write_json, write_text
    write_json(run_dir / "cell.json", {"name": "s4d-pgd-at"})
    write_text(run_dir / "report.md", "# Results\n")
"""
from __future__ import annotations

import json
import os
from typing import Any

from advssm.ssm_layers import checkpoint

__all__ = ["write_bytes", "write_text", "write_json"]


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``data`` to ``path`` atomically (missing parent folders are created).

    Example::

        write_bytes("runs/x/accuracy.png", png)
    """
    checkpoint.atomic_write(path, data)  # looked up on each call: tests replace it to simulate a failing disk


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) to ``path`` atomically.

    Example::

        write_text("runs/x/report.md", "# Results\\n")
    """
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2, end: str = "") -> None:
    """``value`` as JSON to ``path`` atomically, followed by ``end`` (e.g. "\\n").

    Example::

        write_json("runs/x/final_eval.json", {"stages": {}}, end="\\n")
    """
    write_text(path, json.dumps(value, indent=indent) + end)
