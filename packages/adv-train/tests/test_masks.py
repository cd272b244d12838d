"""Masked threat models: for every attack, the perturbation is exactly zero where the mask is 0 (bitwise:
x_adv == x there) and the norm bound holds over the masked coordinates; masked PGD reaches the linear
closed form (Linf: eps * sign(w) on the masked coordinates; L2: eps * w_m / ||w_m||_2, w_m = w on the
mask); AutoAttack passes the mask to every component; bad masks get one clear error."""
import pytest
import torch
from advssm.adv_train.attacks import APGD, APGDT, FAB, FGSM, PGD, AutoAttack, Square, build, per_example_norm
from advssm.adv_train.threat_models import patch, window
from torch import nn

EPS = {"Linf": 0.1, "L2": 0.5, "L1": 1.0}


def net(n_features: int, n_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_features, 32), nn.Tanh(), nn.Linear(32, n_classes))


ATTACKS = {
    "fgsm": lambda m, norm: FGSM(m, EPS[norm], norm=norm),
    "pgd": lambda m, norm: PGD(m, EPS[norm], alpha=EPS[norm] / 4, steps=5, norm=norm, restarts=2, seed=1),
    "apgd-ce": lambda m, norm: APGD(m, norm=norm, eps=EPS[norm], steps=8, n_restarts=2, seed=1),
    "apgd-t": lambda m, norm: APGDT(m, norm=norm, eps=EPS[norm], steps=8, n_target_classes=2, seed=1),
    "fab-t": lambda m, norm: FAB(m, norm=norm, eps=EPS[norm], steps=5, n_restarts=2, n_target_classes=2, seed=1),
    "fab": lambda m, norm: FAB(m, norm=norm, eps=EPS[norm], steps=5, targeted=False, seed=1),
    "square": lambda m, norm: Square(m, eps=EPS[norm], n_queries=40, seed=1, norm=norm),
    "autoattack": lambda m, norm: AutoAttack(m, norm=norm, eps=EPS[norm], version="custom", seed=1, attacks=[
        APGD(m, norm=norm, eps=EPS[norm], steps=5, seed=1), FAB(m, norm=norm, eps=EPS[norm], steps=3, seed=1),
        Square(m, eps=EPS[norm], n_queries=20, seed=1, norm=norm)]),
}
CASES = [(name, norm) for name in ATTACKS for norm in EPS]
# per example a different mask shape: a window of a sequence, a patch of an image, a random 0/1 float mask
LAYOUTS = {
    "sequence-window": ((6, 12, 3), lambda x: window(start=3, length=4).mask(x)),
    "image-patch": ((6, 2, 6, 6), lambda x: patch(top=1, left=2, size=3).mask(x)),
    "per-example-float": ((6, 12, 3), lambda x: (torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
                                                 < 0.3).float()),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("name", "norm"), CASES)
def test_perturbation_is_exactly_zero_outside_the_mask(name, norm, layout):
    shape, make_mask = LAYOUTS[layout]
    torch.manual_seed(1)
    x = torch.rand(*shape)
    y = torch.randint(0, 5, (shape[0],))
    model = net(x[0].numel())
    mask = make_mask(x)
    attack = ATTACKS[name](model, norm)
    x_adv = attack(x, y, mask=mask)
    outside = ~mask.bool().expand(x.shape)
    assert torch.equal(x_adv[outside], x[outside]), "bitwise unchanged outside the mask"
    assert float(per_example_norm(x_adv - x, norm).max()) <= EPS[norm] * (1 + 1e-5)
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    if name in ("pgd", "fgsm", "apgd-ce", "autoattack"):  # these always move: the mask does not freeze them
        assert (x_adv != x).any()
    assert attack.mask is None, "the call's mask is not kept after the call"


def test_masked_attacks_still_find_adversarial_examples():
    """On a model that a full-input attack breaks easily, each attack restricted to half of the positions
    still breaks most examples (the mask must not disable the search)."""
    torch.manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(32, 16, 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 3))
    y = model(x).argmax(1).detach()
    mask = window(start=0, length=8).mask(x)
    for name, norm, eps in [("pgd", "Linf", 0.3), ("apgd-ce", "Linf", 0.3), ("fab-t", "Linf", 0.3),
                            ("square", "Linf", 0.3), ("apgd-ce", "L2", 2.0), ("fab-t", "L2", 2.0),
                            ("square", "L2", 2.0), ("apgd-ce", "L1", 4.0), ("fab-t", "L1", 4.0),
                            ("square", "L1", 4.0)]:
        attack = build(name, model, norm=norm, eps=eps, seed=0, **({"aa_steps": 30} if name != "pgd" else {}))
        full = (model(attack(x, y)).argmax(1) != y).float().mean()
        masked = (model(attack(x, y, mask=mask)).argmax(1) != y).float().mean()
        assert full > 0.9, (name, norm, full)
        assert masked > 0.5, (name, norm, masked)


