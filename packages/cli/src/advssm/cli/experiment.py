"""Run the cells of a RunConfig in turn, each into its own sub-folder, skipping finished ones."""
from __future__ import annotations

from pathlib import Path

import click

from . import runs
from .config import RunConfig, load_toml, resolve
from .data import load_dataset
from .errors import ConfigError
from .final_eval import finish_cell
from .progress import TqdmProgress
from .train_eval import TrainSetEval


def prepare_dir(config: RunConfig, run_dir: Path) -> None:
    """Write config.toml into a new run folder, or check that an existing one holds the same experiment."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / runs.CONFIG_FILE
    text = config.to_toml()
    if path.is_file():
        # compare the settings, not the text: a file written by an older version (a key added since) or
        # edited by hand (comments, order) holds the same experiment when it resolves to the same config
        try:
            same = resolve(load_toml(path)).to_dict() == config.to_dict()
        except ConfigError:
            same = False
        if not same:
            raise ConfigError(f"{run_dir} holds a different experiment ({path} differs); "
                              f"choose another --out, or continue it with --resume {run_dir}")
        return
    path.write_text(text)


def run_cell(config: RunConfig, cell_dir: Path, progress: bool = True, callbacks=(), label: str = "") -> dict:
    """Train and evaluate one cell into ``cell_dir``; continues from train_state.pt when it is there."""
    import torch
    from advssm.adv_train.trainer import Trainer
    from advssm.ssm_layers import build_model, save_checkpoint

    settings = config.data
    train_config = config.train_config()
    data = load_dataset(settings.dataset, settings.data_dir, settings.train_size, settings.test_size,
                        settings.download, settings.tiny_classes, settings.augment, seed=train_config.seed)
    torch.manual_seed(train_config.seed)  # the model's initial weights follow the run's one seed
    model = build_model(config.model_config(data.channels, data.n_classes))
    if config.ads != "none":
        from advssm.ads import attach_ads

        attach_ads(model, activation=config.ads)
    cell_dir.mkdir(parents=True, exist_ok=True)
    resume = (cell_dir / "train_state.pt").is_file()
    train_set_eval = TrainSetEval(cell_dir, data.train, config.eval.train_n, resume)
    bar = TqdmProgress(label, enabled=progress, train_set_row=train_set_eval.row)
    train_set_eval.bar = bar
    # train_set_eval first: the bar's line for an epoch shows the train-set accuracy measured for it
    trainer = Trainer(model, data.train, data.test, train_config, out_dir=cell_dir, save_model=save_checkpoint,
                      augment=data.augment, callbacks=[train_set_eval, bar, *callbacks])
    trainer.fit(resume=resume)
    train_set_eval.measure(trainer, trainer.epoch)  # the last epoch's row, if an interrupt cut it
    try:
        return finish_cell(config, cell_dir, data.test,
                           progress=lambda stage, info: bar.on_final_eval(stage, info["done"], info["total"] or 0))
    finally:
        bar.close()


def execute(config: RunConfig, run_dir: Path, progress: bool = True, callbacks=()) -> dict[str, dict]:
    """Run every unfinished cell of ``config`` into ``run_dir/<cell>``, then write the report.

    Returns the summaries by cell name. A KeyboardInterrupt propagates, leaving the folder resumable.
    """
    prepare_dir(config, run_dir)
    cells = config.cells()
    summaries = {}
    for i, (name, cell) in enumerate(cells, 1):
        cell_dir = run_dir / name
        if runs.is_complete(cell_dir):
            click.echo(f"[{i}/{len(cells)}] {name}: finished, skipped", err=True)
        else:
            click.echo(f"[{i}/{len(cells)}] {name}: training", err=True)
            run_cell(cell, cell_dir, progress, callbacks, label=name)
        summaries[name] = runs.read_summary(cell_dir)
    runs.write_report(run_dir, {name: run_dir / name for name, _ in cells}, title=f"advssm run: {config.name}",
                      config_text=config.to_toml())
    return summaries
