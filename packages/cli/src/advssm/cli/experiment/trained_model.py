"""What ``eval`` and ``analyze`` need around a checkpoint: the model, and the cell spec of the run that made it.

A checkpoint written by ``advssm run`` carries its whole cell spec in its metadata, so it keeps its
protocol (data set, eps, PGD steps, examples) wherever it is copied. Checkpoints of earlier versions
fall back to the cell folder's cell.json, or the run folder's config.toml.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from advssm.adv_train.config import decide_device
from advssm.ssm_layers import load_checkpoint, read_metadata

from ..data import load_dataset
from ..errors import ConfigError
from . import cell_folder, run_folder
from .spec import validate_cell


def cell_of(checkpoint: str | Path):
    """The CellSpec a checkpoint was trained under, or None when nothing records it."""
    stored = read_metadata(checkpoint)["user"].get("cell")
    if stored is not None:
        return validate_cell(stored, str(checkpoint))  # checked as `run` checks its flags: never trusted as is
    cell_dir = Path(checkpoint).resolve().parent
    if (cell_dir / cell_folder.CELL_FILE).is_file():
        return cell_folder.read_cell(cell_dir)
    for folder in (cell_dir, cell_dir.parent):
        path = folder / run_folder.CONFIG_FILE
        if path.is_file():
            cells = {cell.name: cell for cell in run_folder.read_cells(folder)}
            return cells.get(cell_dir.name) or (next(iter(cells.values())) if len(cells) == 1 else None)
    return None


def final_examples(cell, test_len: int) -> int:
    """How many test examples the cell's table row was measured on (its final evaluation's)."""
    test_n = test_len if cell.train.eval_n is None else min(cell.train.eval_n, test_len)
    if cell.data.test_size is not None:
        test_n = min(test_n, cell.data.test_size)
    return min(cell.eval.aa_n, test_n) if cell.eval.aa else test_n


def default_device(cell) -> str:
    """The device the cell trained on, where it exists here; else the CPU."""
    wanted = decide_device(cell.train.device) if cell is not None else "cpu"
    return wanted if wanted.startswith("cuda") and torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """``device`` if this machine has it (cpu, cuda, cuda:N), else a ConfigError saying what is available."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device or ""):
        raise ConfigError(f"invalid --device {device!r}: choose cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device is visible"
            raise ConfigError(f"--device {device}: CUDA is not available here ({build}); use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def check_input_shape(checkpoint, recorded, x) -> None:
    """Refuse examples whose shape differs from the one the checkpoint was trained on (``recorded``, from its
    metadata; None for a checkpoint that predates the record): a sequence model runs on any length, so an 8x8
    model given 28x28 images would silently report numbers that mean nothing."""
    if recorded is None or list(x.shape[1:]) == list(recorded):
        return
    shape = lambda s: "x".join(str(int(d)) for d in s)  # noqa: E731
    raise ConfigError(f"{checkpoint} was trained on inputs of shape {shape(recorded)}, but these examples are "
                      f"{shape(x.shape[1:])}: evaluate it on the data set it was trained on (drop --dataset, or "
                      "give the one it recorded)")


def load_for_eval(checkpoint: str | Path, dataset: str | None, data_dir: str | None, n: int | None,
                  eps: float | None, device: str | None = None):
    """(model, x_test, y_test, eps, cell, device): the model from ``checkpoint`` on ``device`` (default: the
    run's), the test examples of its data set and the eps of its run, each overridable (required where
    nothing records the run).

    Without ``n`` the examples are those of the run's table row, so the numbers compare with the run's."""
    cell = cell_of(checkpoint)
    if dataset is None and cell is None:
        raise ConfigError(f"{checkpoint} records no run (no cell spec in it, no run config.toml next to it); "
                          "pass --dataset (and --eps)")
    device = check_device(device) if device else default_device(cell)
    model, meta = load_checkpoint(checkpoint, map_location=device)
    settings = cell.data if cell is not None else None
    name = dataset or settings.dataset
    folder = data_dir or (settings.data_dir if settings else "data")
    data = load_dataset(name, folder, test_size=None, tiny_classes=settings.tiny_classes if settings else 50)
    x, y = data.test.tensors
    check_input_shape(checkpoint, meta["user"].get("input_shape"), x)
    if n is None and cell is not None and (dataset is None or dataset == settings.dataset):
        n = final_examples(cell, len(x))
    if n is not None:
        x, y = x[:n], y[:n]
    if eps is None:
        if cell is None:
            raise ConfigError(f"{checkpoint} records no run; pass --eps")
        eps = float(cell.train.eps)
    model.eval()
    return model, x.to(torch.device(device)), y.to(torch.device(device)), eps, cell, device