def _linear(seed: int, d: int):
    torch.manual_seed(seed)
    return nn.Linear(d, 2).double()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_masked_pgd_reaches_the_linear_closed_form(norm, seed):
    """Binary linear model: the margin z_y - z_other moves by -<w_y, delta> with w_y = +-(W[1] - W[0]). Within
    the mask the best Linf step is eps * sign(w_y) on the masked coordinates (margin -eps ||w_m||_1), the best
    L2 one eps * w_m / ||w_m||_2 (margin -eps ||w_m||_2); the box is out of reach."""
    d, eps = 24, 0.05
    model = _linear(seed, d)
    g = torch.Generator().manual_seed(seed)
    x = eps + (1 - 2 * eps) * torch.rand(10, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (10,), generator=g)
    mask = torch.rand(1, d, generator=g) < 0.4
    w = (model.weight[1] - model.weight[0]).detach()
    w_y = torch.where(y[:, None] == 1, -w, w) * mask  # lowers the margin of label y, masked
    expected = x + eps * (w_y.sign() if norm == "Linf" else w_y / w_y.norm(dim=1, keepdim=True))
    steps, alpha = (5, eps) if norm == "Linf" else (60, eps / 2)
    x_adv = PGD(model, eps, alpha=alpha, steps=steps, random_start=True, norm=norm, seed=seed)(x, y, mask=mask)

    def margin(z):
        logits = model(z).detach()
        return logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, 1 - y[:, None]).squeeze(1)

    dual = w_y.abs().sum(1) if norm == "Linf" else w_y.norm(dim=1)
    torch.testing.assert_close(margin(x_adv), margin(x) - eps * dual, rtol=0, atol=1e-10)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6 if norm == "L2" else 0)
    assert torch.equal(x_adv[:, ~mask[0]], x[:, ~mask[0]])


def test_autoattack_passes_the_mask_to_every_component():
    seen = []

    class Spy(PGD):
        def perturb(self, x, y, generator):
            seen.append(None if self.mask is None else self.mask.clone())
            return super().perturb(x, y, generator)

    torch.manual_seed(0)
    x, y = torch.rand(4, 10, 2), torch.tensor([0, 1, 2, 0])
    model = net(20, 3)
    parts = [Spy(model, 0.01, alpha=0.001, steps=1, seed=0), Spy(model, 0.01, alpha=0.001, steps=1, seed=1)]
    mask = window(2, 3).mask(x)
    AutoAttack(model, eps=0.01, version="custom", attacks=parts)(x, y, mask=mask)
    assert len(seen) == 2 and all(m is not None and torch.equal(m, mask.expand(m.shape)) for m in seen)


def test_threat_model_attribute_is_the_default_mask_and_is_described():
    torch.manual_seed(0)
    x, y = torch.rand(3, 12, 2), torch.tensor([0, 1, 2])
    model = net(24, 3)
    tm = window(start=4, length=2)
    attack = build("pgd", model, eps=0.1, seed=0, threat_model=tm)
    x_adv = attack(x, y)
    assert torch.equal(x_adv, build("pgd", model, eps=0.1, seed=0)(x, y, mask=tm.mask(x)))
    assert torch.equal(x_adv[:, :4], x[:, :4]) and torch.equal(x_adv[:, 6:], x[:, 6:])
    assert attack.describe()["threat_model"] == "window(start=4,length=2)"
    assert "threat_model" not in build("pgd", model, eps=0.1).describe()


@pytest.mark.parametrize(("mask", "message"), [
    (torch.ones(5, 7), "does not broadcast"),
    (torch.full((1, 12, 1), 0.5), "only 0 and 1"),
    ([1, 0], "torch.Tensor"),
])
def test_bad_masks_are_refused_clearly(mask, message):
    model = net(24, 3)
    with pytest.raises((ValueError, TypeError), match=message):
        PGD(model, 0.1, alpha=0.01, steps=1)(torch.rand(3, 12, 2), torch.tensor([0, 1, 2]), mask=mask)


def test_unmasked_call_is_unchanged_by_an_all_ones_mask():
    """An all-ones mask is the unmasked threat model: the same result, bit for bit (same seed)."""
    torch.manual_seed(0)
    x, y = torch.rand(4, 12, 2), torch.tensor([0, 1, 2, 0])
    model = net(24, 3)
    for name in ("pgd", "apgd-ce", "fab-t", "square"):
        attack = build(name, model, eps=0.1, seed=3, **({"aa_steps": 5} if name != "pgd" else {}))
        assert torch.equal(attack(x, y), attack(x, y, mask=torch.ones(1, 12, 1))), name
