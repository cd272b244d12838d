"""The building blocks, each against a plain float64 reference: losses, projections, the
random start, FAB's hyperplane-and-box projection, APGD's checkpoints and step-size review,
and Square's schedule."""
import math

import pytest
import torch
from advssm.adv_train.attacks import (
    APGD,
    apgd_checkpoints,
    dlr_loss,
    dlr_targeted_loss,
    halve_step_size,
    margin_loss,
    p_selection,
    per_example_norm,
    project,
    project_onto_hyperplane_in_box,
)
from advssm.adv_train.attacks import fab as fab_module
from advssm.adv_train.attacks.base import random_in_ball
from torch import nn


def logits_and_labels(seed: int, n: int = 7, classes: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("seed", range(3))
def test_losses_match_a_loop(seed):
    z, y = logits_and_labels(seed)
    t = (y + 1 + torch.arange(len(y)) % 3) % z.shape[1]
    for i in range(len(y)):
        zi = z[i].tolist()
        others = [v for j, v in enumerate(zi) if j != y[i]]
        top = sorted(zi, reverse=True)
        assert margin_loss(z, y)[i].item() == pytest.approx(max(others) - zi[y[i]], abs=1e-12)
        assert dlr_loss(z, y)[i].item() == pytest.approx(-(zi[y[i]] - max(others)) / (top[0] - top[2]), rel=1e-9)
        expected = -(zi[y[i]] - zi[t[i]]) / (top[0] - (top[2] + top[3]) / 2)
        assert dlr_targeted_loss(z, y, t)[i].item() == pytest.approx(expected, rel=1e-9)


def test_dlr_is_invariant_to_shift_and_scale():
    z, y = logits_and_labels(4)
    torch.testing.assert_close(dlr_loss(3 * z + 2, y), dlr_loss(z, y), rtol=1e-10, atol=1e-12)


def test_dlr_needs_three_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_lands_in_ball_and_box_and_keeps_inner_points(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(9, 3, 5, generator=g, dtype=torch.float64)
    x_far = x + torch.randn(x.shape, generator=g, dtype=torch.float64)
    out = project(x_far, x, 0.2, norm)
    assert per_example_norm(out - x, norm).max() <= 0.2 + 1e-12
    assert out.min() >= 0 and out.max() <= 1
    inner = x + 0.01 * torch.rand(x.shape, generator=g, dtype=torch.float64) * (1 - x)
    torch.testing.assert_close(project(inner, x, 0.2, norm), inner, rtol=0, atol=1e-15)
    if norm == "L2":  # when the box is inactive the L2 projection is a radial rescaling
        mid = torch.full_like(x, 0.5)
        d = torch.randn(x.shape, generator=g, dtype=torch.float64)
        d = d * (0.15 / per_example_norm(d, "L2")).reshape(-1, 1, 1)  # norm 0.15: the box is never reached
        # rtol: the projection adds 1e-12 to the norm it divides by.
        torch.testing.assert_close(project(mid + d, mid, 0.1, "L2") - mid, d * 0.1 / 0.15, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_start_is_inside_the_ball_and_spread_out(norm):
    x = torch.zeros(4000, 3)
    d = random_in_ball(x, 0.5, norm, torch.Generator().manual_seed(0))
    n = per_example_norm(d, norm)
    assert n.max() <= 0.5 + 1e-6
    # Uniform in the ball: P(norm <= r) = (r / eps)^d for both norms.
    assert (n <= 0.25).float().mean().item() == pytest.approx(0.5**3, abs=0.03)


def reference_projection(z, w, c, norm):
    """min ||delta|| s.t. <w, delta> = c, 0 <= z + delta <= 1, by walking the breakpoints of the
    piecewise-linear function s -> <w, clip(s v)> in float64 Python floats, one row at a time."""
    out = []
    for zr, wr, cr in zip(z.tolist(), w.tolist(), c.tolist()):
        sigma = math.copysign(1.0, cr) if cr != 0 else 0.0
        v = [sigma * (wi if norm == "L2" else math.copysign(1.0, wi) * (wi != 0)) for wi in wr]

        def delta(s, zr=zr, v=v):
            return [min(max(s * vi, -zi), 1 - zi) for vi, zi in zip(v, zr)]

        def reach(s, wr=wr, sigma=sigma):
            return sigma * sum(wi * di for wi, di in zip(wr, delta(s)))

        points = sorted({0.0} | {b / abs(vi) for vi, zi in zip(v, zr) if vi for b in (zi, 1 - zi)})
        target, s_best = abs(cr), points[-1]
        for a, b in zip(points, points[1:]):
            if reach(b) >= target:  # linear on [a, b]: interpolate
                ra, rb = reach(a), reach(b)
                s_best = a if rb == ra else a + (target - ra) / (rb - ra) * (b - a)
                break
        out.append(delta(s_best))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_hyperplane_box_projection_matches_the_breakpoint_reference(norm, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(12, 7, generator=g, dtype=torch.float64)
    w = torch.randn(12, 7, generator=g, dtype=torch.float64)
    w[0, :3] = 0  # zero weights stay untouched
    c = torch.randn(12, generator=g, dtype=torch.float64) * torch.linspace(0.01, 3, 12, dtype=torch.float64)
    c[1] = 0.0
    c[2] = 100.0  # unreachable: the box corner that gets closest
    got = project_onto_hyperplane_in_box(z, w, c, norm)
    torch.testing.assert_close(got, reference_projection(z, w, c, norm), rtol=0, atol=1e-12)
    assert ((z + got) >= -1e-15).all() and ((z + got) <= 1 + 1e-15).all()
    # Where the box cannot reach the hyperplane, the answer is the box corner closest to it.
    corner = torch.where(c[:, None].sign() * w > 0, 1 - z, -z) * (w != 0)
    reachable = (c.sign() * (w * corner).sum(1)) >= c.abs()
    assert reachable.sum() >= 6 and not reachable[2]
    torch.testing.assert_close((w * got).sum(1)[reachable], c[reachable], rtol=0, atol=1e-10)
    torch.testing.assert_close(got[~reachable], corner[~reachable], rtol=0, atol=1e-12)


@pytest.mark.parametrize("newton_steps", [1, 2])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_hyperplane_box_projection_sorting_finisher_matches_the_reference(norm, newton_steps, monkeypatch):
    # rows Newton's method has not solved within NEWTON_STEPS are solved by sorting the breakpoints
    monkeypatch.setattr(fab_module, "NEWTON_STEPS", newton_steps)
    g = torch.Generator().manual_seed(11)
    z = torch.rand(40, 9, generator=g, dtype=torch.float64)
    w = torch.randn(40, 9, generator=g, dtype=torch.float64)
    w[3, :4] = 0
    c = torch.randn(40, generator=g, dtype=torch.float64) * torch.logspace(-3, 1.5, 40, dtype=torch.float64)
    torch.testing.assert_close(project_onto_hyperplane_in_box(z, w, c, norm), reference_projection(z, w, c, norm),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_hyperplane_projection_without_active_box_is_the_closed_form(norm):
    g = torch.Generator().manual_seed(9)
    z = torch.full((5, 10), 0.5, dtype=torch.float64)
    w = torch.randn(5, 10, generator=g, dtype=torch.float64)
    c = 0.01 * torch.randn(5, generator=g, dtype=torch.float64)
    if norm == "L2":
        expected = c[:, None] * w / (w * w).sum(1, keepdim=True)
    else:
        expected = c[:, None] * w.sign() / w.abs().sum(1, keepdim=True)
    torch.testing.assert_close(project_onto_hyperplane_in_box(z, w, c, norm), expected, rtol=1e-12, atol=1e-15)


def test_apgd_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then 1.05 > 1)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize(("n_rises", "halved_before", "best_now", "expected"), [
    (15, False, 2.0, False),  # 15 >= 0.75 * 20 rises and the best loss improved: keep the step
    (14, False, 2.0, True),   # condition 1: fewer than rho * period rises
    (20, False, 1.0, True),   # condition 2: not halved last time and no improvement since
    (20, True, 1.0, False),   # ... but condition 2 does not apply right after a halving
    (0, True, 1.0, True),     # condition 1 applies whatever happened before
])
def test_step_size_review_follows_the_papers_two_conditions(n_rises, halved_before, best_now, expected):
    # period 20 since the last checkpoint, rho 0.75, best loss 1.0 at the last checkpoint
    got = halve_step_size(torch.tensor([float(n_rises)]), 20, 0.75, torch.tensor([halved_before]),
                          torch.tensor([best_now]), torch.tensor([1.0]))
    assert got.tolist() == [expected]


def test_apgd_step_size_starts_at_2eps_and_halves_at_the_checkpoints():
    """On a linear model the first sign step reaches the loss-maximising corner of the Linf ball, so the
    loss never rises again: condition 1 halves the step size at every checkpoint."""
    torch.manual_seed(0)
    model = nn.Linear(10, 3).double()
    x = 0.3 + 0.4 * torch.rand(4, 10, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = APGD(model, eps=0.01, steps=100, seed=0)
    attack(x, y)
    eta = attack.last_step_sizes
    assert eta.shape == (100, 4)
    expected, size = [], 2 * 0.01
    for k in range(100):
        if k in apgd_checkpoints(100):
            size /= 2
        expected.append(size)
    torch.testing.assert_close(eta, torch.tensor(expected, dtype=torch.float64)[:, None].expand(100, 4),
                               rtol=0, atol=0)


def test_square_p_schedule_follows_the_paper():
    # Halvings after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10000 queries.
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05, 1001: 0.025, 2001: 0.0125,
                4001: 0.8 / 128, 6001: 0.8 / 256, 8001: 0.8 / 512, 9999: 0.8 / 512}
    assert {q: p_selection(0.8, q, 10000) for q in expected} == pytest.approx(expected)
    assert p_selection(0.8, 6, 5000) == 0.4  # rescaled to a 5000-query budget
