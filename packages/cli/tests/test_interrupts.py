"""Ctrl-C and SIGTERM inside a run: raised as KeyboardInterrupt, and never lost when Python swallows that raise."""
import os
import signal

import pytest
from advssm.cli import interrupts


class _SignalsItselfWhenCollected:
    """Its ``__del__`` sends ``signum`` to this process; the handler then runs inside ``__del__``, where
    Python prints "Exception ignored" and drops the KeyboardInterrupt (as in a weakref callback of the GC)."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        for _ in range(10_000):  # bytecodes for the handler to run on, still inside __del__
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed raise, reported
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_swallowed_interrupt_is_raised_at_the_next_check(signum):
    with interrupts.handled():
        _SignalsItselfWhenCollected(signum)  # collected at once; its KeyboardInterrupt is dropped
        survived = True  # the raise did not reach this frame
        with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
            interrupts.raise_if_interrupted()
    assert survived


def test_the_handlers_are_restored_and_a_new_run_starts_clean():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt):
        with interrupts.handled():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass
    assert {s: signal.getsignal(s) for s in before} == before
    with interrupts.handled():  # the earlier signal belongs to the earlier run
        interrupts.raise_if_interrupted()


def test_the_trainer_callback_checks_after_every_batch_evaluation_step_and_epoch():
    check = interrupts.CHECK
    assert check.all_ranks  # under torchrun every rank stops at the same check
    with interrupts.handled():
        check.on_batch_end(None, 1, 0, 1, {})
        interrupts._received.append(signal.SIGINT)  # as the handler records a signal
        for hook, args in (("on_batch_end", (1, 0, 1, {})), ("on_eval", (1, "pgd", 1, 2)), ("on_epoch_end", (1, {}))):
            with pytest.raises(KeyboardInterrupt):
                getattr(check, hook)(None, *args)
