"""Where a training run's files go: the ``RunStore`` protocol the Trainer writes through, and ``FolderStore``,
the folder that owns their names.

The Trainer knows no file name: it hands a store its checkpoints ("last", "best"), its training state, the
metric line of each epoch, its environment record and its summary. ``FolderStore`` keeps them in one folder:

    metrics.jsonl        one JSON line per finished epoch (appended; a cut-off last line is dropped on reading)
    last<suffix>         the latest weights, through ``save_model(path, model, metadata)``
    best<suffix>         the selected epoch's weights (suffix ".pt" for ``save_state_dict``)
    train_state.pt       weights, optimisers, RNG states, history: what a resume needs
    summary.json         Best / Last / Diff and how Best was selected (written last)
    environment.json     threads, torch version, device of each start, and settings changed on resume

Every whole-file write goes through ``atomic.atomic_write``. The CLI's cell folder is this store plus the CLI's
own files (``advssm.cli.cell_folder.CellStore``).

    from advssm.adv_train.store import FolderStore
    store = FolderStore("run")
    Trainer(model, train_set, test_set, config, store=store).fit()
    store.checkpoint_path("best")                    # Path('run/best.pt')
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .atomic import atomic_write, torch_bytes

__all__ = ["RunStore", "FolderStore", "save_state_dict", "CHECKPOINT_KINDS", "STATE_FILE", "METRICS_FILE",
           "SUMMARY_FILE", "ENVIRONMENT_FILE"]

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ENVIRONMENT_FILE = "environment.json"
CHECKPOINT_KINDS = ("last", "best")
RESUME = "resume (the files of the last finished epoch are intact)"


@runtime_checkable
class RunStore(Protocol):
    """What the Trainer needs from the place its run lives (rank 0 alone calls the writing methods).

    ``str(store)`` names the place in messages. Example: ``Trainer(..., store=FolderStore("run"))``.
    """

    def prepare(self) -> None:
        """Create the place (called once, before anything is written)."""

    def save_checkpoint(self, kind: str, model: nn.Module, metadata: dict[str, Any]) -> None:
        """The model's weights as checkpoint ``kind`` ("last" or "best"), with ``metadata``."""

    def has_state(self) -> bool:
        """Whether a training state to resume from is there."""

    def save_state(self, state: dict[str, Any]) -> None:
        """The training state (a dict of tensors and plain values), replacing the previous one."""

    def load_state(self) -> dict[str, Any]:
        """The saved training state; a readable error when it is missing or damaged."""

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace the per-epoch metric lines by ``rows`` (a start or a resume)."""

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one finished epoch's metric line."""

    def read_environment(self) -> dict[str, Any] | None:
        """The environment record of earlier starts (None when there is none or it cannot be read)."""

    def write_environment(self, record: dict[str, Any]) -> None:
        """Replace the environment record."""

    def write_summary(self, summary: dict[str, Any]) -> None:
        """The run's summary (the last thing a finished run writes)."""


def save_state_dict(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None) -> None:
    """Default model saver: the plain ``state_dict`` via ``torch.save``, atomically.

    Load it with ``model.load_state_dict(torch.load(path, weights_only=True))``. ``metadata`` goes to a
    JSON file beside it (``<path>.json``).

    Example::

        save_state_dict("run/last.pt", model, {"epoch": 3})
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_write(path, torch_bytes(state), when_full=RESUME)
    atomic_write(path.with_name(path.name + ".json"), json.dumps(metadata or {}, sort_keys=True).encode(),
                 when_full=RESUME)


save_state_dict.suffix = ".pt"


class FolderStore:
    """A run in one folder, under the file names above (see the module docstring).

    Args:
        path: the folder (created by ``prepare``).
        save_model: ``save_model(path, model, metadata)`` writes a checkpoint (default ``save_state_dict``).
        suffix: the checkpoints' file extension; default the saver's ``suffix`` attribute (the savers'
            convention: ``save_state_dict.suffix`` ".pt", ``ssm_layers.save_checkpoint.suffix`` ".safetensors"),
            else ".pt".

    Example::

        store = FolderStore("run", save_model=save_checkpoint)   # best.safetensors, last.safetensors
    """

    def __init__(self, path: str | os.PathLike, save_model: Callable | None = None, suffix: str | None = None):
        self.path = Path(path)
        self.save_model = save_model or save_state_dict
        self.suffix = suffix if suffix is not None else getattr(self.save_model, "suffix", ".pt")

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint_path(self, kind: str) -> Path:
        """The file of checkpoint ``kind`` ("last", "best")."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"a checkpoint is one of {', '.join(CHECKPOINT_KINDS)}, got {kind!r}")
        return self.path / f"{kind}{self.suffix}"

    # -- the RunStore protocol ------------------------------------------------------------------------

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def save_checkpoint(self, kind: str, model: nn.Module, metadata: dict[str, Any]) -> None:
        self.save_model(self.checkpoint_path(kind), model, metadata)

    def has_state(self) -> bool:
        return self.file(STATE_FILE).is_file()

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.file(STATE_FILE), torch_bytes(state), when_full=RESUME)

    def load_state(self) -> dict[str, Any]:
        path = self.file(STATE_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist; run fit() without resume first")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state["epoch"], state["config"], state["model"]  # noqa: B018 (a foreign file lacks them)
        except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, KeyError ... by damage
            raise RuntimeError(f"cannot resume: the training state {path} is corrupt or truncated "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); its checkpoints and "
                               f"metrics are intact, but training cannot continue from it: delete {path} to "
                               "train this cell again from the start") from exc
        return state

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self.file(METRICS_FILE), "".join(json.dumps(m) + "\n" for m in rows).encode(),
                     when_full=RESUME)

    def append_metrics(self, row: dict[str, Any]) -> None:
        try:
            with open(self.file(METRICS_FILE), "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OSError(exc.errno, f"no space left on the device holding {self.path}: free some space, "
                                         "then resume (the training state of this epoch is saved)") from exc
            raise

    def read_environment(self) -> dict[str, Any] | None:
        path = self.file(ENVIRONMENT_FILE)
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # rewritten by the caller; the training state itself is intact

    def write_environment(self, record: dict[str, Any]) -> None:
        atomic_write(self.file(ENVIRONMENT_FILE), json.dumps(record, indent=2).encode(), when_full=RESUME)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.file(SUMMARY_FILE), json.dumps(summary, indent=2).encode(), when_full=RESUME)

