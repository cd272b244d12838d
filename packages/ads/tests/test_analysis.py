"""propagation_analysis: its rows against independent computations, its inputs, its outputs."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from advssm.ads import attach_ads, propagation_analysis

BLOCK_COMPONENTS = ["mix", "transform", "project", "residual", "norm"]


def _inputs(seed: int = 0, eps: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 4, 4, generator=g)
    return x, (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0.0, 1.0)


def test_rows_follow_the_forward_order(tiny_model):
    report = propagation_analysis(tiny_model("s4d"), *_inputs())
    names = [r["name"] for r in report.rows]
    assert names == ["input", "embedding", *[f"blocks.{i}.{c}" for i in range(2) for c in BLOCK_COMPONENTS],
                     "pool", "logits"]
    assert [r["block"] for r in report.rows] == [None, None] + [0] * 5 + [1] * 5 + [None, None]
    assert [r["component"] for r in report.rows] == ["input", "embedding", *BLOCK_COMPONENTS * 2, "pool", "logits"]
    with_bound = [r["name"] for r in report.rows if r["bound"] is not None]
    assert with_bound == ["blocks.0.mix", "blocks.1.mix"]
    assert report.rows[0]["change_rate"] is None
    assert report.n_examples == 4 and report.meta == {"layer": "s4d", "transform": "identity"}


def test_numbers_match_an_independent_computation(tiny_model):
    model = attach_ads(tiny_model("s4d"), layers=[1])
    x, x_adv = _inputs(1)
    report = propagation_analysis(model, x, x_adv=x_adv)
    with torch.no_grad():
        clean, adv = model.forward_trace(x), model.forward_trace(x_adv)
    previous = None
    for row in report.rows:
        a, b = clean[row["name"]].double(), adv[row["name"]].double()
        per_example = [float((b[i] - a[i]).norm() / a[i].norm()) for i in range(a.shape[0])]
        error = sum(per_example) / len(per_example)
        mse = float(((b - a) ** 2).sum() / a.numel())
        # KL of the softmax over features, one vector (token, or example for pool / logits) at a time
        vectors_p, vectors_q = a.reshape(-1, a.shape[-1]).softmax(-1), b.reshape(-1, b.shape[-1]).softmax(-1)
        kl = sum(float((p * (p / q).log()).sum()) for p, q in zip(vectors_p, vectors_q)) / vectors_p.shape[0]
        assert row["rel_error"] == pytest.approx(error, rel=1e-9)
        assert row["mse"] == pytest.approx(mse, rel=1e-9)
        assert row["kl"] == pytest.approx(kl, rel=1e-6, abs=1e-15)
        if previous is not None:
            assert row["change_rate"] == pytest.approx((error - previous[0]) / previous[0], rel=1e-9)
            assert row["mse_change_rate"] == pytest.approx((mse - previous[1]) / previous[1], rel=1e-9)
            if previous[2] > 0:
                assert row["kl_change_rate"] == pytest.approx((kl - previous[2]) / previous[2], rel=1e-5)
            else:
                assert row["kl_change_rate"] is None
        previous = error, mse, kl
    assert report.rows[-1]["kl"] == report.kl
    kl = 0.0
    for logits_p, logits_q in zip(clean["logits"].double(), adv["logits"].double()):
        p, q = logits_p.softmax(-1).tolist(), logits_q.softmax(-1).tolist()
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / x.shape[0]
    assert report.kl == pytest.approx(kl, rel=1e-9) and report.kl > 0
    rates = {r["name"]: r["change_rate"] for r in report.rows}
    assert rates["blocks.0.transform"] == 0.0  # identity slot: the error passes unchanged
    assert rates["blocks.1.transform"] != 0.0  # AdS changes it
    assert report.block_mse() == [r["mse"] for r in report.rows if r["name"] in ("blocks.0.norm", "blocks.1.norm")]


def test_bound_matches_an_independent_loop(tiny_model):
    model = tiny_model("s4d", seed=5)
    x, x_adv = _inputs(5, eps=0.2)
    report = propagation_analysis(model, x, x_adv=x_adv)
    with torch.no_grad():
        clean, adv = model.forward_trace(x), model.forward_trace(x_adv)
    for i, block in enumerate(model.blocks):
        row = next(r for r in report.rows if r["name"] == f"blocks.{i}.mix")
        before = "embedding" if i == 0 else f"blocks.{i - 1}.norm"
        du = adv[before].double() - clean[before].double()
        dy = adv[f"blocks.{i}.mix"].double() - clean[f"blocks.{i}.mix"].double()
        K, D = (t.detach().double() for t in block.layer.conv_kernel(x[0].numel()))
        worst_ratio, largest_bound = 0.0, 0.0
        for b in range(x.shape[0]):
            for h in range(K.shape[0]):
                bound = (float(K[h].abs().sum()) + abs(float(D[h]))) * float(du[b, :, h].abs().max())
                worst_ratio = max(worst_ratio, float(dy[b, :, h].abs().max()) / bound)
                largest_bound = max(largest_bound, bound)
        assert row["bound"] == pytest.approx(largest_bound, rel=1e-9)
        assert row["bound_ratio"] == pytest.approx(worst_ratio, rel=1e-9)
        assert row["linf_error"] == pytest.approx(float(dy.abs().max()), rel=1e-9)


def test_no_perturbation_gives_zero_errors(tiny_model):
    x, _ = _inputs()
    report = propagation_analysis(tiny_model("dss"), x, x_adv=x.clone())
    assert all(r["rel_error"] == 0.0 and r["change_rate"] is None for r in report.rows)
    assert report.kl == pytest.approx(0.0, abs=1e-12)
    assert all(r["bound_ratio"] == 0.0 for r in report.rows if r["bound"] is not None)


def test_attack_callable_is_used_and_model_mode_restored(tiny_model, fgsm):
    model = tiny_model("s6").train()
    x, _ = _inputs(2)
    y = torch.tensor([0, 1, 2, 0])
    calls = []

    def attack(xs, ys):
        calls.append((xs, ys))
        return fgsm(model, 0.1)(xs, ys)

    report = propagation_analysis(model, x, y=y, attack=attack)
    assert len(calls) == 1 and calls[0][0] is x and calls[0][1] is y
    assert model.training
    assert 0.0 < report.perturbation_linf <= 0.1 + 1e-6
    assert report.clean_accuracy is not None and report.adv_accuracy is not None
    assert all(r["bound"] is None for r in report.rows)  # S6 is input-dependent: no LTI bound


def test_fgsm_raises_the_loss_it_attacks(tiny_model, fgsm):
    # The attack fixture must be a real attack for the test above to mean anything.
    model = tiny_model("s4d").eval()
    x, _ = _inputs(3)
    y = torch.tensor([0, 1, 2, 1])
    loss = torch.nn.functional.cross_entropy
    x_adv = fgsm(model, 0.05)(x, y)
    with torch.no_grad():
        assert loss(model(x_adv), y) > loss(model(x), y)


def test_reproducible(tiny_model):
    x, x_adv = _inputs(4)
    first = propagation_analysis(tiny_model("s5", seed=3), x, x_adv=x_adv).to_dict()
    assert propagation_analysis(tiny_model("s5", seed=3), x, x_adv=x_adv).to_dict() == first


def test_bad_arguments_are_rejected(tiny_model, fgsm):
    model = tiny_model("s4d")
    x, x_adv = _inputs()
    with pytest.raises(ValueError, match="exactly one of x_adv"):
        propagation_analysis(model, x)
    with pytest.raises(ValueError, match="exactly one of x_adv"):
        propagation_analysis(model, x, x_adv=x_adv, attack=fgsm(model, 0.1))
    with pytest.raises(ValueError, match="an attack needs the labels y"):
        propagation_analysis(model, x, attack=fgsm(model, 0.1))
    with pytest.raises(ValueError, match="x_adv must have the shape of x"):
        propagation_analysis(model, x, x_adv=x_adv[:2])
    with pytest.raises(ValueError, match="y must have shape"):
        propagation_analysis(model, x, x_adv=x_adv, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="needs a model with forward_trace"):
        propagation_analysis(torch.nn.Linear(16, 3), x, x_adv=x_adv)


def test_markdown_and_dict_outputs(tiny_model):
    report = propagation_analysis(tiny_model("s4d"), *_inputs(), y=torch.tensor([0, 1, 2, 0]))
    table = report.to_markdown()
    assert "| point | block | component |" in table and "accuracy clean" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(report.rows) + 1
    assert "| blocks.1.mix | 1 | mix |" in table
    assert json.loads(report.to_json()) == json.loads(json.dumps(report.to_dict()))


def test_plot_writes_a_png(tiny_model, tmp_path):
    report = propagation_analysis(attach_ads(tiny_model("s4d")), *_inputs())
    path = report.plot(tmp_path / "figures" / "propagation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install_it(tiny_model, tmp_path, monkeypatch):
    report = propagation_analysis(tiny_model("s4d"), *_inputs())
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(ImportError, match=r"install it with pip install matplotlib"):
        report.plot(tmp_path / "p.png")
