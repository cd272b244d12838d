"""The SSD Triton kernel against the float64 reference, and its place in the dispatch.

Runs under ``TRITON_INTERPRET=1`` on the CPU (``nox -s kernels``) or on a CUDA device; every test is
marked ``kernels`` (the default suite deselects them) and skips with the reason where kernels cannot
run. Tolerances: the ops' documented FWD_TOL (rtol 6e-4, atol 2e-3) forward and GRAD_TOL (rtol 1.2e-3,
atol 4e-3) for every gradient, kernel (fp32 inputs) against the reference (float64 copies).
"""
from __future__ import annotations

import importlib
import os
import warnings

import pytest
import torch
from advssm.ssm_layers.kernel_verification import CASES, case_inputs, case_name
from advssm.ssm_layers.ops import (
    FWD_TOL,
    GRAD_TOL,
    SSD,
    BackendError,
    KernelCheckWarning,
    compare,
    kernel_checks,
    kernel_entry_point,
    kernel_override,
    reset_kernel_checks,
    ssd,
    ssd_reference,
)
from advssm.ssm_layers.ops.ssd import ssd_torch

dispatch_mod = importlib.import_module("advssm.ssm_layers.ops._dispatch")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                       reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (nox -s kernels)"),
]
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
NAMES = ("x", "dt", "A", "B", "C", "chunk_size", "D", "z", "dt_bias", "dt_softplus", "dt_limit")


def ssd_kernel(*args):
    """The kernel's entry point (validated inputs; no dispatch, no first-use check)."""
    return kernel_entry_point(SSD)(*args)


def _inputs(case, seed=0):
    return list(case_inputs("ssd", case, DEVICE, seed))


@pytest.mark.parametrize("case", CASES["tests"]["ssd"], ids=lambda c: case_name("ssd", c))
def test_ssd_kernel_matches_reference(case):
    args = _inputs(case, seed=sum(case[:6]))
    mismatch = compare(ssd_kernel, ssd_reference, args, FWD_TOL, GRAD_TOL, weights_seed=1,
                       ref_dtype=lambda t: torch.float64)
    assert mismatch is None, mismatch
    # dtypes and shapes: y like x, each gradient like its input; not all gradients tiny
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    y = ssd_kernel(*leaves)
    assert y.dtype == torch.float32 and y.shape == args[0].shape
    tensors = [(n, a) for n, a in zip(NAMES, leaves) if isinstance(a, torch.Tensor)]
    grads = torch.autograd.grad((y * torch.randn_like(y)).sum(), [a for _, a in tensors])
    for (name, a), g in zip(tensors, grads):
        assert g.dtype == a.dtype and g.shape == a.shape, f"grad {name}: {g.dtype} {tuple(g.shape)}"
    assert max(g.abs().max() for g in grads) > 10 * GRAD_TOL["atol"], "gradients too small to test anything"


def test_ssd_kernel_is_deterministic():
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in _inputs(CASES["tiny"]["ssd"][0], 7)]
    results = []
    for _ in range(2):
        y = ssd_kernel(*args)
        grads = torch.autograd.grad((y * y).sum(), [a for a in args if isinstance(a, torch.Tensor)])
        results.append((y, *grads))
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_ssd_kernel_does_not_depend_on_the_chunk_size():
    """The kernel runs the recurrence: chunk_size (the chunked algorithm's) changes nothing."""
    args = _inputs(CASES["tests"]["ssd"][2], 3)
    y = ssd_kernel(*args)
    args[5] = 1
    assert torch.equal(ssd_kernel(*args), y)


def test_ssd_triton_rejects_bad_shapes():
    x, dt, A, B, C, *_ = _inputs(CASES["tests"]["ssd"][2])
    with pytest.raises(ValueError, match="A must be"):
        ssd(x, dt, A[:, None], B, C, backend="triton")


# --------------------------------------------------------------------------- dispatch


def _call(seed=3):
    """(public call with a backend, its float64 reference) on small inputs."""
    x, dt, A, B, C, chunk, D, z, bias, softplus, limit = _inputs((2, 9, 4, 2, 3, 4, 4, "head", True, True, True,
                                                                  None), seed)

    def call(backend="auto"):
        return ssd(x, dt, A, B, C, chunk, D=D, z=z, dt_bias=bias, dt_softplus=softplus, backend=backend)

    def ref():
        return ssd_reference(*(t.double() for t in (x, dt, A, B, C)), chunk, D=D.double(), z=z.double(),
                             dt_bias=bias.double(), dt_softplus=softplus).float()

    return call, ref


