"""The analysis on vision models: the LTI bound for causal patch models, a note for non-causal scans."""
from __future__ import annotations

import pytest
import torch
from advssm.ads import attach_ads, propagation_analysis
from advssm.ads.analysis import lti_bound_note
from advssm.ssm_layers import ModelConfig, build_model


def perturbed(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (x + 0.05 * (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1)).clamp(0, 1)


def test_a_causal_patch_model_keeps_the_lti_bound_and_it_holds():
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer="s4d", d_input=3, d_model=8, d_state=4, n_layers=2, patch_size=2,
                                    cls_token=True, pos_embed=True, image_size=8)).double()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    report = propagation_analysis(model, x, perturbed(x))
    ratios = [r["bound_ratio"] for r in report.rows if r["component"] == "mix"]
    assert len(ratios) == 2 and all(0 < r <= 1 + 1e-9 for r in ratios)
    assert "lti_bound" not in report.meta and lti_bound_note(model) is None


@pytest.mark.parametrize("scan", ["bidirectional", "cross2d"])
def test_a_non_causal_scan_of_lti_layers_says_why_the_bound_is_not_checked(scan):
    torch.manual_seed(0)
    model = build_model(ModelConfig(layer="s4d", d_input=3, d_model=8, d_state=4, n_layers=2, patch_size=2,
                                    scan=scan)).double()
    attach_ads(model)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    report = propagation_analysis(model, x, perturbed(x))
    assert report.meta["lti_bound"].startswith(f"not applicable: the layers are LTI but the {scan} scan")
    assert all(r["bound"] is None for r in report.rows)
    assert f"LTI bound: not applicable: the layers are LTI but the {scan} scan" in report.to_markdown()
    assert [r["name"] for r in report.rows][:3] == ["input", "embedding", "blocks.0.mix"]


def test_selective_layers_need_no_note():
    model = build_model(ModelConfig(layer="s6", d_model=8, d_state=4, n_layers=1, scan="bidirectional"))
    assert lti_bound_note(model) is None
