"""Invariants every attack keeps, on image-shaped and sequence-shaped inputs: the result lies in
the eps-ball of the attack's norm and in [0, 1], is detached, has the input's shape and dtype;
every forward pass runs in eval mode and the model's per-submodule train/eval modes are restored
after; the weights, their .grad and the buffers (batch-norm statistics) are not touched; a seed
makes the result reproducible."""
import pytest
import torch
from advssm.adv_train.attacks import APGD, APGDT, FAB, FGSM, PGD, AutoAttack, Square, per_example_norm
from torch import nn

EPS = {"Linf": 0.1, "L2": 0.5}
SHAPES = {"image": (2, 4, 4), "sequence": (12, 3)}


class Net(nn.Module):
    """A small classifier with dropout and batch norm, so train and eval mode differ."""

    def __init__(self, n_features: int, n_classes: int = 5):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n_features, 24), nn.BatchNorm1d(24), nn.ReLU(),
                                  nn.Dropout(0.3))
        self.head = nn.Linear(24, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


ATTACKS = {
    "fgsm": lambda m, norm: FGSM(m, EPS[norm], norm=norm, seed=1),
    "pgd": lambda m, norm: PGD(m, EPS[norm], alpha=EPS[norm] / 4, steps=5, norm=norm, restarts=2, seed=1),
    "apgd-ce": lambda m, norm: APGD(m, norm=norm, eps=EPS[norm], steps=8, n_restarts=2, seed=1),
    "apgd-dlr": lambda m, norm: APGD(m, norm=norm, eps=EPS[norm], steps=8, loss="dlr", seed=1),
    "apgd-t": lambda m, norm: APGDT(m, norm=norm, eps=EPS[norm], steps=8, n_target_classes=2, seed=1),
    "fab-t": lambda m, norm: FAB(m, norm=norm, eps=EPS[norm], steps=5, n_restarts=2, n_target_classes=2, seed=1),
    "fab": lambda m, norm: FAB(m, norm=norm, eps=EPS[norm], steps=5, targeted=False, seed=1),
    "square": lambda m, norm: Square(m, eps=EPS[norm], n_queries=30, seed=1, norm=norm),
    "apgd-eot": lambda m, norm: APGD(m, norm=norm, eps=EPS[norm], steps=4, seed=1, eot_iter=3),
    "autoattack": lambda m, norm: AutoAttack(m, norm=norm, eps=EPS[norm], version="custom", seed=1, attacks=[
        APGD(m, norm=norm, eps=EPS[norm], steps=5, seed=1), FAB(m, norm=norm, eps=EPS[norm], steps=3, seed=1)]),
    # the full standard ensemble at the paper's budgets: about a second on this model
    "autoattack-standard": lambda m, norm: AutoAttack(m, norm=norm, eps=EPS[norm], seed=1),
}
CASES = [(name, norm) for name in ATTACKS for norm in ("Linf", "L2")]


def setup(shape_name: str, seed: int = 0):
    torch.manual_seed(seed)
    shape = SHAPES[shape_name]
    model = Net(torch.Size(shape).numel())
    model.train()
    model.body[2].eval()  # a submodule in a different mode than its parent must get its own mode back
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    x = torch.rand(6, *shape)
    y = torch.randint(0, 5, (6,))
    return model, x, y


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize(("name", "norm"), CASES)
def test_attack_invariants(name, norm, shape_name):
    model, x, y = setup(shape_name)
    modes = [m.training for m in model.modules()]
    weights = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    x_before = x.clone()
    attack = ATTACKS[name](model, norm)
    modes_seen = []  # the mode of every submodule at every forward pass during the attack
    hook = model.register_forward_pre_hook(lambda module, args: modes_seen.append(
        [m.training for m in module.modules()]))

    x_adv = attack(x, y)

    hook.remove()
    assert modes_seen and not any(any(seen) for seen in modes_seen), "every forward pass runs in eval mode"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert torch.equal(x, x_before)
    assert float(per_example_norm(x_adv - x, norm).max()) <= EPS[norm] * (1 + 1e-6)
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers)), "batch-norm statistics untouched"
    assert torch.equal(attack(x, y), x_adv), "same seed, same inputs: same result"


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_weights_without_grad_get_none(name, norm):
    """A model whose weights have no .grad yet still has none after an attack."""
    model, x, y = setup("sequence")
    model.zero_grad(set_to_none=True)
    ATTACKS[name](model, norm)(x, y)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_mode_restored_when_the_attack_fails(name, norm):
    model, x, y = setup("image")
    modes = [m.training for m in model.modules()]
    with pytest.raises(ValueError, match="labels must lie in"):
        ATTACKS[name](model, norm)(x, torch.full_like(y, 7))
    assert [m.training for m in model.modules()] == modes


def test_seed_none_follows_the_global_rng():
    model, x, y = setup("image")
    attack = PGD(model, 0.1, alpha=0.02, steps=2, random_start=True)
    torch.manual_seed(5)
    first = attack(x, y)
    torch.manual_seed(5)
    assert torch.equal(attack(x, y), first)
    assert not torch.equal(attack(x, y), first), "a fresh draw without re-seeding"


def test_different_seeds_give_different_random_starts():
    model, x, y = setup("sequence")
    a = PGD(model, 0.1, alpha=0.0, steps=1, seed=1)(x, y)
    b = PGD(model, 0.1, alpha=0.0, steps=1, seed=2)(x, y)
    assert not torch.equal(a, b)


def test_float64_inputs_stay_float64():
    model, x, y = setup("image")
    model.double()
    x_adv = APGD(model, eps=0.1, steps=3)(x.double(), y)
    assert x_adv.dtype == torch.float64
