"""The one training loop: epochs of method steps, robust evaluation, metrics, checkpoints, resume, DDP.

Every random choice comes from the run's seed: the data order of epoch e from a generator seeded by
(seed, e), augmentation likewise, the methods' noise from a persistent generator saved with the training
state, dropout and attacks from torch's global RNG (also saved). So a run resumed after any epoch ends
exactly where the uninterrupted run ends (on the CPU).
"""
from __future__ import annotations

import functools
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from . import distributed as D
from .config import TrainConfig
from .methods import NonFiniteLossError, StepContext, get_method

__all__ = ["Trainer", "NonFiniteLossError", "save_state_dict", "robust_overfitting_summary"]

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename, so readers never see half a file.

    ``write`` creates the temporary file itself, so it gets the permissions any new file gets (mkstemp's
    would be owner-only); its data is flushed to disk before the rename makes it visible.
    """
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state_dict(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None) -> None:
    """Default model saver: the plain ``state_dict`` via ``torch.save``, atomically.

    Load it with ``model.load_state_dict(torch.load(path, weights_only=True))``. ``metadata`` goes to a
    JSON file beside it (``<path>.json``).
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    meta = json.dumps(metadata or {}, sort_keys=True)
    _atomic_write(path.with_name(path.name + ".json"), lambda tmp: Path(tmp).write_text(meta))


save_state_dict.suffix = ".pt"


