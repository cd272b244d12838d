"""The cell folder: the Trainer's run folder (``CellStore``, an ``advssm.adv_train.store.FolderStore``) plus the
CLI's own files; what "complete" means, and how Best / Last / Diff are read from it.

The Trainer's files are named by ``FolderStore`` (this module re-exports their names); the CLI's own ones here.
Writers (each file has exactly one):

    cell.json            the cell's own resolved CellSpec (run_folder.prepare_dir, before any cell of the run trains)
    metrics.jsonl        one line per finished epoch (Trainer)
    train_state.pt       weights, optimisers, RNG states, history: what a resume needs (Trainer)
    best.safetensors     the selected checkpoint, last.safetensors the latest one (Trainer; the metadata
    last.safetensors     carries the cell spec, so a copied checkpoint still knows its protocol)
    summary.json         the Trainer's Best / Last / Diff, how Best was selected, its warnings (Trainer)
    environment.json     threads, torch version, device of each start, and settings changed on resume (Trainer)
    train_eval.jsonl     train-set clean / PGD accuracy per epoch, for the plots (cell_runner's TrainSetEval)
    final_eval.json      the final evaluation of best and last: clean, PGD and AutoAttack on the same examples,
                         its protocol and warnings (cell_runner, after training); its presence = complete
    final_eval_best.jsonl, final_eval_last.jsonl
                         the per-example records of that evaluation
    accuracy.png         the cell's curves (report)

``read_summary`` merges the Trainer's summary with the final evaluation into the table's view; the CLI
never rewrites a file the Trainer wrote.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from advssm.adv_train.store import ENVIRONMENT_FILE, METRICS_FILE, STATE_FILE, SUMMARY_FILE, FolderStore

# Best - Last and the choice of Best: the trainer's and the table's are one function each
from advssm.adv_train.trainer import SELECT_KEYS, diff, robust_overfitting_summary

from ..files import write_json, write_text
from .spec import validate_cell

CELL_FILE = "cell.json"
CHECKPOINT_SUFFIX = ".safetensors"
TRAIN_EVAL_FILE = "train_eval.jsonl"
FINAL_EVAL_FILE = "final_eval.json"
CHECKPOINTS = ("best", "last")
KEYS = ("clean_acc", "pgd_acc", "aa_acc")


class CellStore(FolderStore):
    """The cell folder as the Trainer's store: checkpoints are ``best.safetensors`` / ``last.safetensors``
    written by ``save_model`` (``cell_runner.save_with_cell``: the cell spec in their metadata).

    Example::

        Trainer(model, train, test, cell.train, store=CellStore(cell_dir, save))
        CellStore(cell_dir).checkpoint_path("best")      # cell_dir / "best.safetensors"
    """

    def __init__(self, cell_dir: str | Path, save_model=None):
        super().__init__(cell_dir, save_model, suffix=CHECKPOINT_SUFFIX)


def checkpoint(cell_dir: str | Path, stage: str) -> Path:
    """``best`` or ``last`` checkpoint of the cell."""
    return CellStore(cell_dir).checkpoint_path(stage)


def records_file(cell_dir: str | Path, stage: str) -> Path:
    """The per-example records of the final evaluation of ``stage``."""
    return Path(cell_dir) / f"final_eval_{stage}.jsonl"


class DamagedFile(ValueError):
    """A file of a cell folder that cannot be read (edited by hand, cut by a full disk, copied in part)."""


def _damaged(path: Path, exc: Exception) -> DamagedFile:
    why = " ".join(str(exc).split())[:120]
    return DamagedFile(f"{path} is damaged ({type(exc).__name__}: {why}); restore it from a copy, or delete the "
                       f"cell folder {path.parent} to train the cell again")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from None
    if not isinstance(value, dict):
        raise _damaged(path, TypeError(f"a JSON {type(value).__name__}, not an object"))
    return value


def is_finished(cell_dir: str | Path) -> bool:
    """Trained: the Trainer wrote summary.json (the last thing it writes)."""
    return (Path(cell_dir) / SUMMARY_FILE).is_file()


def is_complete(cell_dir: str | Path) -> bool:
    """Trained and finally evaluated (final_eval.json; folders of earlier versions kept it in summary.json)."""
    cell_dir = Path(cell_dir)
    if not is_finished(cell_dir):
        return False
    return (cell_dir / FINAL_EVAL_FILE).is_file() or "final_eval" in _read_json(cell_dir / SUMMARY_FILE)


def read_cell(cell_dir: str | Path):
    """The cell's CellSpec (None for a folder written before cell.json existed), checked as ``run`` checks flags."""
    path = Path(cell_dir) / CELL_FILE
    return validate_cell(_read_json(path), str(path)) if path.is_file() else None


def write_cell(cell_dir: str | Path, cell) -> None:
    write_text(Path(cell_dir) / CELL_FILE, cell.model_dump_json(indent=2))