def _recording(change=None):
    """The real kernel, recording every call's arguments and (``change``) altering its output."""
    real, calls = kernel_entry_point(SSD), []

    def run(*args):
        calls.append(args)
        out = real(*args)
        return out if change is None else change(out)

    return run, calls


@pytest.fixture
def auto_on_this_device(monkeypatch):
    """``auto`` picks the kernels on DEVICE (the CPU under the interpreter), with fresh first-use verdicts."""
    monkeypatch.setattr(dispatch_mod, "AUTO_KERNEL_DEVICE_TYPES", (DEVICE.type,))
    reset_kernel_checks()
    yield
    reset_kernel_checks()


def test_backend_triton_checks_the_kernel_once_then_runs_it():
    run, calls = _recording()
    call, ref = _call()
    with kernel_override("ssd", run):
        torch.testing.assert_close(call("triton"), ref(), **FWD_TOL)
        assert len(calls) == 2  # the first-use check on its own small input, then the call itself
        call("triton")
        assert len(calls) == 3 and list(kernel_checks().values()) == [None]


def test_auto_checks_then_uses_the_kernel(auto_on_this_device):
    run, calls = _recording()
    call, ref = _call()
    with kernel_override("ssd", run):
        torch.testing.assert_close(call(), ref(), **FWD_TOL)
        call()
    assert len(calls) == 3 and calls[0][0] is not calls[1][0] and calls[1][0] is calls[2][0]


@pytest.mark.parametrize("wrong", ["forward", "backward"])
def test_a_wrong_kernel_warns_once_and_auto_runs_the_torch_path(wrong, auto_on_this_device):
    change = (lambda out: out + 0.1) if wrong == "forward" else (lambda out: out + 0.05 * (out - out.detach()))
    run, calls = _recording(change)
    call, _ = _call()
    expected = call("torch")
    with kernel_override("ssd", run):
        with pytest.warns(KernelCheckWarning) as caught:
            out = call()
        message = str(caught[0].message)
        assert len(caught) == 1 and "ssd" in message and ("output 0" if wrong == "forward" else "gradient") in message
        assert torch.equal(out, expected)
        n_calls = len(calls)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(call(), expected)
        assert len(calls) == n_calls
        with pytest.raises(BackendError, match="ssd: the Triton kernel .* disagrees"):
            call("triton")


def test_float64_inputs_never_reach_the_fp32_kernel(auto_on_this_device):
    run, calls = _recording()
    x, dt, A, B, C = (t.double() for t in _inputs(CASES["tests"]["ssd"][2])[:5])
    with kernel_override("ssd", run):
        y = ssd(x, dt, A, B, C, 8)
        with pytest.raises(BackendError, match="computes in fp32 .* float64.*backend='torch'"):
            ssd(x, dt, A, B, C, 8, backend="triton")
    assert calls == [] and y.dtype == torch.float64
    torch.testing.assert_close(y, ssd_reference(x, dt, A, B, C), rtol=1e-10, atol=1e-10)


def test_each_tile_gets_its_own_check(auto_on_this_device):
    """dstate 3 and 4 share a tile (4 x 4 rows x columns), 130 has another (4 x 256): each tile is checked once."""
    run, _ = _recording()
    with kernel_override("ssd", run):
        for dstate in (3, 4, 130):
            x, dt, A, B, C = _inputs((1, 3, 2, 1, 4, dstate, 4, None, False, False, True, None))[:5]
            ssd(x, dt, A, B, C, 4, dt_softplus=True)
        assert len(kernel_checks()) == 2 and all(v is None for v in kernel_checks().values())


def test_double_backward_fails_loudly():
    x, dt, A, B, C, *_ = _inputs(CASES["tests"]["ssd"][2])
    x.requires_grad_()
    y = ssd(x, dt, A, B, C, 8, backend="triton")
    with pytest.raises(RuntimeError, match=r"ssd's Triton kernel .*double_backward\(\)"):
        torch.autograd.grad(y.square().sum(), [x], create_graph=True)


def test_half_inputs_give_the_torch_paths_result():
    """fp16 inputs (bf16 does not run in the interpreter): fp32 compute, output in fp16."""
    args = [a.half() if isinstance(a, torch.Tensor) else a for a in _inputs(CASES["tests"]["ssd"][1], 11)]
    y = ssd(*args, backend="triton")
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, ssd_torch(*args), rtol=1e-3, atol=1e-3)
