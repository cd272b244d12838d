"""Interval bound propagation: each component's box holds the component's value at random points of its input box
(corners included), in float64; the whole model's logit bounds hold for random inputs in the threat model's box; the
bounds are exact at eps = 0, shrink with eps, and layers without a bound are refused by name."""
import pytest
import torch
import torch.nn.functional as F
from advssm.ads import attach_ads, ibp
from advssm.ssm_layers.layers import DSS, S4, S4D, S5
from torch import nn

TOL = 1e-9


def random_box(shape, seed, spread=1.0, width=0.5):
    g = torch.Generator().manual_seed(seed)
    center = spread * torch.randn(shape, generator=g, dtype=torch.float64)
    return ibp.Box(center, width * torch.rand(shape, generator=g, dtype=torch.float64))


def samples(box, n=64, seed=1):
    """Points of the box: n uniform ones, its lower and upper corners, and n random corners."""
    g = torch.Generator().manual_seed(seed)
    uniform = torch.rand((n, *box.center.shape), generator=g, dtype=torch.float64)
    corners = torch.randint(0, 2, (n, *box.center.shape), generator=g).double()
    points = torch.cat([uniform, corners, torch.zeros_like(uniform[:1]), torch.ones_like(uniform[:1])])
    return box.lower + points * (box.upper - box.lower)


def assert_inside(values, out, tol=TOL):
    scale = 1 + out.center.abs()
    assert ((values >= out.lower - tol * scale) & (values <= out.upper + tol * scale)).all(), \
        float(torch.maximum(out.lower - values, values - out.upper).max())


def check(fn_box, fn, box, **kw):
    out = fn_box(box)
    assert (out.radius >= 0).all()
    for point in samples(box, **kw):
        assert_inside(fn(point), out)
    return out


def test_affine_gelu_glu_products_and_monotone_functions():
    box = random_box((3, 7), 0)
    linear = nn.Linear(7, 6).double()
    check(lambda b: ibp.affine(b, linear.weight, linear.bias), linear, box)
    wide = random_box((4, 10), 1, spread=1.0, width=1.5)  # many intervals contain GELU's minimum at -0.75
    assert ((wide.lower < ibp.GELU_ARGMIN) & (wide.upper > ibp.GELU_ARGMIN)).any()
    check(ibp.gelu, F.gelu, wide)
    check(ibp.glu, lambda t: F.glu(t, dim=-1), wide)
    for act in (torch.relu, torch.sigmoid, torch.tanh):
        check(lambda b, act=act: ibp.monotone(b, act), act, wide)
    assert abs(float(F.gelu(torch.tensor(ibp.GELU_ARGMIN, dtype=torch.float64))) - ibp.GELU_MIN) < 1e-15
    # the minimum really is one: GELU is larger on both sides
    near = torch.tensor([ibp.GELU_ARGMIN - 1e-4, ibp.GELU_ARGMIN + 1e-4], dtype=torch.float64)
    assert (F.gelu(near) > ibp.GELU_MIN).all()


@pytest.mark.parametrize("width", [0.01, 0.3, 3.0])
def test_layer_norm_box_holds_narrow_and_wide(width):
    torch.manual_seed(0)
    norm = nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    check(lambda b: ibp.layer_norm(b, norm), norm, random_box((2, 5, 6), 2, width=width), n=256)


@pytest.mark.parametrize("width", [0.01, 3.0])
def test_rms_norm_box(width):
    torch.manual_seed(0)
    norm = nn.RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()
    check(lambda b: ibp.rms_norm(b, norm), norm, random_box((2, 5, 6), 2, width=width), n=256)


@pytest.mark.parametrize("cls, kwargs", [(S4, {}), (S4D, {}), (DSS, {}), (S5, {}), (S4D, {"glu": False})])
def test_each_lti_layer_mix_and_whole_layer(cls, kwargs):
    torch.manual_seed(0)
    layer = cls(d_model=4, d_state=4, **kwargs).double().eval()
    box = random_box((2, 12, 4), 3)
    out = check(lambda b: ibp.lti_mix(b, layer), layer.mix, box)
    # the mix is linear: its box is exact, and its centre is the layer's mix at the centre
    torch.testing.assert_close(out.center, layer.mix(box.center), rtol=1e-9, atol=1e-9)
    check(lambda b: ibp.lti_layer(b, layer), layer, box)


@pytest.mark.parametrize("activation, shift", [("relu", True), ("sigmoid", True), ("tanh", False)])
def test_ads_transform(activation, shift):
    from advssm.ads import AdaptiveScaling

    torch.manual_seed(0)
    ads = AdaptiveScaling(5, activation=activation, shift=shift).double()
    check(lambda b: ibp.output_transform(b, ads, "AdS"), ads, random_box((3, 5), 4))


