"""AdaptiveScaling against a hand computation, its variants, its errors and its registration."""
from __future__ import annotations

import math

import advssm.ssm_layers.transforms as transforms
import pytest
import torch
from advssm.ads import AdaptiveScaling
from advssm.ssm_layers import build_transform, get_transform

SCALAR_ACT = {
    "relu": lambda v: max(v, 0.0),
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v)),
    "tanh": math.tanh,
}
W_SCALE = [[1.0, -0.5, 0.0], [0.25, 2.0, -1.0], [-1.5, 0.0, 0.5]]
B_SCALE = [0.1, -0.2, 0.3]
W_SHIFT = [[0.0, 1.0, -1.0], [0.5, -0.5, 0.0], [1.0, 1.0, 1.0]]
B_SHIFT = [-0.3, 0.0, 0.2]


def _set_linear(linear: torch.nn.Linear, weight, bias=None) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float64))


def _by_hand(y_token: list[float], act, shift: bool) -> list[float]:
    """One token through AdS, scalar arithmetic only."""
    out = []
    for i in range(3):
        pre_scale = sum(W_SCALE[i][j] * y_token[j] for j in range(3)) + (B_SCALE[i] if shift else 0.0)
        value = act(pre_scale) * y_token[i]
        if shift:
            value += act(sum(W_SHIFT[i][j] * y_token[j] for j in range(3)) + B_SHIFT[i])
        out.append(value)
    return out


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_formula_matches_hand_computation(activation, shift):
    ads = AdaptiveScaling(3, activation=activation, shift=shift).double()
    _set_linear(ads.scale_proj, W_SCALE, B_SCALE if shift else None)
    if shift:
        _set_linear(ads.shift_proj, W_SHIFT, B_SHIFT)
    y = torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.tensor([[_by_hand(tok.tolist(), SCALAR_ACT[activation], shift) for tok in seq] for seq in y],
                            dtype=torch.float64)
    torch.testing.assert_close(ads(y), expected, rtol=1e-12, atol=1e-12)


def test_scale_only_variant_has_no_bias_and_no_shift():
    ads = AdaptiveScaling(5, shift=False)
    assert ads.scale_proj.bias is None and ads.shift_proj is None
    assert sum(p.numel() for p in ads.parameters()) == 5 * 5
    assert sum(p.numel() for p in AdaptiveScaling(5).parameters()) == 2 * (5 * 5 + 5)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_gradients_match_finite_differences(activation):
    torch.manual_seed(0)
    ads = AdaptiveScaling(4, activation=activation).double()
    y = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ads(t), (y,))


def test_default_init_damps_rather_than_amplifies():
    torch.manual_seed(0)
    ads = AdaptiveScaling(64)
    y = torch.randn(4096, 64)
    with torch.no_grad():
        ratio = float(ads(y).norm() / y.norm())
    assert 0.2 < ratio < 1.2


@pytest.mark.parametrize("d_model", [0, -3, 2.5, True, "8"])
def test_bad_d_model_is_rejected(d_model):
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        AdaptiveScaling(d_model)


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="unknown activation 'gelu'; choose one of relu, sigmoid, tanh"):
        AdaptiveScaling(4, activation="gelu")


def test_shift_must_be_bool():
    with pytest.raises(TypeError, match="shift must be True or False"):
        AdaptiveScaling(4, shift="yes")


def test_wrong_feature_size_is_rejected():
    with pytest.raises(ValueError, match=r"expects inputs of shape \(\.\.\., 4\), got \(2, 5\)"):
        AdaptiveScaling(4)(torch.zeros(2, 5))


def test_registered_as_ads_through_the_entry_point(monkeypatch):
    # Drop any cached class so the lookup has to go through the entry point.
    monkeypatch.setattr(transforms, "_REGISTRY", {k: v for k, v in transforms._REGISTRY.items() if k != "ads"})
    assert get_transform("ads") is AdaptiveScaling
    module = build_transform("ads", 6, activation="tanh", shift=False)
    assert isinstance(module, AdaptiveScaling)
    assert (module.d_model, module.activation, module.shift) == (6, "tanh", False)
