"""Closed forms on a linear two-class model, where the margin is linear in the input:
z_1 - z_0 = w . x + c with w = W[1] - W[0]. The worst Linf perturbation of size eps moves
the margin by eps * ||w||_1 (direction eps * sign(w)), the worst L2 one by eps * ||w||_2
(direction eps * w / ||w||_2), as long as the box [0, 1] is not reached."""
import pytest
import torch
from advssm.adv_train.attacks import FAB, FGSM, PGD, per_example_norm
from torch import nn

D = 20
EPS = 0.05


def linear_model(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, 2).double()


def batch(seed: int, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = EPS + (1 - 2 * EPS) * torch.rand(n, D, generator=g, dtype=torch.float64)  # box never active
    y = torch.randint(0, 2, (n,), generator=g)
    return x, y


def worst_direction(model: nn.Linear, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Per example, the unit direction that most lowers z_y - z_other."""
    w = model.weight[1] - model.weight[0]
    w = torch.where(y[:, None] == 1, -w, w).detach()  # the direction that favours the wrong class
    return w.sign() if norm == "Linf" else w / w.norm(dim=1, keepdim=True)


def margin(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = model(x).detach()
    return z.gather(1, y[:, None]).squeeze(1) - z.gather(1, 1 - y[:, None]).squeeze(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize(("make_attack", "l2_tol"), [
    (lambda m, norm: FGSM(m, EPS, norm=norm), 1e-12),
    (lambda m, norm: PGD(m, EPS, alpha=EPS, steps=5, random_start=False, norm=norm), 1e-12),
    # From a random start the L2 iterates approach the optimum geometrically (factor ~2/3 a step).
    (lambda m, norm: PGD(m, EPS, alpha=EPS / 2, steps=40, random_start=True, norm=norm, seed=3), 1e-5),
], ids=["fgsm", "pgd", "pgd-random-start"])
def test_attack_reaches_the_closed_form(make_attack, l2_tol, norm, seed):
    model = linear_model(seed)
    x, y = batch(seed)
    x_adv = make_attack(model, norm)(x, y)
    expected = x + EPS * worst_direction(model, y, norm)
    w_norm = (model.weight[1] - model.weight[0]).detach().norm(p=1 if norm == "Linf" else 2)
    if norm == "Linf":  # sign steps land exactly on the corner of the cube
        assert torch.equal(x_adv, expected)
    tol = 1e-13 if norm == "Linf" else l2_tol
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=tol)
    torch.testing.assert_close(margin(model, x_adv, y), margin(model, x, y) - EPS * w_norm, rtol=0, atol=tol)


@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_finds_the_minimal_perturbation(norm, targeted):
    """FAB is a minimum-norm attack: on a linear model the smallest perturbation that flips the
    label has norm |margin| / ||w||_dual (dual of Linf is L1). FAB must get within 1 % of it (its
    overshoot eta = 1.05 and backward step beta = 0.9 settle about 0.5 % above the minimum)."""
    model = linear_model(4)
    g = torch.Generator().manual_seed(4)
    w = (model.weight[1] - model.weight[0]).detach()
    with torch.no_grad():  # boundary through the centre of the cube, so that the box stays out of reach
        model.bias[1] = model.bias[0] - 0.5 * w.sum()
    x = 0.45 + 0.1 * torch.rand(16, D, generator=g, dtype=torch.float64)
    y = model(x).argmax(1).detach()
    d_min = margin(model, x, y) / w.norm(p=1 if norm == "Linf" else 2)
    assert d_min.max() < 0.4
    x_adv = FAB(model, norm=norm, eps=1.0, steps=30, targeted=targeted, n_target_classes=1)(x, y)
    found = per_example_norm(x_adv - x, norm)
    assert (model(x_adv).argmax(1) != y).all()
    assert (found >= d_min * (1 - 1e-9)).all() and (found <= d_min * 1.01).all()
    # With eps just below the minimum nothing can be broken, and FAB returns x itself.
    below = FAB(model, norm=norm, eps=0.99 * float(d_min.min()), steps=30, targeted=targeted, n_target_classes=1)
    assert torch.equal(below(x, y), x)
