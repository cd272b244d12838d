"""``run_cell(cell, cell_dir)``: train one cell into its folder (resuming when it can), then evaluate it.

This is the whole way from a ``CellSpec`` to a finished cell folder, and the function an executor (a
submitit job, a torchrun process) calls: it is importable and picklable at module level and takes only
the cell spec and the folder. Under torchrun every rank calls it; rank 0 alone writes the folder.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.distributed as dist
from advssm.ads import attach_ads
from advssm.adv_train import distributed
from advssm.adv_train.config import decide_device
from advssm.adv_train.trainer import Trainer
from advssm.ssm_layers import build_model, load_checkpoint, save_checkpoint

from ..data import check_model_io, load_dataset
from ..errors import ConfigError
from ..progress import TqdmProgress
from . import cell_folder
from .final_eval import finish_cell
from .spec import check_memory
from .trackers import open_trackers
from .train_eval import TrainSetEval


def save_with_cell(path, model, metadata: dict | None, cell_json: str, input_shape=None) -> None:
    """``save_checkpoint`` with the cell's whole spec in the metadata (``"cell"``) and the shape of one training
    input (``"input_shape"``, e.g. [1, 8, 8]): a checkpoint copied anywhere still says how it was trained, how its
    run evaluated it and which inputs it takes."""
    extra = {"input_shape": list(input_shape)} if input_shape is not None else {}
    save_checkpoint(path, model, {**(metadata or {}), "cell": json.loads(cell_json), **extra})


def build_cell_model(cell, init_from: str | None = None):
    """The cell's freshly initialised model (seeded by the run's seed), AdS attached, the weights of the
    checkpoint ``init_from`` (``train.init_from`` in the TOML) loaded when given."""
    torch.manual_seed(cell.train.seed)  # the model's initial weights follow the run's one seed
    model = build_model(cell.model)
    if cell.ads != "none":
        attach_ads(model, activation=cell.ads)
    if init_from:
        load_init_weights(model, init_from)
    return model


def load_init_weights(model, path: str) -> None:
    """Copy the weights of the checkpoint ``path`` into ``model``; a different architecture is refused."""
    if not Path(path).is_file():
        raise ConfigError(f"train.init_from: no checkpoint at {path}")
    source, _ = load_checkpoint(path)
    mine, theirs = model.config.to_dict(), source.config.to_dict()
    differ = [f"{k} {theirs.get(k)!r} (this cell: {mine.get(k)!r})" for k in mine if mine.get(k) != theirs.get(k)]
    if differ:
        raise ConfigError(f"train.init_from {path}: another architecture: {'; '.join(differ)}. Start from a "
                          "checkpoint of the same model, data set and AdS setting")
    model.load_state_dict(source.state_dict())


def check_activation_memory(cell, input_shape: tuple) -> None:
    """Refuse, before the model is built, a cell whose training activations alone cannot fit this machine: a lower
    bound (each block keeps at least its input and output, fp32, for the backward pass of every batch) that the
    spec's own check (weights, gradients, AdamW state) cannot make without the data set's sequence length."""
    tokens = input_shape[-2] * input_shape[-1] if len(input_shape) == 3 else input_shape[0]  # images: pixels
    if len(input_shape) == 3 and cell.model.patch_size:
        tokens //= cell.model.patch_size ** 2
    need = 2 * 4 * cell.train.batch_size * tokens * cell.model.d_model * cell.model.n_layers
    check_memory(need, f"the activations of one batch of {cell.train.batch_size} ({tokens} tokens each)",
                 f" ({cell.model.n_layers} layers of d_model {cell.model.d_model})")


def join_process_group(device: str):
    """Under torchrun / srun (``WORLD_SIZE`` > 1) join the process group now, NCCL for a CUDA device, gloo
    otherwise (the Trainer reuses it), so that every rank knows its rank before anything is written; returns
    the ``DistInfo`` (one process: rank 0 of 1, nothing joined)."""
    return distributed.init_from_env(use_cuda=decide_device(device).startswith("cuda"))


def is_main() -> bool:
    """Whether this process writes files: rank 0 of the joined process group, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_cell(cell, cell_dir: Path, progress: bool = True, callbacks=(), label: str | None = None,
             allow_changes=()) -> dict:
    """Train ``cell`` into ``cell_dir`` (continuing from its train_state.pt when there is one), run its final
    evaluation, and return its table row (``cell_folder.read_summary``). A complete cell returns at once.

    ``allow_changes`` (``lr``, ``batch_size``) may differ from the saved training state on a resume; the
    trainer records the change.
    """
    cell_dir = Path(cell_dir)
    if cell_folder.is_complete(cell_dir):
        return cell_folder.read_summary(cell_dir)
    label = cell.name if label is None else label
    main = join_process_group(cell.train.device).is_main
    if main:  # its cell.json is there already: the run folder's prepare_dir writes every cell's before any trains
        cell_dir.mkdir(parents=True, exist_ok=True)
    data_spec = cell.data
    data = load_dataset(data_spec.dataset, data_spec.data_dir, data_spec.train_size, data_spec.test_size,
                        data_spec.download, data_spec.tiny_classes, data_spec.augment, seed=cell.train.seed)
    check_model_io(data, cell.model.d_input, cell.model.n_classes)
    check_activation_memory(cell, tuple(data.train[0][0].shape))
    save = functools.partial(save_with_cell, cell_json=cell.model_dump_json(),
                             input_shape=tuple(data.train[0][0].shape))
    store = cell_folder.CellStore(cell_dir, save)
    resume = store.has_state()
    # a resumed cell takes its weights from the training state; init_from only starts a fresh one
    model = build_cell_model(cell, init_from=None if resume else cell.init_from)
    train_set_eval = TrainSetEval(cell_dir, data.train, cell.eval.train_n, resume, is_main=main)
    bar = TqdmProgress(label, enabled=progress, train_set_row=train_set_eval.row)
    train_set_eval.bar = bar
    trackers = open_trackers(cell, cell_dir) if main else None  # TensorBoard / MLflow / W&B, on rank 0
    # train_set_eval first: the bar's line for an epoch shows the train-set accuracy measured for it
    trainer = Trainer(model, data.train, data.test, cell.train, store=store,
                      augment=data.augment, callbacks=[train_set_eval, bar, *callbacks, *filter(None, [trackers])])
    try:
        trainer.fit(resume=resume, allow_changes=allow_changes)
        train_set_eval.measure(trainer, trainer.epoch)  # the last epoch's row, if an interrupt cut it
        summary = finish_cell(cell, cell_dir, data.test, trainer.device, trainer.summary(), is_main=main,
                              progress=lambda stage, info: bar.on_final_eval(stage, info["done"], info["total"] or 0))
        if trackers is not None:
            trackers.finish(summary)
        return summary
    finally:
        bar.close()
        if trackers is not None:
            trackers.close()
