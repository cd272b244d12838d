"""The benchmark's reference-time estimate: an upper bound for costs growing up to quadratically in L,
found with probes that stay within a quarter of the budget (``advssm bench --quick`` took 27 minutes
when a linear fit to short probes put a 41 s reference at a few seconds)."""
from __future__ import annotations

import pytest
import torch
from advssm.ssm_layers import benchmark

SIZE = dict(batch=8, dim=128, N=16, L=1024)


@pytest.fixture
def cost_model(monkeypatch):
    """Replace the timing of the reference by a known cost a L + c L^2 (seconds), recording the probes."""
    probes = []

    def install(a, c):
        def fake_runners(op, backend, args, kwargs):
            L = args[0].shape[-1]
            return None, (lambda: L)

        def fake_median(fn, device, repeats, warmup=True):
            L = fn()
            probes.append(L)
            return a * L + c * L * L

        monkeypatch.setattr(benchmark, "runners", fake_runners)
        monkeypatch.setattr(benchmark, "median_seconds", fake_median)
        return probes

    return install


# (a, c): the selective scan's reference on 2 cores (mostly quadratic), a linear loop, a cheap one
@pytest.mark.parametrize("a,c", [(2e-4, 3.9e-5), (3e-3, 0.0), (1e-5, 1e-9)])
@pytest.mark.parametrize("budget", [5.0, 60.0])
def test_the_estimate_bounds_the_cost_and_the_probes_stay_within_budget(cost_model, a, c, budget):
    probes = cost_model(a, c)
    true = a * SIZE["L"] + c * SIZE["L"] ** 2
    estimate = benchmark.estimate_ref_seconds("selective_scan", SIZE, torch.device("cpu"),
                                              torch.Generator().manual_seed(0), budget)
    assert estimate >= true * (1 - 1e-9)  # never an underestimate
    assert sum(a * L + c * L * L for L in probes) <= budget / 4 + 1e-9 or probes == [64]
    if probes[-1] == SIZE["L"]:  # probed at the full length: the estimate is the measurement
        assert estimate == pytest.approx(true)
    else:
        assert estimate <= true * SIZE["L"] / probes[-1] + 1e-9  # overestimates by at most L / last probe


def test_the_mostly_quadratic_reference_that_was_underestimated_is_now_skipped_in_quick_mode(cost_model):
    cost_model(2e-4, 3.9e-5)  # ~41 s at L 1024, ~0.17 s at L 64: linear-looking at the probes' lengths
    estimate = benchmark.estimate_ref_seconds("selective_scan", SIZE, torch.device("cpu"),
                                              torch.Generator().manual_seed(0), 5.0)
    assert estimate > 5.0