def read_metrics(cell_dir: str | Path) -> list[dict]:
    """The per-epoch metric lines; a half-written last line (an interrupted write) is ignored."""
    path = Path(cell_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def read_train_eval(cell_dir: str | Path) -> list[dict]:
    """The rows of train_eval.jsonl ([] when there is none)."""
    path = Path(cell_dir) / TRAIN_EVAL_FILE
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from None


UNFINISHED = ("trained, but its final evaluation has not finished (killed, or still running): the numbers are the "
              "trainer's per-epoch ones, without AutoAttack; rerun the run (or the sweep) to finish it")


def read_final_eval(cell_dir: str | Path) -> dict | None:
    path = Path(cell_dir) / FINAL_EVAL_FILE
    return _read_json(path) if path.is_file() else None


def write_final_eval(cell_dir: str | Path, final: dict) -> None:
    write_json(Path(cell_dir) / FINAL_EVAL_FILE, final)


def read_summary(cell_dir: str | Path) -> dict:
    """The cell's row of the table: Best / Last / Diff, where Best came from, and what the numbers are.

    ``best`` / ``last`` hold the final evaluation's clean, PGD and AA accuracy (all on the same examples)
    where it ran, else the Trainer's per-epoch numbers (and ``unfinished`` says why); ``final_eval`` describes
    the protocol; ``selection`` says where and by what Best was chosen (with the test accuracies of a Best
    chosen on the validation slice); ``warnings`` collects the Trainer's and the final evaluation's.
    """
    cell_dir = Path(cell_dir)
    summary = _read_json(cell_dir / SUMMARY_FILE)
    final = read_final_eval(cell_dir)
    if final is None and "final_eval" not in summary:  # trained, but its final evaluation was cut (or is running)
        return {**summary, "unfinished": UNFINISHED}
    return summary if final is None else merge(summary, final)  # None: a folder of an earlier version


def merge(summary: dict, final: dict) -> dict:
    """The table row of the trainer's ``summary`` and the final evaluation ``final`` (see ``read_summary``)."""
    stages = final["stages"]
    row = {stage: {"epoch": summary[stage]["epoch"],
                   **{k: (stages[stage] if stage in stages else summary[stage]).get(k) for k in KEYS}}
           for stage in CHECKPOINTS}
    out = {**row, "diff": diff(row["best"], row["last"]), "final_eval": final["protocol"]}
    if "selection" in summary:
        out["selection"] = summary["selection"]
        if summary["selection"].get("on") == "val":  # the val accuracies Best was chosen by
            out["selection"]["val"] = {k: summary["best"].get(k) for k in ("val_clean_acc", "val_pgd_acc")}
    for key in ("changes", "init_from"):
        if key in summary or key in final:
            out[key] = summary.get(key, final.get(key))
    out["warnings"] = list(summary.get("warnings", [])) + [
        f"final evaluation of {stage}: {w}" for stage in CHECKPOINTS for w in stages.get(stage, {}).get("warnings", [])]
    return out


def read_progress(cell_dir: str | Path) -> dict:
    """How far a cell is: ``{"epochs_done", "epochs_total", "best_pgd_acc", "complete"}`` (None where unknown)."""
    cell_dir = Path(cell_dir)
    metrics = read_metrics(cell_dir)
    try:
        cell = read_cell(cell_dir)
    except (OSError, ValueError):
        cell = None
    complete = is_complete(cell_dir)
    return {"epochs_done": len(metrics), "epochs_total": cell.train.epochs if cell is not None else None,
            "best_pgd_acc": _best_pgd(cell_dir, metrics, cell, complete), "complete": complete}


def _best_pgd(cell_dir: Path, metrics: list[dict], cell, complete: bool) -> float | None:
    """The PGD accuracy of Best by the table's rule: the final evaluation's once the cell is complete, else that
    of the epoch the trainer would select now (by the cell's select_by on its select_on set), not the highest
    per-epoch PGD (``status`` showed 13.56 against the table's 8.00)."""
    if complete:
        return read_summary(cell_dir)["best"].get("pgd_acc")
    rows = [m for m in metrics if all(isinstance(m.get(k), float) and math.isfinite(m[k])
                                      for k in ("clean_acc", "pgd_acc"))]
    if not rows:
        return None
    select_by = cell.train.select_by if cell is not None and cell.train.select_by in SELECT_KEYS else "pgd"
    select_on = cell.train.select_on if cell is not None else "test"
    try:
        return robust_overfitting_summary(rows, select_by, select_on)["best"]["pgd_acc"]
    except (KeyError, ValueError):  # a val-selected cell whose rows lack the val accuracies
        return None


__all__ = ["CellStore", "CELL_FILE", "METRICS_FILE", "STATE_FILE", "SUMMARY_FILE", "ENVIRONMENT_FILE",
           "TRAIN_EVAL_FILE", "FINAL_EVAL_FILE", "checkpoint", "records_file", "is_finished", "is_complete",
           "read_cell", "write_cell", "read_metrics", "read_train_eval", "read_final_eval",
           "write_final_eval", "diff", "merge", "read_summary", "read_progress"]
