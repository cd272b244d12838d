"""The first-use check's comparison on half-precision inputs (pure PyTorch: no kernel needed).

The check runs a fast path and the PyTorch path (in float64) on the same values and compares the outputs
and the gradients of one random linear functional of them. On bf16 inputs it once compared the fast path's
rounding of that functional's weights (autograd hands a bf16 output a bf16 gradient) against exact weights:
the PyTorch path itself then missed the gradient tolerance against float64, so a correct selective-scan
kernel failed its check on bf16 inputs on an H200 and ``auto`` ran the slower path. These tests hold the
check fair (a correct path passes) and still sharp (a gradient 5 % off, or a forward off by 0.1, fails).
"""
from __future__ import annotations

import pytest
import torch
from advssm.ssm_layers.kernel_verification import CASES, case_inputs
from advssm.ssm_layers.ops import OPS
from advssm.ssm_layers.ops._dispatch import _compare_with_torch_path

HALF = [torch.bfloat16, torch.float16]
# real-valued ops with a first-use check, at a few of the kernel tests' cases (the complex ones stay complex64)
REAL_OPS = ["selective_scan", "ssd", "diag_scan"]


def _cases(op: str):
    cases = [c for c in CASES["tests"][op] if not (op == "diag_scan" and c[-1])]  # diag_scan: real cases only
    return cases[:4]


def _half_args(op: str, case, dtype: torch.dtype, seed: int) -> tuple:
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in case_inputs(op, case, "cpu", seed))


def _params():
    return [pytest.param(op, case, dtype, id=f"{op}-{i}-{str(dtype)[6:]}")
            for op in REAL_OPS for i, case in enumerate(_cases(op)) for dtype in HALF]


@pytest.mark.parametrize("op,case,dtype", _params())
def test_the_pytorch_path_passes_its_own_check_on_half_inputs(op, case, dtype):
    args = _half_args(op, case, dtype, seed=7)
    assert _compare_with_torch_path(OPS[op], OPS[op].torch, args) is None


def _gradient_too_large(path):
    """``path`` with an exact forward and every gradient 5 % too large."""
    def run(*args):
        out = path(*args)
        bump = lambda t: t + 0.05 * (t - t.detach())  # noqa: E731
        return tuple(bump(t) for t in out) if isinstance(out, tuple) else bump(out)
    return run


def _forward_off(path):
    def run(*args):
        out = path(*args)
        return (out[0] + 0.1, *out[1:]) if isinstance(out, tuple) else out + 0.1
    return run


@pytest.mark.parametrize("wrong,what", [(_gradient_too_large, "gradient"), (_forward_off, "output 0")])
@pytest.mark.parametrize("dtype", HALF, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("op", REAL_OPS)
def test_a_wrong_path_still_fails_the_check_on_half_inputs(op, dtype, wrong, what):
    args = _half_args(op, _cases(op)[-1], dtype, seed=7)
    mismatch = _compare_with_torch_path(OPS[op], wrong(OPS[op].torch), args)
    assert mismatch is not None and what in mismatch
