"""The L-inf bound of linear time-invariant layers: the measured mix error never exceeds it.

For y = K * u + D u (causal), max_t |dy_h| <= sum_i (||K_hi||_1 + |D_hi|) max_t |du_i|. The
bound is only meaningful if ``conv_kernel`` really describes ``mix``, so that is checked
too, against a plain float64 loop.
"""
from __future__ import annotations

import pytest
import torch
from advssm.ads import attach_ads, kernel_gain, propagation_analysis

LTI_LAYERS = ["s4", "s4d", "dss", "s5"]
SEEDS = range(6)


@pytest.mark.parametrize("layer", LTI_LAYERS)
def test_measured_mix_error_never_exceeds_the_kernel_bound(tiny_model, layer):
    for seed in SEEDS:
        # Vary the setting with the seed: pre/post norm, AdS on or off, perturbation size and shape.
        model = tiny_model(layer, seed=seed, prenorm=seed % 2 == 1).double()
        if seed % 3 == 2:
            attach_ads(model, activation="tanh")
        g = torch.Generator().manual_seed(1000 + seed)
        x = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64)
        eps = 10 ** (-3 + 2.5 * torch.rand((), generator=g, dtype=torch.float64).item())
        noise = 2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1
        delta = eps * (noise.sign() if seed % 2 == 0 else noise)
        report = propagation_analysis(model, x, x_adv=(x + delta).clamp(0.0, 1.0))
        mix_rows = [r for r in report.rows if r["component"] == "mix"]
        assert len(mix_rows) == 2
        for row in mix_rows:
            assert row["bound"] > 0 and row["linf_error"] > 0, (layer, seed, row)
            assert row["bound_ratio"] <= 1.0 + 1e-6, (layer, seed, row)
            assert row["linf_error"] <= row["bound"] * (1.0 + 1e-6)


def _dense(K: torch.Tensor, D: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Any conv_kernel output as a MIMO (H_out, H_in, L) kernel and a (H_out, H_in) feedthrough."""
    K = K.detach().double()
    if K.dim() == 2:
        K = torch.diag_embed(K.T).permute(1, 2, 0)  # (L, H, H) diagonal -> (H, H, L)
    H_out, H_in = K.shape[:2]
    if D is None:
        D = torch.zeros(H_out, H_in, dtype=torch.float64)
    D = D.detach().double()
    return K, torch.diag(D) if D.dim() == 1 else D


@pytest.mark.parametrize("layer", LTI_LAYERS)
def test_mix_is_the_causal_convolution_its_kernel_describes(tiny_model, layer):
    model = tiny_model(layer, seed=3).double()
    lti = model.blocks[0].layer
    u = torch.randn(2, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    K, D = _dense(*lti.conv_kernel(u.shape[1]))
    expected = torch.zeros(2, 12, K.shape[0], dtype=torch.float64)
    for t in range(u.shape[1]):
        expected[:, t] = u[:, t] @ D.T
        for lag in range(t + 1):
            expected[:, t] += u[:, t - lag] @ K[:, :, lag].T
    with torch.no_grad():
        torch.testing.assert_close(lti.mix(u), expected, rtol=1e-5, atol=1e-6)


def test_kernel_gain_by_hand():
    K = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    torch.testing.assert_close(kernel_gain(K, torch.tensor([0.5, -1.0])), torch.tensor([[4.0, 0.0], [0.0, 5.0]]))
    torch.testing.assert_close(kernel_gain(K, None), torch.tensor([[3.5, 0.0], [0.0, 4.0]]))
    mimo = torch.tensor([[[1.0, -1.0], [0.0, 2.0]], [[-3.0, 0.0], [0.5, 0.5]]])  # (2, 2, 2)
    full_d = torch.tensor([[1.0, -2.0], [0.0, 0.25]])
    torch.testing.assert_close(kernel_gain(mimo, full_d), torch.tensor([[3.0, 4.0], [3.0, 1.25]]))
    torch.testing.assert_close(kernel_gain(mimo, torch.tensor([-1.0, 2.0])), torch.tensor([[3.0, 2.0], [3.0, 3.0]]))
    with pytest.raises(ValueError, match=r"expected \(H, L\) or \(H_out, H_in, L\)"):
        kernel_gain(torch.zeros(2), None)


def test_bound_is_attained_by_a_sign_aligned_perturbation(tiny_model):
    # Guards against a loose bound: du = sign(K reversed) at one channel makes dy at the last step
    # equal ||K_h||_1 + D_h sign(K_h,0), so the ratio reaches (||K||_1 - |D|) / (||K||_1 + |D|) at least.
    lti = tiny_model("s4d", seed=1).double().blocks[0].layer
    L, h = 16, 2
    K, D = (t.detach().double() for t in lti.conv_kernel(L))
    du = torch.zeros(1, L, K.shape[0], dtype=torch.float64)
    du[0, :, h] = K[h].flip(0).sign()
    with torch.no_grad():
        dy = lti.mix(du)[0, :, h]  # mix is linear: mix(u + du) - mix(u) = mix(du)
    gain = kernel_gain(K, D)[h, h]
    assert dy.abs().max() <= gain * (1 + 1e-9)
    assert dy.abs().max() >= K[h].abs().sum() - D[h].abs() - 1e-9
