"""Trainer callbacks that show progress with tqdm (on stderr, so ``--json`` output stays clean)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


class TqdmProgress:
    """One bar per epoch over its batches, one per evaluation stage, and a line of metrics per epoch."""

    def __init__(self, label: str = "", enabled: bool = True):
        self.label, self.enabled = label, enabled
        self._bar: tqdm | None = None

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _open(self, total: int, desc: str) -> None:
        self._close()
        self._bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=not self.enabled,
                         dynamic_ncols=True)

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._close()

    def on_batch_end(self, trainer, epoch: int, batch_idx: int, n_batches: int, stats: dict) -> None:
        if self._bar is None or self._bar.total != n_batches or not self._bar.desc.endswith("train"):
            self._open(n_batches, f"{self.label} epoch {epoch} train")
        self._bar.n = batch_idx + 1
        loss = stats.get("loss") if isinstance(stats, dict) else None
        if loss is not None:
            self._bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        self._bar.refresh()

    def on_eval(self, trainer, epoch: int, stage: str, done: int, total: int) -> None:
        desc = f"{self.label} epoch {epoch} {stage}"
        if self._bar is None or self._bar.desc != desc:
            self._open(total, desc)
        self._bar.n = done
        self._bar.refresh()

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None:
        self._close()
        if not self.enabled:
            return
        shown = [f"{k}={100 * v:.1f}%" for k, v in metrics.items() if k.endswith("acc") and isinstance(v, float)]
        tqdm.write(f"{self.label} epoch {epoch}: " + " ".join(shown), file=sys.stderr)
