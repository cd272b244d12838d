"""Ctrl-C (SIGINT) and SIGTERM end a run, and are never lost.

Python raises ``KeyboardInterrupt`` in whatever Python code runs when the signal arrives. When that
is a weakref callback or a ``__del__`` (the garbage collector runs them between any two bytecodes),
Python prints "Exception ignored in ..." and carries on: the Ctrl-C is gone and the run trains to
the end (measured: about one interrupt in six, at random points of a tiny CLI run). So the handler
also records the signal, and the run checks that record at safe points (after every training batch
and evaluation step, between cells and before the report) and raises there: a swallowed interrupt
ends the run at the next check instead of never.

    with interrupts.handled():          # SIGINT and SIGTERM -> KeyboardInterrupt, recorded
        for cell in cells:
            interrupts.raise_if_interrupted()
            trainer = Trainer(..., callbacks=[interrupts.CHECK])
"""
from __future__ import annotations

import contextlib
import signal
import threading

_received: list[int] = []  # signals received inside ``handled()``, in order
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _handler(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def handled():
    """Inside the block SIGINT and SIGTERM (a scheduler, ``kill``) raise ``KeyboardInterrupt`` and are
    recorded for ``raise_if_interrupted``; the previous handlers come back after. Outside the main thread
    (where Python cannot set handlers, e.g. embedded) the signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a signal arrived inside ``handled()``, even one whose own
    ``KeyboardInterrupt`` Python swallowed."""
    if _received:
        raise KeyboardInterrupt(f"signal {signal.Signals(_received[0]).name} received")


class InterruptCheck:
    """A trainer callback: ``raise_if_interrupted`` after every batch, evaluation step and epoch. On every
    rank under torchrun (each rank gets the signal), so that all stop at the same check."""

    all_ranks = True

    def on_batch_end(self, trainer, epoch, batch_idx, n_batches, stats):
        raise_if_interrupted()

    def on_eval(self, trainer, epoch, stage, done, total):
        raise_if_interrupted()

    def on_epoch_end(self, trainer, epoch, metrics):
        raise_if_interrupted()


CHECK = InterruptCheck()
