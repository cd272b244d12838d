"""S4D's output projection: Linear(H, 2H) -> GLU by default (the S4 code's), Linear(H, H) with glu=False."""
import pytest
import torch
import torch.nn.functional as F
from advssm.ssm_layers import ModelConfig, build_model
from advssm.ssm_layers.layers import S4D


@pytest.mark.parametrize("glu", [True, False])
def test_projection_is_gelu_then_linear_then_optional_glu(glu):
    torch.manual_seed(0)
    layer = S4D(6, d_state=4, glu=glu).double()
    x = torch.rand(2, 9, 6, dtype=torch.float64)
    y = layer.mix(x)
    z = F.gelu(y) @ layer.output_linear.weight.T + layer.output_linear.bias
    want = z[..., :6] * torch.sigmoid(z[..., 6:]) if glu else z
    assert layer.output_linear.weight.shape == ((12, 6) if glu else (6, 6))
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)


def test_default_keeps_the_paper_codes_glu_and_the_v1_parameter_names():
    model = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=1))
    assert model.blocks[0].layer.glu is True
    names = set(model.state_dict())
    assert {"blocks.0.layer.output_linear.weight", "blocks.0.layer.C", "blocks.0.layer.D"} <= names
    plain = build_model(ModelConfig(layer="s4d", d_model=8, d_state=4, n_layers=1, layer_options={"glu": False}))
    assert set(plain.state_dict()) == names  # same names, Linear(H, H) instead of Linear(H, 2H)
    assert plain.blocks[0].layer.output_linear.weight.shape == (8, 8)
    with pytest.raises(RuntimeError, match="size mismatch for blocks.0.layer.output_linear"):
        plain.load_state_dict(model.state_dict())


def test_glu_must_be_a_bool():
    with pytest.raises(ValueError, match=r"S4D: glu must be True \(Linear\(H, 2H\) -> GLU\) or False"):
        S4D(4, d_state=4, glu="yes")
