"""What ``eval`` and ``analyze`` need around a checkpoint: the model, and the settings of the run that made it."""
from __future__ import annotations

from pathlib import Path

from . import runs
from .config import RunConfig, load_toml, resolve
from .data import load_dataset
from .errors import ConfigError


def run_config_of(checkpoint: str | Path) -> RunConfig | None:
    """The config.toml of the run a checkpoint belongs to (its cell's parent folder), if any."""
    cell_dir = Path(checkpoint).resolve().parent
    for folder in (cell_dir, cell_dir.parent):
        path = folder / runs.CONFIG_FILE
        if path.is_file():
            config = resolve(load_toml(path))
            cells = dict(config.cells())
            return cells.get(cell_dir.name, config)
    return None


def load_for_eval(checkpoint: str | Path, dataset: str | None, data_dir: str | None, n: int | None,
                  eps: float | None, device: str = "cpu"):
    """(model, x_test, y_test, eps, run): the model from ``checkpoint``, the test examples of its data set and
    the eps of its run, each overridable (required where no run config is found next to the checkpoint).

    Without ``n`` the examples are those the run evaluated (its ``test_size`` / ``eval_n``), so the numbers
    compare with the run's; ``run`` is that run's single-cell RunConfig (or None)."""
    import torch
    from advssm.ssm_layers import load_checkpoint

    model, _ = load_checkpoint(checkpoint, map_location=device)
    run = run_config_of(checkpoint)
    if dataset is None and run is None:
        raise ConfigError(f"no run config.toml next to {checkpoint}; pass --dataset (and --eps)")
    settings = run.data if run is not None else None
    name = dataset or settings.dataset
    folder = data_dir or (settings.data_dir if settings else "data")
    data = load_dataset(name, folder, test_size=None, tiny_classes=settings.tiny_classes if settings else 50)
    x, y = data.test.tensors
    if n is None and run is not None and (dataset is None or dataset == settings.dataset):
        limits = [v for v in (settings.test_size, run.train.get("eval_n")) if v is not None]
        n = min(limits) if limits else None
    if n is not None:
        x, y = x[:n], y[:n]
    if eps is None:
        if run is None:
            raise ConfigError(f"no run config.toml next to {checkpoint}; pass --eps")
        eps = float(run.train["eps"])
    model.eval()
    return model, x.to(torch.device(device)), y.to(torch.device(device)), eps, run
