"""The one training loop: epochs of method steps, robust evaluation, metrics, checkpoints, resume, DDP.

Every random choice comes from the run's seed: the data order of epoch e from a generator seeded by
(seed, e), augmentation likewise, the methods' noise from a persistent generator saved with the training
state, dropout and attacks from torch's global RNG (also saved). So a run resumed after any epoch ends
exactly where the uninterrupted run ends, on the same torch version, device and number of CPU threads
(floating-point reductions are split by thread count: 1 and 2 threads give different losses from the first
epoch). ``environment.json`` records them for each start, and a resume that differs warns, naming both.

Evaluation goes through ``evaluate()`` (one rule for "robust": clean-correct and correct under the
attack), with the attacks re-seeded per batch from ``eval_seed(seed, epoch)``, so re-evaluating a saved
checkpoint with that seed on the same examples gives the epoch's numbers again.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import distributed as D
from .atomic import remove_stale_temps
from .attacks import build
from .config import TrainConfig, decide_device, decide_select_by
from .evaluation import evaluate
from .methods import NonFiniteLossError, StepContext, get_method
from .precision import autocast_forward, grad_scaler
from .store import FolderStore, RunStore, save_state_dict

__all__ = ["Trainer", "NonFiniteLossError", "save_state_dict", "robust_overfitting_summary", "eval_seed",
           "ResumeWarning", "remove_stale_temps"]

SELECT_KEYS = {"pgd": "pgd_acc", "clean": "clean_acc"}
# resuming with these changed continues from the last good epoch under the new value (after a NaN stop)
RESUMABLE_CHANGES = ("lr", "batch_size")
NEAR_CHANCE = 1.5  # a selected epoch's clean accuracy below this many times chance is flagged


class ResumeWarning(UserWarning):
    """A resume that will not be bitwise equal to an uninterrupted run (other threads, torch, device, lr)."""


def eval_seed(seed: int, epoch: int) -> int:
    """The seed of the evaluation after ``epoch`` of a run seeded ``seed`` (the same on every rank)."""
    return (seed * 1_000_003 + 3 * 10_007 + epoch) * 101


def diff(best: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Diff = Best - Last for each test accuracy (None where either is missing): the paper's robust overfitting."""
    keys = ("clean_acc", "pgd_acc", "aa_acc")
    return {k: None if best.get(k) is None or last.get(k) is None else best[k] - last[k] for k in keys}


def robust_overfitting_summary(history: Sequence[dict[str, Any]], select_by: str = "pgd", select_on: str = "test",
                               chance: float | None = None) -> dict[str, Any]:
    """Best, Last and Diff = Best - Last, as in the paper's tables.

    Best is the epoch with the highest ``select_by`` accuracy ("pgd" or "clean") on ``select_on`` ("test",
    the paper's choice, or "val", the held-out slice of the training set; then Best also lists the val
    accuracies beside the test ones), earliest on ties. With ``chance`` (1 / classes), a Best whose clean
    test accuracy is below 1.5x chance is flagged under ``warnings``.
    """
    if not history:
        raise ValueError("robust_overfitting_summary needs at least one epoch of metrics")
    if select_by not in SELECT_KEYS or select_on not in ("test", "val"):
        raise ValueError(f"select_by must be one of {', '.join(SELECT_KEYS)} and select_on 'test' or 'val', "
                         f"got {select_by!r}, {select_on!r}")
    metric = ("val_" if select_on == "val" else "") + SELECT_KEYS[select_by]
    best = max(history, key=lambda m: (m[metric], -m["epoch"]))
    keys = ("clean_acc", "pgd_acc", "aa_acc") + (("val_clean_acc", "val_pgd_acc") if select_on == "val" else ())
    pick = lambda m: {"epoch": m["epoch"], **{k: m.get(k) for k in keys}}  # noqa: E731
    summary = {"best": pick(best), "last": pick(history[-1]), "diff": diff(best, history[-1]),
               "selection": {"on": select_on, "by": select_by, "metric": metric, "epoch": best["epoch"]}}
    if chance is not None and best["clean_acc"] < NEAR_CHANCE * chance:
        summary["warnings"] = [f"the selected epoch {best['epoch']} (highest {metric}) has clean accuracy "
                               f"{100 * best['clean_acc']:.1f}%, near chance ({100 * chance:.1f}%): the model had "
                               "not learnt yet; select_by = \"clean\" or more epochs"]
    return summary


