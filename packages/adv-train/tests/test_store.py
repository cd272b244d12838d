"""The Trainer writes through a RunStore and knows no file name: a store kept in memory trains, selects Best and
resumes exactly as the folder does, and FolderStore keeps the file names runs have always had."""
import copy
import json
import os

import pytest
import torch
from advssm.adv_train.config import TrainConfig
from advssm.adv_train.store import FolderStore, RunStore
from advssm.adv_train.trainer import Trainer
from torch import nn
from torch.utils.data import TensorDataset


def task(n):
    """Two classes in [0, 1]^8, the label in feature 0."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(2, (n,), generator=g)
    x = (0.5 + 0.2 * (2 * y - 1).float()[:, None] + 0.1 * torch.randn(n, 8, generator=g)).clamp(0, 1)
    return TensorDataset(x[: n * 3 // 4], y[: n * 3 // 4]), TensorDataset(x[n * 3 // 4:], y[n * 3 // 4:])


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def config(**kw):
    return TrainConfig(**{**dict(epochs=3, batch_size=32, lr=1e-2, eps=0.1, alpha=0.03, attack_steps=3,
                                 eval_pgd_steps=3, aa_every=0), **kw})


def strip(history):
    return [{k: v for k, v in m.items() if k not in ("train_time", "epoch_time")} for m in history]


class Quiet:
    pass


class MemoryStore:
    """Every file of a run as a Python object: no path anywhere."""

    def __init__(self):
        self.checkpoints, self.state, self.metrics, self.environment, self.summary = {}, None, [], None, None

    def __str__(self):
        return "memory"

    def prepare(self):
        pass

    def save_checkpoint(self, kind, model, metadata):
        self.checkpoints[kind] = ({k: v.clone() for k, v in model.state_dict().items()}, metadata["epoch"])

    def has_state(self):
        return self.state is not None

    def save_state(self, state):
        self.state = copy.deepcopy(state)

    def load_state(self):
        return copy.deepcopy(self.state)

    def write_metrics(self, rows):
        self.metrics = list(rows)

    def append_metrics(self, row):
        self.metrics.append(row)

    def read_environment(self):
        return self.environment

    def write_environment(self, record):
        self.environment = record

    def write_summary(self, summary):
        self.summary = summary


class StopAfter:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_store_in_memory_trains_and_resumes_as_the_folder_does(tmp_path, monkeypatch):
    train, test = task(160)
    cfg = config(method="pgd-at", eval_n=30)
    folder = Trainer(mlp(), train, test, cfg, out_dir=tmp_path / "folder", callbacks=[Quiet()])
    expected = folder.fit()
    monkeypatch.chdir(tmp_path / "folder")  # a store that wrote a file would write it here
    memory = MemoryStore()
    assert isinstance(memory, RunStore)
    with pytest.raises(KeyboardInterrupt):
        Trainer(mlp(), train, test, cfg, store=memory, callbacks=[StopAfter(1)]).fit()
    assert [m["epoch"] for m in memory.metrics] == [1] and memory.summary is None
    resumed = Trainer(mlp(seed=5), train, test, cfg, store=memory, callbacks=[Quiet()])
    assert resumed.out_dir is None
    assert resumed.fit(resume=True) == expected == memory.summary
    assert strip(memory.metrics) == strip(folder.history)
    assert memory.checkpoints["last"][1] == 3 and memory.checkpoints["best"][1] == expected["best"]["epoch"]
    assert [s["from_epoch"] for s in memory.environment["starts"]] == [0, 1]
    assert sorted(os.listdir(tmp_path / "folder")) == ["best.pt", "best.pt.json", "environment.json", "last.pt",
                                                      "last.pt.json", "metrics.jsonl", "summary.json", "train_state.pt"]


def test_folder_store_names_and_the_constructor_rules(tmp_path):
    def saver(path, model, metadata):
        torch.save(model.state_dict(), path)

    saver.suffix = ".ckpt"
    assert FolderStore(tmp_path).checkpoint_path("best") == tmp_path / "best.pt"
    assert FolderStore(tmp_path, saver).checkpoint_path("last") == tmp_path / "last.ckpt"
    assert FolderStore(tmp_path, saver, suffix=".bin").checkpoint_path("last") == tmp_path / "last.bin"
    with pytest.raises(ValueError, match="one of last, best"):
        FolderStore(tmp_path).checkpoint_path("epoch3")
    train, test = task(40)
    with pytest.raises(ValueError, match="either store= or out_dir="):
        Trainer(mlp(), train, test, config(), out_dir=tmp_path, store=FolderStore(tmp_path))
    store = FolderStore(tmp_path / "run")
    store.write_summary({"best": {"epoch": 1}})
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"best": {"epoch": 1}}
    assert not store.has_state() and store.read_environment() is None
