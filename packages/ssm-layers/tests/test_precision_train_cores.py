"""Mixed-precision training keeps the SSM cores in fp32: under a bf16 autocast region (as
``TrainConfig.precision = "bf16"`` runs the model) each op and each layer's SSM part (``mix`` of the
LTI layers and of Mega's EMA) gives what it gives without autocast, to fp32 rounding; a core that
autocast lowered to bf16 would be off by about 1e-2."""
from __future__ import annotations

import pytest
import torch
from advssm.ssm_layers import benchmark, ops
from advssm.ssm_layers.layers import LAYERS
from advssm.ssm_layers.layers.s4d import LTILayer

SIZES = {"selective_scan": dict(batch=2, dim=8, N=4, L=33), "diag_scan": dict(batch=2, H=4, N=3, L=33, complex=True),
         "vandermonde_kernel": dict(H=4, N=6, L=33), "fft_conv": dict(batch=2, H=4, L=33)}
TOL = dict(rtol=1e-5, atol=1e-6)


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("op", sorted(SIZES))
def test_each_op_computes_in_fp32_inside_bf16_autocast(op):
    args, kwargs = benchmark.op_inputs(op, SIZES[op], torch.device("cpu"), torch.Generator().manual_seed(0))
    plain = getattr(ops, op)(*args, **kwargs, backend="torch")
    with bf16():
        lowered = getattr(ops, op)(*args, **kwargs, backend="torch")
    assert lowered.dtype == plain.dtype
    torch.testing.assert_close(lowered, plain, **TOL)


@pytest.mark.parametrize("name", [n for n, cls in sorted(LAYERS.items()) if issubclass(cls, LTILayer) or n == "mega"])
def test_each_ssm_core_computes_in_fp32_inside_bf16_autocast(name):
    torch.manual_seed(0)
    layer = LAYERS[name](8, d_state=4)
    x = torch.rand(2, 40, 8)
    with bf16():
        lowered = layer.mix(x)
    assert lowered.dtype == torch.float32
    torch.testing.assert_close(lowered, layer.mix(x), **TOL)