def _sample_inputs(x, eps, n, seed):
    g = torch.Generator().manual_seed(seed)
    box = ibp.input_box(x, eps)
    points = torch.rand((n, *x.shape), generator=g, dtype=torch.float64)
    points[: n // 2] = points[: n // 2].round()  # corners of the box
    return box.lower + points * (box.upper - box.lower)


@pytest.mark.parametrize("layer, overrides", [
    ("s4d", {}), ("s4", {"prenorm": True}), ("dss", {}), ("s5", {}), ("s4d", {"transform": "ads"}),
    ("s4d", {"prenorm": True, "norm": "rmsnorm", "embed_norm": False}),
    ("s4d", {"prenorm": True, "cls_token": True, "pos_embed": True, "image_size": 4, "patch_size": 2, "d_input": 1}),
])
def test_model_logit_bounds_hold_inside_the_box(tiny_model, layer, overrides):
    model = tiny_model(layer, **overrides).double().eval()
    shape = (3, 1, 4, 4) if "patch_size" in overrides else (3, 10, 1)  # patches need images
    x = torch.rand(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lower, upper = ibp.logit_bounds(model, x, eps=0.05)
    with torch.no_grad():
        for point in _sample_inputs(x, 0.05, 40, 6):
            logits = model(point)
            assert ((logits >= lower - 1e-9) & (logits <= upper + 1e-9)).all()
    # the margins' bound is at least as tight as the difference of the logit bounds
    y = torch.tensor([0, 1, 2])
    margins = ibp.margin_lower_bounds(model, x, y, 0.05)
    naive = lower.gather(1, y[:, None]) - upper
    assert (margins >= naive - 1e-12).all() and torch.isinf(margins.gather(1, y[:, None])).all()


def test_image_model_with_ads_and_post_norm(tiny_model):
    model = attach_ads(tiny_model("s4d", d_input=3, n_layers=2), activation="sigmoid").double().eval()
    x = torch.rand(2, 3, 3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    lower, upper = ibp.logit_bounds(model, x, eps=0.02)
    with torch.no_grad():
        for point in _sample_inputs(x, 0.02, 40, 8):
            logits = model(point)
            assert ((logits >= lower - 1e-9) & (logits <= upper + 1e-9)).all()


def test_exact_at_eps_zero_and_monotone_in_eps(tiny_model):
    model = tiny_model("s4d").eval()
    x = torch.rand(16, 10, 1, generator=torch.Generator().manual_seed(9))
    lower, upper = ibp.logit_bounds(model, x, eps=0.0)
    torch.testing.assert_close(lower, upper)
    torch.testing.assert_close(lower.float(), model(x).detach(), rtol=1e-5, atol=1e-5)
    pred = model(x).argmax(1)
    verified = [ibp.verify(model, x, pred, eps) for eps in (0.0, 1e-4, 1e-3, 1e-2, 1e-1)]
    assert verified[0].all() and not verified[-1].all()
    for small, large in zip(verified, verified[1:]):
        assert not (large & ~small).any()  # a wider box never verifies what a narrower one did not
    # the input box stays inside [0, 1]
    box = ibp.input_box(torch.tensor([[0.0, 0.5, 1.0]]), 0.1)
    expected = torch.tensor([[0.0, 0.4, 0.9], [0.1, 0.6, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(torch.cat([box.lower, box.upper]), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("layer, overrides, name, word", [
    ("s6", {}, "S6", "selective"), ("mamba2", {"d_model": 16}, "Mamba2", "selective"),
    ("mega", {}, "Mega", "not linear time-invariant"), ("attention", {}, "Attention", "not linear time-invariant"),
    ("s4d", {"scan": "bidirectional"}, "S4D in a bidirectional scan", "not linear time-invariant"),
    ("s6", {"scan": "bidirectional"}, "S6 in a bidirectional scan", "selective"),
])
def test_layers_without_a_bound_are_refused_by_name(tiny_model, layer, overrides, name, word):
    model = tiny_model(layer, **overrides)
    with pytest.raises(ibp.IBPUnsupportedError, match=f"block 0: layer {name} is {word}"):
        ibp.logit_bounds(model, torch.rand(1, 8, 1), 0.01)


def test_a_half_precision_model_with_too_many_inputs_is_refused(tiny_model):
    model = tiny_model("s4d").to(torch.bfloat16)  # bf16 holds the integers exactly up to 256 only
    with pytest.raises(ibp.IBPUnsupportedError, match="cast the model to float32"):
        ibp.logit_bounds(model, torch.rand(1, 300, 1), 0.01)
