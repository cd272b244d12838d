"""The L1 threat model (the L1 ball intersected with the [0, 1] box, as in AutoAttack): the projection is the
Euclidean one (its variational inequality against random feasible points), the attacks reach the linear
closed form (the budget goes to the coordinates of largest |w| that still have box room, in that order), and
the invariants hold (L1 norm <= eps, box) for APGD-L1, APGD-T, Square-L1 and AutoAttack's L1 version."""
import warnings

import pytest
import torch
from advssm.adv_train.attacks import (
    APGD,
    APGDT,
    FAB,
    FGSM,
    NORMS,
    PGD,
    AutoAttack,
    build,
    per_example_norm,
    project_l1_box,
)
from advssm.adv_train.attacks.fab import project_onto_hyperplane_in_box
from torch import nn

D = 20


def greedy_l1(w: torch.Tensor, x: torch.Tensor, budget: float) -> torch.Tensor:
    """The L1-optimal perturbation of a linear function <w, delta> (to increase) within the L1 ball and the box:
    coordinates by decreasing |w|, each moved along sign(w) as far as the box and the remaining budget allow."""
    delta = torch.zeros_like(x)
    for i in range(x.shape[0]):
        left = budget
        for j in w[i].abs().argsort(descending=True).tolist():
            if w[i, j] == 0 or left <= 0:
                break
            room = float(1 - x[i, j]) if w[i, j] > 0 else float(x[i, j])
            step = min(room, left)
            delta[i, j] = step * float(w[i, j].sign())
            left -= step
    return delta


def setup(seed: int, n: int = 12, low: float = 0.0, high: float = 1.0):
    torch.manual_seed(seed)
    model = nn.Linear(D, 2).double()
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    w = (model.weight[1] - model.weight[0]).detach()
    w_y = torch.where(y[:, None] == 1, -w, w)  # the direction that lowers the margin of label y
    return model, x, y, w_y


def margin(model, x, y):
    z = model(x).detach()
    return z.gather(1, y[:, None]).squeeze(1) - z.gather(1, 1 - y[:, None]).squeeze(1)


def test_l1_is_a_norm_of_the_registry():
    assert "L1" in NORMS