def robust_overfitting_summary(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Best (highest test PGD accuracy, earliest on ties), last, and Diff = best - last, as in the paper."""
    if not history:
        raise ValueError("robust_overfitting_summary needs at least one epoch of metrics")
    keys = ("clean_acc", "pgd_acc", "aa_acc")
    best = max(history, key=lambda m: (m["pgd_acc"], -m["epoch"]))
    pick = lambda m: {"epoch": m["epoch"], **{k: m.get(k) for k in keys}}  # noqa: E731
    diff = {k: None if best.get(k) is None or history[-1].get(k) is None else best[k] - history[-1][k]
            for k in keys}
    return {"best": pick(best), "last": pick(history[-1]), "diff": diff}


def _resolve_device(name: str, info: D.DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device("cuda", info.local_rank) if info.active and name == "cuda" else torch.device(name)
    return torch.device("cpu")


class _StderrProgress:
    """The default callback: one line per epoch on stderr."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                         if v is not None and k != "epoch")
        print(f"epoch {epoch}/{trainer.config.epochs} {shown}", file=sys.stderr, flush=True)


def optimizer_groups(params) -> list[dict[str, Any]]:
    """Optimiser parameter groups honouring per-parameter ``_optim`` tags.

    A parameter may carry ``_optim``, a dict of optimiser settings that override the run's for it
    (the S4 convention: SSM parameters with their own learning rate and no weight decay; Mamba's
    A and D without weight decay). Untagged parameters form the first group; each distinct tag gets
    one group, in order of first appearance, so the layout (and a saved optimiser state) is stable.
    """
    groups: dict[tuple, dict[str, Any]] = {(): {"params": []}}
    for p in params:
        tag = dict(getattr(p, "_optim", None) or {})
        key = tuple(sorted(tag.items()))
        groups.setdefault(key, {"params": [], **tag})["params"].append(p)
    return [g for g in groups.values() if g["params"]]


class Trainer:
    """Trains ``model`` with the method ``config.method`` and evaluates it every epoch.

    Args:
        model: any ``nn.Module`` mapping inputs in [0, 1] to logits.
        train_set, test_set: datasets yielding ``(x float in [0, 1], y int)``.
        config: the run's ``TrainConfig``.
        out_dir: where ``metrics.jsonl``, ``last``/``best`` checkpoints, ``train_state.pt`` and
            ``summary.json`` go (None: nothing is written and resume is impossible).
        save_model: ``save_model(path, model, metadata)``; its ``suffix`` attribute names the file
            extension (default ``save_state_dict``, ".pt").
        augment: optional ``augment(x_batch, generator) -> x_batch`` applied to training batches.
        callbacks: objects with any of ``on_epoch_start(trainer, epoch)``,
            ``on_batch_end(trainer, epoch, batch_idx, n_batches, stats)``,
            ``on_eval(trainer, epoch, stage, done, total)``, ``on_epoch_end(trainer, epoch, metrics)``.
            With none, one line per epoch goes to stderr.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes its share of every global batch, gradients
    are averaged weighted by shard size, counts are summed across ranks and rank 0 alone writes files.
    """

    def __init__(self, model: nn.Module, train_set: Dataset, test_set: Dataset, config: TrainConfig,
                 out_dir: str | os.PathLike | None = None, save_model: Callable | None = None,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                 callbacks: Iterable[Any] = ()) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Trainer needs an nn.Module model, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer needs a TrainConfig, got {type(config).__name__}; "
                            "build one with TrainConfig(...)")
        for name, data in (("train_set", train_set), ("test_set", test_set)):
            if not hasattr(data, "__getitem__") or not hasattr(data, "__len__") or len(data) == 0:
                raise ValueError(f"Trainer.{name} must be a non-empty map-style Dataset (with __len__ and __getitem__)")
        config.validate()
        self.config, self.train_set, self.test_set, self.augment = config, train_set, test_set, augment
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.save_model = save_model or save_state_dict
        self.suffix = getattr(self.save_model, "suffix", ".pt")
        self.callbacks = list(callbacks) or [_StderrProgress()]
        self.dist = D.init_from_env(use_cuda=config.device.startswith("cuda") or
                                    (config.device == "auto" and torch.cuda.is_available()))
        self.device = _resolve_device(config.device, self.dist)
        self.model = model.to(self.device)
        self.method = get_method(config.method, config)
        self.optimizers = {k: torch.optim.AdamW(optimizer_groups(ps), lr=config.lr, weight_decay=config.weight_decay)
                           for k, ps in self.method.param_groups(model).items() if ps}
        self.schedulers = {k: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
                           for k, opt in self.optimizers.items() if config.scheduler == "cosine"}
        self.generator = torch.Generator().manual_seed(self._seed(1))
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # epochs completed
        if self.out_dir is not None and self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def _seed(self, stream: int, epoch: int = 0) -> int:
        """A distinct seed for each (stream, epoch, rank), all derived from the run's one seed."""
        return (self.config.seed * 1_000_003 + stream * 10_007 + epoch) * 101 + self.dist.rank

    def _emit(self, hook: str, *args: Any) -> None:
        if self.dist.is_main:
            for cb in self.callbacks:
                fn = getattr(cb, hook, None)
                if fn is not None:
                    fn(self, *args)

    def _path(self, name: str) -> Path:
        return self.out_dir / name

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs (continuing from ``train_state.pt`` when ``resume``).

        Returns:
            the robust-overfitting summary ``{"best", "last", "diff"}`` (also written to summary.json).

        Raises:
            NonFiniteLossError: a loss became NaN/inf; the files of the last good epoch stay as they were.
        """
        cfg = self.config
        if resume:
            self._load_state()
        else:
            torch.manual_seed(self._seed(0))
            D.broadcast_module(self.model, self.dist)
        if self.out_dir is not None and self.dist.is_main:
            lines = "".join(json.dumps(m) + "\n" for m in self.history)
            _atomic_write(self._path(METRICS_FILE), lambda tmp: Path(tmp).write_text(lines))
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            self._emit("on_epoch_start", epoch)
            start = time.perf_counter()
            train = self._train_epoch(epoch)
            train_time = time.perf_counter() - start
            run_aa = cfg.aa_every > 0 and (epoch % cfg.aa_every == 0 or epoch == cfg.epochs)
            test = self._evaluate(epoch, run_aa)
            metrics = {"epoch": epoch, "lr": self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"],
                       **train, **test, "train_time": train_time, "epoch_time": time.perf_counter() - start}
            for sched in self.schedulers.values():
                sched.step()
            self.epoch = epoch
            self.history.append(metrics)
            self._save_epoch(metrics)
            self._emit("on_epoch_end", epoch, metrics)
        summary = robust_overfitting_summary(self.history)
        if self.out_dir is not None and self.dist.is_main:
            text = json.dumps(summary, indent=2)
            _atomic_write(self._path(SUMMARY_FILE), lambda tmp: Path(tmp).write_text(text))
        return summary

    def _batches(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """This rank's share of each global batch of epoch ``epoch`` (order fixed by (seed, epoch)), and
        the global batch sizes."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_set), generator=g)
        # a global batch smaller than the world would leave a rank without data: drop it
        batches = [b for b in order.split(self.config.batch_size) if len(b) >= self.dist.world_size]
        return [D.shard(b, self.dist).tolist() for b in batches], [len(b) for b in batches]

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        batches, global_sizes = self._batches(epoch)
        loader = DataLoader(self.train_set, batch_sampler=batches, num_workers=self.config.num_workers)
        aug_gen = torch.Generator().manual_seed(self._seed(2, epoch))
        ctx = StepContext(self.model, self.optimizers, self.config, self.generator, epoch=epoch)
        totals = {"loss": 0.0, "n": 0.0, "clean_correct": 0.0, "adv_correct": 0.0}
        seen: set[str] = set()
        self.model.train()
        for batch_idx, (x, y) in enumerate(loader):
            x, y = x.to(self.device, torch.float32), y.to(self.device, torch.long)
            if self.augment is not None:
                x = self.augment(x, aug_gen)
            ctx.batch_idx = batch_idx
            ctx.sync_grads = functools.partial(D.average_grads, local_n=len(y), global_n=global_sizes[batch_idx],
                                               info=self.dist)
            stats = self.method.train_step(ctx, x, y)
            if not math.isfinite(stats["loss"]):  # a method that stepped without ctx.step
                raise NonFiniteLossError(stats["loss"], epoch, batch_idx)
            totals["loss"] += stats["loss"] * stats["n"]
            for key in ("n", "clean_correct", "adv_correct"):
                totals[key] += stats.get(key, 0.0)
            seen.update(stats)
            self._emit("on_batch_end", epoch, batch_idx, len(batches), stats)
        totals = D.all_reduce_sums(totals, self.dist, self.device)
        n = max(totals["n"], 1.0)
        return {"train_loss": totals["loss"] / n,
                "train_clean_acc": totals["clean_correct"] / n if "clean_correct" in seen else None,
                "train_adv_acc": totals["adv_correct"] / n if "adv_correct" in seen else None}

    # -- evaluation -----------------------------------------------------------------------------------

    def _attacks(self, epoch: int, run_aa: bool) -> dict[str, Any]:
        from .attacks import PGD  # imported on use: the loop itself needs no attack

        cfg, seed = self.config, self._seed(3, epoch)
        attacks = {"pgd": PGD(self.model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.eval_pgd_steps,
                              random_start=True, seed=seed)}
        if run_aa:
            from .attacks import AutoAttack

            attacks["aa"] = AutoAttack(self.model, norm="Linf", eps=cfg.eps, version=cfg.aa_version,
                                       attacks=cfg.aa_attacks, seed=seed)
        return attacks

    def _evaluate(self, epoch: int, run_aa: bool) -> dict[str, Any]:
        """Clean and PGD accuracy on the (first eval_n) test examples, AutoAttack on the first aa_n."""
        cfg = self.config
        n_eval = len(self.test_set) if cfg.eval_n is None else min(cfg.eval_n, len(self.test_set))
        attacks = self._attacks(epoch, run_aa)
        self.model.eval()
        acc = self._accuracies(epoch, "pgd", n_eval, {"clean": None, "pgd": attacks["pgd"]})
        if run_aa:
            acc |= self._accuracies(epoch, "aa", min(cfg.aa_n, len(self.test_set)), {"aa": attacks["aa"]})
        self.model.train()
        return {"clean_acc": acc["clean"], "pgd_acc": acc["pgd"], "aa_acc": acc.get("aa")}

    def _accuracies(self, epoch: int, stage: str, n: int, attacks: dict[str, Any]) -> dict[str, float]:
        """Accuracy under each attack (None = clean) on the first ``n`` test examples, sharded over ranks."""
        indices = D.shard(torch.arange(n), self.dist).tolist()
        loader = DataLoader(self.test_set, batch_size=self.config.batch_size, num_workers=self.config.num_workers,
                            sampler=indices)
        counts, done = dict.fromkeys(attacks, 0.0), 0
        for x, y in loader:
            x, y = x.to(self.device, torch.float32), y.to(self.device, torch.long)
            for name, attack in attacks.items():
                x_in = x if attack is None else attack(x, y)
                with torch.no_grad():
                    counts[name] += float((self.model(x_in).argmax(dim=1) == y).sum())
            done += len(y)
            self._emit("on_eval", epoch, stage, done, len(indices))
        return {k: v / n for k, v in D.all_reduce_sums(counts, self.dist, self.device).items()}

    # -- checkpoints ----------------------------------------------------------------------------------

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNG states and the method's state."""
        return {"torch_rng": torch.get_rng_state(), "generator": self.generator.get_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "method": self.method.state_dict()}

    def _save_epoch(self, metrics: dict[str, Any]) -> None:
        """Write last/best weights, then the training state, then the metrics line (rank 0 only)."""
        ranks = D.gather_objects(self._rank_state(), self.dist)
        if self.out_dir is None or not self.dist.is_main:
            return
        meta = {"epoch": metrics["epoch"], "metrics": metrics, "train_config": self.config.to_dict()}
        self.save_model(self._path("last" + self.suffix), self.model, meta)
        if robust_overfitting_summary(self.history)["best"]["epoch"] == metrics["epoch"]:
            self.save_model(self._path("best" + self.suffix), self.model, meta)
        state = {"epoch": self.epoch, "history": self.history, "config": self.config.to_dict(),
                 "world_size": self.dist.world_size, "ranks": ranks,
                 "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                 "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
                 "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}
        _atomic_write(self._path(STATE_FILE), lambda tmp: torch.save(state, tmp))
        with open(self._path(METRICS_FILE), "a") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()

    def _load_state(self) -> None:
        if self.out_dir is None:
            raise ValueError("fit(resume=True) needs the out_dir of the run to resume")
        path = self._path(STATE_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist; run fit() without resume first")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["world_size"] != self.dist.world_size:
            raise ValueError(f"cannot resume: {path} was written by {state['world_size']} processes, this run "
                             f"has {self.dist.world_size}; resume with the same number of processes")
        changed = sorted(k for k, v in self.config.to_dict().items()
                         if state["config"].get(k) != v and k not in ("device", "num_workers"))
        if changed:
            raise ValueError(f"cannot resume: TrainConfig differs from the saved run in {', '.join(changed)}")
        self.model.load_state_dict(state["model"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        mine = state["ranks"][self.dist.rank]
        torch.set_rng_state(mine["torch_rng"])
        if mine["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda_rng"])
        self.generator.set_state(mine["generator"])
        self.method.load_state_dict(mine["method"])
        self.epoch, self.history = state["epoch"], list(state["history"])
