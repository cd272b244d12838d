"""Trainer callbacks that show progress with tqdm (on stderr, so ``--json`` output stays clean)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class TqdmProgress:
    """One bar per epoch over its batches, one per evaluation stage, and a line of metrics per epoch.

    Bars are drawn only on a terminal: redrawn into a log file (CI, a cluster job) they would fill it with
    carriage returns. The line per epoch is written either way, unless progress is off altogether.
    """

    def __init__(self, label: str = "", enabled: bool = True, train_set_row=None, bars: bool | None = None):
        # train_set_row(epoch) -> the TrainSetEval row of that epoch (or None), shown in the epoch's line
        self.label, self.enabled, self.train_set_row = label, enabled, train_set_row
        self.bars = enabled and (sys.stderr.isatty() if bars is None else bars)
        self._bar: tqdm | None = None
        self._stage: tuple | None = None

    def close(self) -> None:
        """Close the open bar (a bar left open pushes the next cell's bars down a line)."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None

    def _advance(self, stage: tuple, total: int, done: int, desc: str) -> None:
        if not self.bars:
            return
        if self._stage != stage:
            self.close()
            self._bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
            self._stage = stage
        self._bar.n = done
        self._bar.refresh()

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.close()

    def on_batch_end(self, trainer, epoch: int, batch_idx: int, n_batches: int, stats: dict) -> None:
        self._advance((epoch, "train"), n_batches, batch_idx + 1, f"{self.label} epoch {epoch} train")
        loss = stats.get("loss") if isinstance(stats, dict) else None
        if self._bar is not None and loss is not None:
            self._bar.set_postfix(loss=f"{float(loss):.3f}")

    def on_eval(self, trainer, epoch: int, stage: str, done: int, total: int) -> None:
        self._advance((epoch, stage), total, done, f"{self.label} epoch {epoch} eval {stage}")

    def on_stage(self, stage: str, done: int, total: int) -> None:
        """A stage of a standalone evaluation (``advssm eval``): clean, then each attack."""
        self._advance(("stage", stage), total, done, f"{self.label} {stage}")

    def on_final_eval(self, checkpoint: str, done: int, total: int) -> None:
        """The AutoAttack of the best / last checkpoint after training."""
        self._advance(("final", checkpoint), total, done, f"{self.label} AutoAttack of {checkpoint}.safetensors")

    def on_train_eval(self, epoch: int, done: int, total: int) -> None:
        """The train-set accuracy after an epoch (``train_eval.TrainSetEval``)."""
        self._advance((epoch, "train-set"), total, done, f"{self.label} epoch {epoch} eval train set")

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        self.close()
        if self.enabled:
            total = getattr(getattr(trainer, "config", None), "epochs", "?")
            row = self.train_set_row(epoch) if self.train_set_row else None
            tqdm.write(f"{self.label} epoch {epoch}/{total}: {epoch_line(metrics, row, evaluated_on(trainer))}",
                       file=sys.stderr)


def _pct(value) -> str:
    return f"{100 * value:.1f}%"


def evaluated_on(trainer) -> dict:
    """How many test examples the trainer's per-epoch numbers are measured on: ``{"test": n, "aa": n}``."""
    config, test_set = getattr(trainer, "config", None), getattr(trainer, "test_set", None)
    if config is None or test_set is None:
        return {}
    n = len(test_set) if config.eval_n is None else min(config.eval_n, len(test_set))
    return {"test": n, "aa": min(config.aa_n, len(test_set))}


def epoch_line(metrics: dict, train_set: dict | None = None, on: dict | None = None) -> str:
    """``loss 0.412 | while training clean 91.2% | train set (first 256) clean 93.0% PGD 41.0% | test (first 450)
    clean 92.4% PGD 40.1%``: each number says on which examples (``on``: ``evaluated_on``'s counts), as the final
    evaluation's table is measured on other ones (its first eval.aa_n)."""
    on = on or {}
    parts = [f"loss {metrics['train_loss']:.3f}"] if metrics.get("train_loss") is not None else []
    during = [f"{name} {_pct(metrics[key])}" for key, name in (("train_clean_acc", "clean"), ("train_adv_acc", "adv"))
              if metrics.get(key) is not None]
    if during:
        parts.append("while training " + " ".join(during))
    if train_set:
        first = f" (first {train_set['n']})" if train_set.get("n") else ""
        parts.append(f"train set{first} clean {_pct(train_set['clean_acc'])} PGD {_pct(train_set['pgd_acc'])}")
    test = [f"{name} {_pct(metrics[key])}" for key, name in (("clean_acc", "clean"), ("pgd_acc", "PGD"))
            if metrics.get(key) is not None]
    first = {key: f" (first {n})" for key, n in on.items()}
    if test:
        parts.append(f"test{first.get('test', '')} " + " ".join(test))
    if metrics.get("aa_acc") is not None:
        parts.append(f"test AA{first.get('aa', '')} {_pct(metrics['aa_acc'])}")
    return " | ".join(parts)
