"""Trainer callbacks that show progress with tqdm (on stderr, so ``--json`` output stays clean)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class TqdmProgress:
    """One bar per epoch over its batches, one per evaluation stage, and a line of metrics per epoch."""

    def __init__(self, label: str = "", enabled: bool = True):
        self.label, self.enabled = label, enabled
        self._bar: tqdm | None = None
        self._stage: tuple | None = None

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None

    def _advance(self, stage: tuple, total: int, done: int, desc: str) -> None:
        if not self.enabled:
            return
        if self._stage != stage:
            self._close()
            self._bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
            self._stage = stage
        self._bar.n = done
        self._bar.refresh()

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._close()

    def on_batch_end(self, trainer, epoch: int, batch_idx: int, n_batches: int, stats: dict) -> None:
        self._advance((epoch, "train"), n_batches, batch_idx + 1, f"{self.label} epoch {epoch} train")
        loss = stats.get("loss") if isinstance(stats, dict) else None
        if self._bar is not None and loss is not None:
            self._bar.set_postfix(loss=f"{float(loss):.3f}")

    def on_eval(self, trainer, epoch: int, stage: str, done: int, total: int) -> None:
        self._advance((epoch, stage), total, done, f"{self.label} epoch {epoch} eval {stage}")

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        self._close()
        if self.enabled:
            shown = [f"{k}={100 * v:.1f}%" for k, v in metrics.items() if k.endswith("acc") and isinstance(v, float)]
            tqdm.write(f"{self.label} epoch {epoch}: " + " ".join(shown), file=sys.stderr)
