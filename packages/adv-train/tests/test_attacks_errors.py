"""Bad arguments and bad inputs fail at once with one clear message naming the problem."""
import pytest
import torch
from advssm.adv_train.attacks import APGD, APGDT, FAB, FGSM, PGD, AutoAttack, Square
from torch import nn

MODEL = nn.Sequential(nn.Flatten(), nn.Linear(8, 5))
X = torch.rand(4, 8)
Y = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: PGD(MODEL, -0.1, alpha=0.01), ValueError, "eps must be a finite number >= 0"),
    (lambda: PGD(MODEL, float("nan"), alpha=0.01), ValueError, "eps must be a finite number >= 0"),
    (lambda: PGD(MODEL, "0.1", alpha=0.01), TypeError, "eps must be a real number"),
    (lambda: PGD(MODEL, 0.1, alpha=-1), ValueError, "alpha must be a finite number >= 0"),
    (lambda: PGD(MODEL, 0.1, alpha=0.01, norm="L0"), ValueError, "unknown norm 'L0'"),
    (lambda: PGD(MODEL, 0.1, alpha=0.01, steps=0), ValueError, "steps must be an integer >= 1"),
    (lambda: PGD(MODEL, 0.1, alpha=0.01, loss="hinge"), ValueError, "unknown loss 'hinge'"),
    (lambda: PGD(lambda x: x, 0.1, alpha=0.01), TypeError, "model must be a torch.nn.Module"),
    (lambda: PGD(MODEL, 0.1, alpha=0.01, seed=1.5), TypeError, "seed must be an int or None"),
    (lambda: APGD(MODEL, eps=0.1, rho=0), ValueError, "rho must lie in"),
    (lambda: APGD(MODEL, eps=0.1, n_restarts=0), ValueError, "n_restarts must be an integer >= 1"),
    (lambda: APGDT(MODEL, eps=0.1, loss="ce"), ValueError, "unknown targeted loss 'ce'"),
    (lambda: FAB(MODEL, eps=0.1, beta=0), ValueError, "0 < beta <= 1"),
    (lambda: Square(MODEL, 0.1, p_init=0), ValueError, "p_init must lie in"),
    (lambda: AutoAttack(MODEL, eps=0.1, version="rand", attacks=["apgd-ce"]), ValueError, "version='custom'"),
    (lambda: APGD(MODEL, eps=0.1, eot_iter=0), ValueError, "eot_iter must be an integer >= 1"),
    (lambda: AutoAttack(MODEL, eps=0.1, version="plus"), ValueError, "unknown version 'plus'"),
    (lambda: AutoAttack(MODEL, eps=0.1, attacks=["apgd-ce"]), ValueError, "version='custom'"),
    (lambda: AutoAttack(MODEL, eps=0.1, version="custom"), ValueError, "non-empty list"),
    (lambda: AutoAttack(MODEL, eps=0.1, version="custom", attacks=["apgd-xx"]), ValueError, "unknown AutoAttack"),
    (lambda: AutoAttack(MODEL, eps=0.1, version="custom", attacks=[APGD(MODEL, eps=0.2)]), ValueError,
     "must agree"),
    (lambda: AutoAttack(MODEL, eps=0.1, version="custom", attacks=[3]), TypeError, "names or Attack instances"),
])
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(("x", "y", "error", "match"), [
    (X, Y.float(), TypeError, "labels y must be an integer tensor"),
    (X, Y[:, None], ValueError, r"labels y must have shape \(batch,\)"),
    (X, Y[:3], ValueError, "disagree on the batch size: 4 inputs, 3 labels"),
    (X * 2, Y, ValueError, r"inputs must lie in \[0, 1\]"),
    (X - 0.5, Y, ValueError, "move any normalisation inside the model"),
    (X.long(), Y, TypeError, "inputs x must be a floating-point tensor"),
    (X[0], Y, ValueError, "at least 2 dims"),
    (X, Y + 2, ValueError, r"labels must lie in \[0, 5\)"),
])
def test_bad_inputs(x, y, error, match):
    with pytest.raises(error, match=match):
        FGSM(MODEL, 0.1)(x, y)


def test_dlr_losses_name_the_class_requirement():
    two_classes = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="dlr loss needs at least 3 classes"):
        APGD(two_classes, eps=0.1, steps=2, loss="dlr")(X, Y % 2)
    with pytest.raises(ValueError, match="dlr-targeted loss needs at least 4 classes"):
        APGDT(nn.Sequential(nn.Flatten(), nn.Linear(8, 3)), eps=0.1, steps=2)(X, Y % 3)


def test_model_must_return_logits():
    with pytest.raises(ValueError, match=r"logits of shape \(batch, classes\)"):
        FGSM(nn.Identity(), 0.1)(torch.rand(4, 2, 3), Y)


@pytest.mark.parametrize("seed", range(3))
def test_square_rejects_five_dimensional_inputs(seed):
    torch.manual_seed(seed)  # whatever the model predicts, even if every example is already misclassified
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 5))
    with pytest.raises(ValueError, match=r"\(B, D\), \(B, L, C\) or \(B, C, H, W\)"):
        Square(model, 0.1, n_queries=2)(torch.rand(4, 1, 2, 2, 2), Y)


def test_dlr_class_requirement_holds_even_when_every_example_is_already_misclassified():
    """The check must not depend on the model's accuracy: an attack skips the examples it does not need to
    attack, so a loss that is never evaluated would let a 3-class model through the targeted DLR attack."""
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        wrong[1].weight.zero_()
        wrong[1].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))  # always class 2
    y = torch.zeros(len(X), dtype=torch.long)  # every label 0: every example is fooled before the attack
    with pytest.raises(ValueError, match="dlr-targeted loss needs at least 4 classes"):
        APGDT(wrong, eps=0.1, steps=2)(X, y)
    two = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        two[1].weight.zero_()
        two[1].bias.copy_(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="dlr loss needs at least 3 classes"):
        APGD(two, eps=0.1, steps=2, loss="dlr")(X, torch.zeros(len(X), dtype=torch.long))
