"""IBP's certificates against the attack suite: on a small S4D model trained here on synthetic waves, no attack
(PGD with restarts, APGD-CE, APGD-DLR) breaks an example IBP verified, nor reaches a margin below IBP's bound."""
import pytest
import torch
import torch.nn.functional as F
from advssm.ads import ibp
from advssm.adv_train.attacks import APGD, PGD, margin_loss
from advssm.ssm_layers import ModelConfig, build_model


def waves(n, seed):
    """Three classes of 2-channel sequences of length 24 in [0, 1]: a sine of the class's frequency in channel 0,
    its cosine in channel 1, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    t = torch.arange(24, dtype=torch.float32)
    freq = (1.0 + y.float())[:, None] * 2 * torch.pi / 24
    phase = 2 * torch.pi * torch.rand(n, 1, generator=g)
    x = torch.stack([torch.sin(freq * t + phase), torch.cos(freq * t + phase)], dim=-1)
    return (0.5 + 0.3 * x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """(model, x, y): S4D, d_model 8, one block, 200 Adam steps on the waves; 100 test sequences."""
    x_train, y_train = waves(512, 0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer="s4d", d_input=2, d_model=8, d_state=4, n_layers=1, n_classes=3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(len(x_train), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
    model.eval()
    x, y = waves(100, 1)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9, "the model should have learned the waves"
    return model, x, y


@pytest.mark.parametrize("eps", [0.001, 0.002])  # IBP verifies 75 % and 25 % there, nothing at 0.005
def test_no_attack_breaks_a_verified_example(trained, eps):
    model, x, y = trained
    bounds = ibp.margin_lower_bounds(model, x, y, eps).amin(1)  # lower bound of z_y - max_{j != y} z_j
    verified = bounds > 0
    assert verified.sum() >= 10, f"too few verified examples at eps {eps} to test anything: {int(verified.sum())}"
    xv, yv, bv = x[verified], y[verified], bounds[verified]
    attacks = {"pgd": PGD(model, eps=eps, alpha=eps / 4, steps=20, restarts=2, random_start=True, seed=0),
               "apgd-ce": APGD(model, eps=eps, steps=20, loss="ce", seed=0),
               "apgd-dlr": APGD(model, eps=eps, steps=20, loss="dlr", seed=0)}
    for name, attack in attacks.items():
        x_adv = attack(xv, yv)
        assert (x_adv - xv).abs().max() <= eps + 1e-6
        with torch.no_grad():
            reached = -margin_loss(model(x_adv), yv).double()  # z_y - max_{j != y} z_j at the attack's point
        assert (reached > 0).all(), f"{name} broke a verified example at eps {eps}"
        # the margin the attack leaves is never below the bound IBP proved (up to float32 rounding of the model)
        assert (reached >= bv - 1e-4).all(), (name, float((bv - reached).max()))