def _resolve_device(name: str, info: D.DistInfo) -> torch.device:
    """The device of ``name`` ("auto" decided already) on this rank."""
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
        out_dir: the folder of the run: shorthand for ``store=FolderStore(out_dir, save_model)``.
        save_model: ``save_model(path, model, metadata)`` for ``out_dir``'s checkpoints; its ``suffix``
            attribute names the file extension (default ``save_state_dict``, ".pt").
        store: where the run's files go (a ``store.RunStore``; ``FolderStore`` keeps them in a folder);
            None with no ``out_dir``: nothing is written and resume is impossible.
        augment: optional ``augment(x_batch, generator) -> x_batch`` applied to training batches.
        callbacks: objects with any of ``on_epoch_start(trainer, epoch)``,
            ``on_batch_end(trainer, epoch, batch_idx, n_batches, stats)``,
            ``on_eval(trainer, epoch, stage, done, total)``, ``on_epoch_end(trainer, epoch, metrics)``.
            With none, one line per epoch goes to stderr.

    With ``config.precision`` "bf16" or "fp16" every forward of the model during ``fit`` (training, evaluation,
    callbacks) runs under autocast and returns fp32 logits (``precision.autocast_forward``); fp16 also scales the
    loss (``torch.amp.GradScaler``, its state saved for resume).

    With ``config.select_on = "val"`` the last ``config.val_n`` training examples are held out: the model
    never trains on them, and Best is the epoch that does best on them (the test numbers of that epoch are
    reported beside). ``config.select_by`` ("pgd", "clean"; "auto" = clean for standard training, PGD for
    the adversarial methods) says by which accuracy.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes its share of every global batch, gradients
    are averaged weighted by shard size, evaluations are sharded by ``evaluate()``, and rank 0 alone writes
    files. Callbacks run on rank 0 only, except those with ``all_ranks = True`` (a callback that evaluates
    must run on every rank, as the evaluation is collective).
    """

    def __init__(self, model: nn.Module, train_set: Dataset, test_set: Dataset, config: TrainConfig,
                 out_dir: str | os.PathLike | None = None, save_model: Callable | None = None,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                 callbacks: Iterable[Any] = (), store: RunStore | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Trainer needs an nn.Module model, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer needs a TrainConfig, got {type(config).__name__}; "
                            "build one with TrainConfig(...)")
        for name, data in (("train_set", train_set), ("test_set", test_set)):
            if not hasattr(data, "__getitem__") or not hasattr(data, "__len__") or len(data) == 0:
                raise ValueError(f"Trainer.{name} must be a non-empty map-style Dataset (with __len__ and __getitem__)")
        config.validate()
        self.val_set = None
        if config.select_on == "val":
            if config.val_n >= len(train_set):
                raise ValueError(f"TrainConfig.val_n={config.val_n} holds out the whole training set "
                                 f"({len(train_set)} examples); lower it")
            cut = len(train_set) - config.val_n
            train_set, self.val_set = Subset(train_set, range(cut)), Subset(train_set, range(cut, len(train_set)))
        self.select_by = decide_select_by(config.select_by, config.method)
        self.config, self.train_set, self.test_set, self.augment = config, train_set, test_set, augment
        if store is not None and (out_dir is not None or save_model is not None):
            raise ValueError("Trainer takes either store= or out_dir= (with save_model=), not both")
        self.store = store if store is not None or out_dir is None else FolderStore(out_dir, save_model)
        # the run's folder, where the store is one (read by callbacks that write beside the run)
        self.out_dir = getattr(self.store, "path", None)
        self.callbacks = list(callbacks) or [_StderrProgress()]
        device = decide_device(config.device)
        self.dist = D.init_from_env(use_cuda=device.startswith("cuda"))
        self.device = _resolve_device(device, self.dist)
        self.scaler = grad_scaler(config.precision, self.device)  # checks the precision on this device too
        self.model = model.to(self.device)
        self.method = get_method(config.method, config)
        self.optimizers = {k: torch.optim.AdamW(optimizer_groups(ps), lr=config.lr, weight_decay=config.weight_decay)
                           for k, ps in self.method.param_groups(model).items() if ps}
        self.schedulers = {k: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
                           for k, opt in self.optimizers.items() if config.scheduler == "cosine"}
        self.generator = torch.Generator().manual_seed(self._seed(1))
        self.history: list[dict[str, Any]] = []
        self.changes: list[dict[str, Any]] = []  # settings changed on a resume, with the epoch they took effect
        self.n_classes: int | None = None  # the logits' width, seen at the first evaluation
        self.epoch = 0  # epochs completed
        if self.writes:
            self.store.prepare()

    def _seed(self, stream: int, epoch: int = 0) -> int:
        """A distinct seed for each (stream, epoch, rank), all derived from the run's one seed."""
        return (self.config.seed * 1_000_003 + stream * 10_007 + epoch) * 101 + self.dist.rank

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None and (self.dist.is_main or getattr(cb, "all_ranks", False)):
                fn(self, *args)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files: it has a store and is rank 0."""
        return self.store is not None and self.dist.is_main

    # -- the loop -------------------------------------------------------------------------------------

    def fit(self, resume: bool = False, allow_changes: Iterable[str] = ()) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs (continuing from the store's training state when ``resume``).

        Args:
            resume: continue the run saved in the store; its TrainConfig must equal this one, except for
                the fields in ``allow_changes`` (among ``lr``, ``batch_size``), which take effect from the next
                epoch and are recorded (the run is then no longer bitwise equal to an uninterrupted one).

        Returns:
            the robust-overfitting summary ``{"best", "last", "diff", "selection"}`` (also in summary.json).

        Raises:
            NonFiniteLossError: a loss became NaN/inf; the files of the last good epoch stay as they were.
        """
        cfg = self.config
        if resume:
            self._load_state(set(allow_changes))
        else:
            torch.manual_seed(self._seed(0))
            D.broadcast_module(self.model, self.dist)
        self._record_environment(resume)
        if self.writes:
            self.store.write_metrics(self.history)
        with autocast_forward(self.model, cfg.precision, self.device):  # every forward, callbacks' included
            self._fit_epochs()
        summary = self.summary()
        if self.writes:
            self.store.write_summary(summary)
        return summary

    def _fit_epochs(self) -> None:
        cfg = self.config
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

    def summary(self) -> dict[str, Any]:
        """Best / Last / Diff of the epochs so far, with how Best was selected and any settings changed."""
        chance = 1 / self.n_classes if self.n_classes else None
        summary = robust_overfitting_summary(self.history, self.select_by, self.config.select_on, chance)
        if self.changes:
            summary["changes"] = list(self.changes)
        return summary

    def environment(self) -> dict[str, Any]:
        """What bitwise reproducibility depends on: CPU threads, torch version, device, processes."""
        return {"threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(self.device),
                "world_size": self.dist.world_size}

    def _record_environment(self, resume: bool) -> None:
        """Append this start to the environment record; a resume in another environment warns, naming both values."""
        if not self.writes:
            return
        record = (self.store.read_environment() if resume else None) or {"starts": [], "changes": []}
        now = self.environment()
        if record["starts"]:
            before = record["starts"][-1]
            differ = [f"{k} {before.get(k)} -> {now[k]}" for k in now if k in before and before[k] != now[k]]
            if differ:
                warnings.warn(f"resuming {self.store} in another environment ({', '.join(differ)}): the run "
                              "continues, but is not bitwise equal to an uninterrupted run", ResumeWarning,
                              stacklevel=3)
        record["starts"].append({**now, "from_epoch": self.epoch, "time": datetime.now(timezone.utc).isoformat()})
        record["changes"] = list(self.changes)
        self.store.write_environment(record)

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
        ctx = StepContext(self.model, self.optimizers, self.config, self.generator, epoch=epoch, scaler=self.scaler)
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
        cfg, seed = self.config, eval_seed(self.config.seed, epoch)
        attacks = {"pgd": build("pgd", self.model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.eval_pgd_steps, seed=seed)}
        if run_aa:  # a custom list at the paper's 100 steps per attack
            attacks["aa"] = build("aa", self.model, eps=cfg.eps, aa_version=cfg.aa_version, aa_attacks=cfg.aa_attacks,
                                  seed=seed)
        return attacks

    def _evaluate(self, epoch: int, run_aa: bool) -> dict[str, Any]:
        """Clean and PGD accuracy on the (first eval_n) test examples and on the held-out val slice,
        AutoAttack on the first aa_n test examples; all through ``evaluate()`` seeded by ``eval_seed``."""
        cfg = self.config
        if self.n_classes is None:
            self.n_classes = self._logit_width()
        attacks = self._attacks(epoch, run_aa)
        acc = self._accuracies(epoch, "pgd", self.test_set, cfg.eval_n, {"pgd": attacks["pgd"]})
        out = {"clean_acc": acc.clean_acc, "pgd_acc": acc.robust_acc["pgd"], "aa_acc": None}
        if self.val_set is not None:
            val = self._accuracies(epoch, "val", self.val_set, None, {"pgd": attacks["pgd"]})
            out |= {"val_clean_acc": val.clean_acc, "val_pgd_acc": val.robust_acc["pgd"]}
        if run_aa:
            aa = self._accuracies(epoch, "aa", self.test_set, cfg.aa_n, {"aa": attacks["aa"]})
            out["aa_acc"] = aa.robust_acc["aa"]
        self.model.train()
        return out

    def _accuracies(self, epoch: int, stage: str, data: Dataset, n: int | None, attacks: dict[str, Any]):
        """``evaluate()`` of the first ``n`` examples of ``data`` (sharded over ranks by evaluate itself)."""
        def progress(info: dict) -> None:
            if info["stage"] != "clean" or stage != "pgd":  # one bar per stage: the attack's, with pgd's clean
                self._emit("on_eval", epoch, stage if stage != "pgd" else info["stage"], info["done"], info["total"])

        n = min(n, len(data)) if n is not None else None
        return evaluate(self.model, data, attacks, n_examples=n, batch_size=self.config.batch_size, device=self.device,
                        progress=progress, check_masking=False, seed=eval_seed(self.config.seed, epoch))

    def _logit_width(self) -> int | None:
        """The number of classes the model predicts (for the near-chance check), from one test example."""
        x = self.test_set[0][0]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(torch.as_tensor(x)[None].to(self.device, torch.float32))
        finally:
            self.model.train(was_training)
        return int(out.shape[-1]) if out.dim() == 2 else None

    # -- checkpoints ----------------------------------------------------------------------------------

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNG states and the method's state."""
        return {"torch_rng": torch.get_rng_state(), "generator": self.generator.get_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "method": self.method.state_dict()}

    def _save_epoch(self, metrics: dict[str, Any]) -> None:
        """Write last/best weights, then the training state, then the metrics line (rank 0 only)."""
        ranks = D.gather_objects(self._rank_state(), self.dist)
        if not self.writes:
            return
        meta = {"epoch": metrics["epoch"], "metrics": metrics, "train_config": self.config.to_dict()}
        self.store.save_checkpoint("last", self.model, meta)
        if self.summary()["best"]["epoch"] == metrics["epoch"]:
            self.store.save_checkpoint("best", self.model, meta)
        state = {"epoch": self.epoch, "history": self.history, "config": self.config.to_dict(),
                 "changes": self.changes, "n_classes": self.n_classes,
                 "world_size": self.dist.world_size, "ranks": ranks,
                 "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                 "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
                 "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                 "scaler": None if self.scaler is None else self.scaler.state_dict()}
        self.store.save_state(state)
        self.store.append_metrics(metrics)

    def _load_state(self, allow_changes: set[str] = frozenset()) -> None:
        if self.store is None:
            raise ValueError("fit(resume=True) needs the out_dir (or store) of the run to resume")
        state = self.store.load_state()
        if state["world_size"] != self.dist.world_size:
            raise ValueError(f"cannot resume: the training state in {self.store} was written by "
                             f"{state['world_size']} processes, this run has {self.dist.world_size}; resume with "
                             "the same number of processes")
        defaults = TrainConfig().to_dict()  # a key added since the state was written holds its default there
        saved = {**defaults, **state["config"]}
        changed = sorted(k for k, v in self.config.to_dict().items()
                         if saved.get(k) != v and k not in ("device", "num_workers"))
        refused = [k for k in changed if k not in allow_changes or k not in RESUMABLE_CHANGES]
        if refused:
            raise ValueError(f"cannot resume: TrainConfig differs from the saved run in {', '.join(refused)}"
                             + (f" (only {', '.join(RESUMABLE_CHANGES)} may change on a resume)"
                                if set(refused) - set(RESUMABLE_CHANGES) else ""))
        self.model.load_state_dict(state["model"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        mine = state["ranks"][self.dist.rank]
        torch.set_rng_state(mine["torch_rng"])
        if mine["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda_rng"])
        self.generator.set_state(mine["generator"])
        self.method.load_state_dict(mine["method"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.changes, self.n_classes = list(state.get("changes", [])), state.get("n_classes")
        if changed:
            self._apply_changes(saved, changed)

    def _apply_changes(self, saved: dict[str, Any], changed: list[str]) -> None:
        """Continue at the new ``lr`` (every group and its schedule scaled by new / old) or batch size."""
        if "lr" in changed:
            scale = self.config.lr / saved["lr"]
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group["lr"] *= scale
                    if "initial_lr" in group:
                        group["initial_lr"] *= scale
            for sched in self.schedulers.values():
                sched.base_lrs = [lr * scale for lr in sched.base_lrs]
        change = {"from_epoch": self.epoch + 1, **{k: {"was": saved[k], "now": getattr(self.config, k)}
                                                   for k in changed}}
        self.changes.append(change)
        warnings.warn(f"resuming with {', '.join(f'{k} {saved[k]} -> {getattr(self.config, k)}' for k in changed)} "
                      f"from epoch {self.epoch + 1}: recorded in the run folder; the run is no longer bitwise equal "
                      "to one without the change", ResumeWarning, stacklevel=4)
