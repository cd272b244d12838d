"""L2 Square, the standard L2 AutoAttack, and the "rand" version (APGD with EOT).

Known answers on a linear K-class model z = W x + b whose eps-ball stays inside the box: the
smallest L2 perturbation that changes the class of x (label y = its prediction) has norm
d(x) = min_{j != y} (z_y - z_j) / ||w_y - w_j||_2. An attack can break x iff d(x) <= eps; the
L2 AutoAttack must break exactly those (no example lies within 3 % of eps). Square, a random
search, must break every example with d(x) < eps / 2 (and can never break one with d > eps).
On a trained MLP, the L2 AutoAttack is at least as strong as PGD-L2 and L2 Square alone breaks
examples without any gradient. EOT: on a model with Gaussian noise in its weights, the averaged
gradient is the expected one up to 1/sqrt(20) of a single sample's error.
"""
import pytest
import torch
from advssm.adv_train import APGD, PGD, AutoAttack, Square, build_attack, evaluate
from advssm.adv_train.attacks import STANDARD
from torch import nn

D, K = 64, 5
LINF_EPS = 0.08


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class Flat(nn.Module):
    """The linear model on any input layout: images (B, 1, 8, 8), sequences (B, 16, 4) or vectors (B, 64)."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def linear_case():
    torch.manual_seed(0)
    linear = nn.Linear(D, K).double()
    x = 0.4 + 0.2 * torch.rand(300, D, dtype=torch.float64)  # the ball of radius < 0.4 stays in the box
    with torch.no_grad():
        z = linear(x)
    y = z.argmax(1)
    w = linear.weight.detach()
    gaps = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).norm(dim=2)
    d_min = torch.where(torch.arange(K)[None] == y[:, None], torch.inf, gaps).amin(1)
    eps = float(d_min.median())
    keep = ((d_min / eps - 1).abs() > 0.03)  # nothing on the edge of the ball
    return linear, x[keep], y[keep], d_min[keep], eps


def reduced_l2_autoattack(model, eps):
    return AutoAttack(model, norm="L2", eps=eps, version="custom", seed=0,
                      attacks=[build_attack(name, model, "L2", eps, seed=0, steps=20) for name in STANDARD])


def test_l2_autoattack_breaks_exactly_the_breakable(linear_case):
    linear, x, y, d_min, eps = linear_case
    standard = AutoAttack(linear, norm="L2", eps=eps, seed=0)
    assert tuple(standard.attacks) == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert all(a.norm == "L2" and a.eps == eps for a in standard.attacks.values())
    auto = reduced_l2_autoattack(linear, eps)  # the standard components at a fifth of the budget
    x_adv = auto(x, y)
    with torch.no_grad():
        broken = linear(x_adv).argmax(1) != y
    assert torch.equal(broken, d_min <= eps)
    assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= eps * (1 + 1e-9)


@pytest.mark.parametrize("shape", [(D,), (1, 8, 8), (16, 4)], ids=["vector", "image", "sequence"])
def test_l2_square_on_the_linear_closed_form(linear_case, shape):
    linear, x, y, d_min, eps = linear_case
    model = Flat(linear)
    x_shaped = x.reshape(-1, *shape)
    x_adv = Square(model, eps, n_queries=400, norm="L2", seed=0)(x_shaped, y)
    with torch.no_grad():
        broken = model(x_adv).argmax(1) != y
    norms = (x_adv - x_shaped).flatten(1).norm(dim=1)
    assert float(norms.max()) <= eps * (1 + 1e-9) and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert broken[d_min < eps / 2].all(), "random search must find the easy ones"
    assert not broken[d_min > eps].any()
    assert torch.allclose(norms[~broken], torch.full_like(norms[~broken], eps)), "Square uses the whole ball"


def test_l2_autoattack_against_pgd_on_a_trained_model(trained):
    model, x, y = trained
    eps = 4 * LINF_EPS
    pgd = accuracy(model, PGD(model, eps, alpha=eps / 4, steps=20, norm="L2", seed=0)(x, y), y)
    auto = accuracy(model, reduced_l2_autoattack(model, eps)(x, y), y)
    square = accuracy(model, Square(model, eps, n_queries=300, norm="L2", seed=0)(x, y), y)
    clean = accuracy(model, x, y)
    assert auto <= pgd
    assert pgd < clean - 0.2, "the attacks must actually work at this eps"
    assert square < clean - 0.1, "L2 Square breaks examples without gradients"
    assert auto <= square


class NoisyLinear(nn.Module):
    """A randomised model: logits (W + sigma N) x + b with fresh Gaussian weight noise at every forward pass."""

    def __init__(self, linear, sigma):
        super().__init__()
        self.linear, self.sigma = linear, sigma

    def forward(self, x):
        noise = self.sigma * torch.randn(self.linear.weight.shape, dtype=x.dtype)
        return x @ (self.linear.weight + noise).T + self.linear.bias


def test_eot_averages_the_gradient_to_its_expectation():
    torch.manual_seed(0)
    linear = nn.Linear(D, 2).double()
    model = NoisyLinear(linear, sigma=0.5)
    x = torch.rand(200, D, dtype=torch.float64)
    y = torch.zeros(200, dtype=torch.long)
    # margin loss z_1 - z_0 is linear in the logits: its expected input gradient is w_1 - w_0
    expected = (linear.weight[1] - linear.weight[0]).detach().expand(200, D)
    errors = {}
    for eot in (1, 20):
        attack = APGD(model, eps=0.1, loss="margin", eot_iter=eot)
        before = attack.passes()
        _, grad, _ = attack.loss_and_grad(x, lambda z, loss=attack.loss_fn: loss(z, y))
        assert attack.passes()[1] - before[1] == eot * 200, "one backward pass per sample"
        errors[eot] = float((grad - expected).norm(dim=1).mean())
    assert errors[20] < 0.3 * errors[1]  # expected ratio 1 / sqrt(20) = 0.22


def test_eot_on_a_deterministic_model_changes_nothing(trained):
    model, x, y = trained
    once = APGD(model, eps=LINF_EPS, steps=10, seed=0)(x, y)
    twice = APGD(model, eps=LINF_EPS, steps=10, seed=0, eot_iter=2)(x, y)  # (g + g) / 2 == g exactly
    assert torch.equal(once, twice)


def test_rand_version_and_the_masking_warning_that_names_it(trained):
    model, x, y = trained
    auto = AutoAttack(model, eps=LINF_EPS, version="rand", seed=0)
    assert tuple(auto.attacks) == ("apgd-ce", "apgd-dlr")
    assert [(a.loss_name, a.steps, a.eot_iter, a.n_restarts) for a in auto.attacks.values()] == [
        ("ce", 100, 20, 1), ("dlr", 100, 20, 1)]
    assert auto.describe()["version"] == "rand"

    class Dropped(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return nn.functional.dropout(self.model(x), 0.5, training=True)

    noisy = Dropped(model)
    result = evaluate(noisy, (x, y), [APGD(noisy, eps=LINF_EPS, steps=2)])
    assert any("AutoAttack(version='rand')" in w for w in result.warnings), result.warnings
