"""Train-set clean and PGD accuracy after every epoch, for the train curves of the plots.

The trainer only reports what it sees while it trains: clean accuracy under standard training,
adversarial accuracy under AT, each measured on the fly while the weights change. The paper's
curves compare train and test accuracy of the same model under the same attack, so after every
epoch this evaluates the first ``eval.train_n`` training examples (un-augmented) exactly as the
trainer evaluates the test set: clean, and PGD with the run's eps, alpha and ``eval_pgd_steps``.

The rows go to ``train_eval.jsonl`` (``{"epoch", "clean_acc", "pgd_acc", "n"}``). It runs through
``evaluate()`` with the trainer's rule and seed (``eval_seed(seed, epoch)``); the attack leaves the
model as it was, and the trainer saves its state (RNG included) before this runs, so a run trains the
same with or without it, and a resumed run fills a row an interrupt cut. Under torchrun every rank
evaluates its shard (the evaluation is collective) and rank 0 writes the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from advssm.adv_train.attacks import build
from advssm.adv_train.evaluation import evaluate
from advssm.adv_train.trainer import eval_seed

from ..files import write_text
from .cell_folder import TRAIN_EVAL_FILE, read_train_eval


class TrainSetEval:
    """A trainer callback measuring the train-set accuracy after each epoch.

    Args:
        cell_dir: the cell folder (train_eval.jsonl goes there).
        train_set: the cell's training set (the first ``n`` examples are evaluated).
        n: examples to evaluate; 0 turns the callback off.
        resume: keep the rows of an earlier, interrupted run of this cell (else start afresh).
        bar: a ``TqdmProgress`` to show the evaluation on (or None).
    """

    all_ranks = True  # the trainer calls it on every rank: evaluate() is collective under torchrun

    def __init__(self, cell_dir: Path, train_set, n: int, resume: bool, bar=None, is_main: bool = True):
        self.path = Path(cell_dir) / TRAIN_EVAL_FILE
        self.train_set, self.n, self.bar, self.is_main = train_set, min(n, len(train_set)), bar, is_main
        self.rows = {row["epoch"]: row for row in read_train_eval(cell_dir)} if resume else {}
        if not resume and self.path.exists() and is_main:
            self.path.unlink()

    def row(self, epoch: int) -> dict | None:
        return self.rows.get(epoch)

    def measure(self, trainer, epoch: int) -> None:
        """Evaluate the model as it is now (after ``epoch``) unless that row exists already."""
        if self.n == 0 or epoch < 1 or epoch in self.rows:
            return
        cfg = trainer.config
        # seeded as the trainer's test-set evaluation: the attack draws nothing from the global RNG it uses
        attack = build("pgd", trainer.model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.eval_pgd_steps)  # as the trainer's
        hook = None
        if self.bar is not None and self.is_main:
            hook = lambda info: self.bar.on_train_eval(epoch, info["done"], info["total"] or self.n)  # noqa: E731
        result = evaluate(trainer.model, self.train_set, {"pgd": attack}, n_examples=self.n,
                          batch_size=cfg.batch_size, device=trainer.device, progress=hook, check_masking=False,
                          seed=eval_seed(cfg.seed, epoch))
        self.rows[epoch] = {"epoch": epoch, "clean_acc": result.clean_acc, "pgd_acc": result.robust_acc["pgd"],
                            "n": self.n}
        self._write(upto=epoch)

    def _write(self, upto: int) -> None:
        if not self.is_main:
            return
        lines = "".join(json.dumps(self.rows[e]) + "\n" for e in sorted(self.rows) if e <= upto)
        write_text(self.path, lines)  # an interrupt leaves the old or the new file

    # trainer hooks ------------------------------------------------------------------------------------

    def on_epoch_start(self, trainer, epoch: int) -> None:
        # a resumed run starts with the weights of epoch - 1: fill its row if an interrupt cut it
        self.measure(trainer, epoch - 1)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        self.measure(trainer, epoch)