@pytest.mark.parametrize("eps", [0.3, 2.0, 50.0])
def test_projection_is_the_euclidean_one(eps):
    """For the projection p* of v onto a convex set C: <v - p*, p - p*> <= 0 for every p in C. Checked against
    random feasible points (scaled random directions, clipped to the box) and against the box's vertices."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, D, generator=g, dtype=torch.float64)
    v = 1.5 * torch.randn(8, D, generator=g, dtype=torch.float64)
    p_star = project_l1_box(v, x, eps)
    assert (p_star.abs().sum(1) <= eps * (1 + 1e-12)).all()
    assert ((x + p_star) >= 0).all() and ((x + p_star) <= 1).all()
    for _ in range(50):
        direction = torch.randn(8, D, generator=g, dtype=torch.float64) * (torch.rand(8, D, generator=g) < 0.3)
        p = torch.maximum(torch.minimum(direction, 1 - x), -x)
        p = p * (eps * torch.rand(8, 1, generator=g, dtype=torch.float64) / p.abs().sum(1, keepdim=True)).clamp(max=1)
        assert (((v - p_star) * (p - p_star)).sum(1) <= 1e-9).all()
    # inside the ball and the box: unchanged
    small = 0.01 * torch.sign(torch.randn(8, D, generator=g, dtype=torch.float64)) * (x.clamp(0.02, 0.98) - x + 1)
    inside = torch.maximum(torch.minimum(small, 1 - x), -x) * 0.01
    torch.testing.assert_close(project_l1_box(inside, x, eps), inside, rtol=0, atol=1e-15)


def test_projection_keeps_float32_within_the_ball():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 32, 32, generator=g)
    out = project_l1_box(torch.randn(16, 3, 32, 32, generator=g), x, 12.0)
    assert out.dtype == torch.float32 and float(out.abs().flatten(1).sum(1).max()) <= 12.0 * (1 + 1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("make", [
    lambda m, eps: FGSM(m, eps, norm="L1"),
    lambda m, eps: PGD(m, eps, alpha=eps, steps=5, random_start=False, norm="L1"),
], ids=["fgsm", "pgd"])
def test_budget_on_the_largest_weight_when_the_box_is_out_of_reach(make, seed):
    """eps below every coordinate's box room: the optimum is eps * sign(w_i) on i = argmax |w_i|."""
    eps = 0.05
    model, x, y, w_y = setup(seed, low=eps, high=1 - eps)
    x_adv = make(model, eps)(x, y)
    expected = x + greedy_l1(w_y, x, eps)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-12)  # the projection's prefix sums round
    torch.testing.assert_close(margin(model, x_adv, y), margin(model, x, y) - eps * w_y.abs().amax(1),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("large_reps", [False, True])
def test_apgd_l1_reaches_the_greedy_optimum_with_the_box_active(large_reps, seed):
    """eps = 2 spread over coordinates with at most 1 of room each: the optimum fills the coordinates of largest
    |w| up to the box. APGD-L1 maximising the (linear) margin loss reaches it to 0.5 %."""
    eps = 2.0
    model, x, y, w_y = setup(seed)
    attack = APGD(model, norm="L1", eps=eps, steps=100, loss="margin", seed=seed, large_reps=large_reps)
    x_adv = attack(x, y)
    best_drop = (w_y * greedy_l1(w_y, x, eps)).sum(1)
    drop = margin(model, x, y) - margin(model, x_adv, y)
    fooled_early = model(x_adv).argmax(1) != y  # APGD stops improving an example once it is fooled
    assert (per_example_norm(x_adv - x, "L1") <= eps * (1 + 1e-9)).all()
    assert ((drop >= 0.995 * best_drop) | fooled_early).all(), (drop / best_drop).min()
    assert (drop <= best_drop * (1 + 1e-9)).all()


def test_pgd_l1_steps_past_coordinates_without_room():
    """The L1 steepest ascent skips a coordinate the box stops: from x_i = 1 with w_i > 0 the step goes to the
    next-largest weight instead of staying put."""
    model, x, y, w_y = setup(3, n=1, low=0.2, high=0.8)
    top = int(w_y[0].abs().argmax())
    x[0, top] = 1.0 if w_y[0, top] > 0 else 0.0
    x_adv = FGSM(model, 0.1, norm="L1")(x, y)
    moved = (x_adv != x)[0].nonzero().flatten().tolist()
    second = int(w_y[0].abs().masked_fill(torch.arange(D) == top, 0).argmax())
    assert moved == [second]


@pytest.mark.parametrize("targeted", [True, False])
def test_fab_l1_finds_the_minimal_perturbation(targeted):
    """FAB-L1 on a linear model: the smallest L1 perturbation that reaches the boundary is the greedy one
    (|margin| spent on the coordinates of largest |w| up to the box); FAB gets within 1 % of its norm."""
    torch.manual_seed(4)
    model = nn.Linear(D, 2).double()
    w = (model.weight[1] - model.weight[0]).detach()
    with torch.no_grad():
        model.bias[1] = model.bias[0] - 0.5 * w.sum()
    g = torch.Generator().manual_seed(4)
    x = 0.4 + 0.2 * torch.rand(16, D, generator=g, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    w_y = torch.where(y[:, None] == 1, -w, w)
    m = margin(model, x, y)
    # the minimal L1 norm: spend |margin| greedily (cost per unit of margin 1 / |w_i|, up to each box room)
    minimal = []
    for i in range(16):
        left, norm = float(m[i]), 0.0
        for j in w_y[i].abs().argsort(descending=True).tolist():
            room = float(1 - x[i, j]) if w_y[i, j] > 0 else float(x[i, j])
            gain = min(room * float(w_y[i, j].abs()), left)
            norm += gain / float(w_y[i, j].abs())
            left -= gain
            if left <= 0:
                break
        minimal.append(norm)
    minimal = torch.tensor(minimal, dtype=torch.float64)
    x_adv = FAB(model, norm="L1", eps=10.0, steps=30, targeted=targeted, n_target_classes=1)(x, y)
    found = per_example_norm(x_adv - x, "L1")
    assert (model(x_adv).argmax(1) != y).all()
    assert (found >= minimal * (1 - 1e-9)).all() and (found <= minimal * 1.01).all(), (found / minimal).max()


def test_hyperplane_projection_l1_is_greedy():
    g = torch.Generator().manual_seed(2)
    z = torch.rand(5, 9, generator=g, dtype=torch.float64)
    w = torch.randn(5, 9, generator=g, dtype=torch.float64)
    c = torch.tensor([0.5, -0.3, 1e-3, 4.0, -2.0], dtype=torch.float64)
    d = project_onto_hyperplane_in_box(z, w, c, "L1")
    reachable = (w.abs() * torch.where(w * c[:, None] > 0, 1 - z, z)).sum(1) >= c.abs()
    torch.testing.assert_close((w * d).sum(1)[reachable], c[reachable], rtol=0, atol=1e-12)
    expected = greedy_l1(w * c.sign()[:, None], z, 1e9) * 0  # shape only
    for i in range(5):  # each step equals the greedy fill of |c| in order of |w|
        left = float(c[i].abs())
        for j in w[i].abs().argsort(descending=True).tolist():
            room = float(1 - z[i, j]) if w[i, j] * c[i] > 0 else float(z[i, j])
            amount = min(room, left / float(w[i, j].abs()))
            expected[i, j] = amount * float((w[i, j] * c[i]).sign())
            left -= amount * float(w[i, j].abs())
            if left <= 1e-15:
                break
    torch.testing.assert_close(d, expected, rtol=0, atol=1e-12)
    assert ((z + d) >= 0).all() and ((z + d) <= 1).all()


@pytest.mark.parametrize("shape", [(12, 3), (2, 5, 5)], ids=["sequence", "image"])
@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square", "pgd", "aa"])
def test_l1_invariants(name, shape):
    torch.manual_seed(0)
    x = torch.rand(6, *shape)
    y = torch.randint(0, 5, (6,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 16), nn.Tanh(), nn.Linear(16, 5))
    eps = 1.5
    settings = {"aa_steps": 10} if name != "pgd" else {}
    if name == "aa":  # AutoAttack's L1 components at a reduced budget (the standard run is timed below)
        settings.update(aa_version="custom", aa_attacks=["apgd-ce", "apgd-t", "fab-t", "square"])
    attack = build(name, model, norm="L1", eps=eps, seed=2, **settings)
    x_adv = attack(x, y)
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
    assert float(per_example_norm(x_adv - x, "L1").max()) <= eps * (1 + 1e-5)
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert torch.equal(attack(x, y), x_adv), "seeded: reproducible"


def test_autoattack_l1_standard_is_the_autoattack_code_setting():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is missing any more: no warning
        aa = AutoAttack(model, norm="L1", eps=1.0, seed=0)
    assert list(aa.attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    parts = {c["name"]: c for c in aa.describe()["components"]}
    assert parts["apgd-ce"]["restarts"] == 5 and parts["apgd-ce"]["large_reps"]
    assert parts["apgd-t"]["target_classes"] == 5 and parts["apgd-t"]["large_reps"]
    assert parts["fab-t"]["target_classes"] == 9 and all(c["norm"] == "L1" for c in parts.values())
    assert (parts["square"]["queries"], parts["square"]["p_init"], parts["square"]["restarts"]) == (5000, 0.8, 1)
    x, y = torch.rand(6, 8), torch.arange(6)
    x_adv = aa(x, y)
    assert float(per_example_norm(x_adv - x, "L1").max()) <= 1.0 * (1 + 1e-5)
    assert sum(aa.last_broken.values()) > 0


def test_large_reps_schedule_and_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.rand(4, 8), torch.tensor([0, 1, 2, 0])
    attack = APGD(model, norm="L1", eps=1.0, steps=10, large_reps=True, loss="ce", seed=0)
    attack(x, y)
    assert attack.last_step_sizes.shape[0] == 10  # 3 + 3 + 4 steps: the stages at 3, 2 and 1 eps
    assert float(attack.last_step_sizes[0].max()) == 3.0 and float(attack.last_step_sizes[-1].max()) <= 1.0
    with pytest.raises(ValueError, match="large_reps"):
        APGD(model, norm="Linf", eps=0.1, large_reps=True)
    with pytest.raises(ValueError, match="unknown norm"):
        APGDT(model, norm="L0", eps=1.0)
