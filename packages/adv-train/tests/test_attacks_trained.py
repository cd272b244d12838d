"""Attack strength on a small MLP trained inside the test (a few hundred full-batch Adam steps on
Gaussian blobs in [0, 1]^16): APGD is at least as strong as PGD-10, AutoAttack at least as
strong as its parts, Square works without any gradient, and the standard budgets are the paper's."""
import pytest
import torch
from advssm.adv_train.attacks import APGD, APGDT, FAB, PGD, STANDARD, AutoAttack, Square, margin_loss
from torch import nn

EPS = 0.08  # robust accuracy around 40 % for this model: room to see differences
SLACK = 0.03  # 3 of the 100 test points


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_apgd_is_at_least_as_strong_as_pgd10(trained):
    model, x, y = trained
    pgd = accuracy(model, PGD(model, EPS, alpha=EPS / 4, steps=10, seed=0)(x, y), y)
    apgd = accuracy(model, APGD(model, eps=EPS, steps=50, seed=0)(x, y), y)
    assert apgd <= pgd + SLACK
    assert pgd < accuracy(model, x, y) - 0.2, "the attack must actually work"


@pytest.mark.parametrize(("norm", "eps"), [("Linf", EPS), ("L2", 4 * EPS)])
def test_pgd_restarts_keep_the_worst_point_per_example(trained, norm, eps):
    """With one seed the first restart replays the single run, so per example the restarted result is
    fooled wherever the single run is, and otherwise has at least its loss."""
    model, x, y = trained
    single = PGD(model, eps, alpha=eps / 4, steps=10, norm=norm, loss="margin", seed=3)(x, y)
    several = PGD(model, eps, alpha=eps / 4, steps=10, norm=norm, loss="margin", restarts=4, seed=3)(x, y)
    with torch.no_grad():
        loss_single, loss_several = margin_loss(model(single), y), margin_loss(model(several), y)
    fooled_single, fooled_several = loss_single > 0, loss_several > 0
    assert (fooled_several | ~fooled_single).all()
    unfooled = ~fooled_several
    assert (loss_several[unfooled] >= loss_single[unfooled]).all()
    assert fooled_several.sum() > fooled_single.sum(), "restarts should find more on this model"


def small_autoattack_parts(model):
    return [APGD(model, eps=EPS, steps=30, seed=0), APGDT(model, eps=EPS, steps=20, n_target_classes=3, seed=0),
            FAB(model, eps=EPS, steps=20, n_target_classes=3, seed=0), Square(model, EPS, n_queries=200, seed=0)]


def test_autoattack_is_at_least_as_strong_as_each_part(trained):
    model, x, y = trained
    auto = AutoAttack(model, eps=EPS, version="custom", attacks=small_autoattack_parts(model))
    ensemble = accuracy(model, auto(x, y), y)
    assert sum(auto.last_broken.values()) == round((1 - ensemble) * len(y)) - (len(y) - auto.last_n_correct)
    for i, part in enumerate(small_autoattack_parts(model)):
        alone = accuracy(model, part(x, y), y)
        # The first part sees exactly the same points as alone; later ones see a subset, whose random
        # draws differ, hence the slack.
        assert ensemble <= alone + (0 if i == 0 else SLACK), part


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this model has no gradients")


class Opaque(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(NoBackward.apply(x))


def test_square_needs_no_gradients(trained):
    model, x, y = trained
    opaque = Opaque(model)
    with pytest.raises(RuntimeError, match="no gradients"):
        PGD(opaque, EPS, alpha=EPS / 4, steps=1)(x, y)
    robust = accuracy(model, Square(opaque, EPS, n_queries=200, seed=0)(x, y), y)
    assert robust < accuracy(model, x, y) - 0.2


def test_standard_autoattack_uses_the_papers_budgets(trained):
    model, _, _ = trained
    auto = AutoAttack(model, norm="Linf", eps=8 / 255)
    assert tuple(auto.attacks) == STANDARD == ("apgd-ce", "apgd-t", "fab-t", "square")
    apgd, apgdt, fab, square = auto.attacks.values()
    assert type(apgd) is APGD and (apgd.steps, apgd.n_restarts, apgd.loss_name, apgd.rho) == (100, 1, "ce", 0.75)
    assert type(apgdt) is APGDT and (apgdt.steps, apgdt.n_restarts, apgdt.n_target_classes) == (100, 1, 9)
    assert apgdt.loss_name == "dlr-targeted"
    assert type(fab) is FAB and (fab.steps, fab.n_restarts, fab.targeted, fab.n_target_classes) == (100, 1, True, 9)
    assert (fab.alpha_max, fab.eta, fab.beta) == (0.1, 1.05, 0.9)
    assert type(square) is Square and (square.n_queries, square.p_init, square.n_restarts) == (5000, 0.8, 1)
    assert all(a.eps == 8 / 255 and a.norm == "Linf" for a in auto.attacks.values())
