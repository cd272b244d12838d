"""Triton kernels against the float64 references: forward and every gradient.

Runs under ``TRITON_INTERPRET=1`` on the CPU (``nox -s kernels``) or on a CUDA device. Every test is
marked ``kernels``, so the default suite (``-m "not kernels"``) deselects them; asked for where they
cannot run, they skip with the reason. Shapes are small because interpreted kernels are slow;
lengths include 1 and values that are not multiples of the chunk / block sizes.
"""
from __future__ import annotations

import importlib
import os
import warnings

import pytest
import torch
from advssm.ssm_layers.kernel_verification import CASES, case_inputs
from advssm.ssm_layers.ops import (  # triton itself is imported lazily, when a kernel first runs
    DIAG_SCAN,
    SELECTIVE_SCAN,
    VANDERMONDE_KERNEL,
    BackendError,
    KernelCheckWarning,
    diag_scan,
    diag_scan_ref,
    kernel_checks,
    kernel_entry_point,
    kernel_override,
    reset_kernel_checks,
    selective_scan,
    selective_scan_ref,
    vandermonde_kernel,
    vandermonde_kernel_ref,
)

dispatch_mod = importlib.import_module("advssm.ssm_layers.ops._dispatch")
ops = importlib.import_module("advssm.ssm_layers.ops")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                       reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (nox -s kernels)"),
]
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
FWD_TOL, GRAD_TOL = ops.FWD_TOL, ops.GRAD_TOL  # the documented tolerances
SINGLE = {torch.float64: torch.float32, torch.complex128: torch.complex64}


def _double(t):
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64).requires_grad_()


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def assert_matches_reference(fast, ref, args, names, **kwargs):
    """Compare ``fast`` (fp32 inputs) with ``ref`` (float64 copies): outputs, then the gradient of a
    random linear functional of every output with respect to every tensor argument."""
    fast_args = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    ref_args = [_double(a) if isinstance(a, torch.Tensor) else a for a in args]
    out_fast, out_ref = _as_tuple(fast(*fast_args, **kwargs)), _as_tuple(ref(*ref_args, **kwargs))
    assert len(out_fast) == len(out_ref)
    for i, (f, r) in enumerate(zip(out_fast, out_ref)):
        assert f.dtype == SINGLE[r.dtype], f"output {i} has dtype {f.dtype}, expected {SINGLE[r.dtype]}"
        torch.testing.assert_close(f.to(r.dtype), r, **FWD_TOL, msg=lambda m, i=i: f"output {i}: {m}")
    weights = [torch.randn_like(r) for r in out_ref]
    loss_fast = sum((f * w.to(f.dtype).conj()).real.sum() for f, w in zip(out_fast, weights))
    loss_ref = sum((r * w.conj()).real.sum() for r, w in zip(out_ref, weights))
    tensors = [(n, f, r) for n, f, r in zip(names, fast_args, ref_args) if isinstance(f, torch.Tensor)]
    grads_fast = torch.autograd.grad(loss_fast, [f for _, f, _ in tensors])
    grads_ref = torch.autograd.grad(loss_ref, [r for _, _, r in tensors])
    # some gradients are legitimately zero (e.g. for A at L = 1), but not all of them
    assert max(g.abs().max() for g in grads_ref) > 10 * GRAD_TOL["atol"], "gradients too small to test anything"
    for (name, f, _), gf, gr in zip(tensors, grads_fast, grads_ref):
        assert gf.dtype == f.dtype and gf.shape == f.shape, f"grad {name}: {gf.dtype} {tuple(gf.shape)}"
        torch.testing.assert_close(gf.to(gr.dtype), gr, **GRAD_TOL, msg=lambda m, name=name: f"grad {name}: {m}")


# --------------------------------------------------------------------------- selective scan

SS_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _selective_inputs(batch, dim, N, L, var_B, var_C, with_D, with_z, with_bias, seed):
    case = (batch, dim, N, L, var_B, var_C, with_D, with_z, with_bias, True, False)
    return list(case_inputs("selective_scan", case, DEVICE, seed)[:8])


def selective_scan_kernel(*args, **kwargs):
    """The kernel's entry point (validated inputs; no dispatch, no first-use check)."""
    return kernel_entry_point(SELECTIVE_SCAN)(*args, **kwargs)


@pytest.mark.parametrize("case", CASES["tests"]["selective_scan"], ids=lambda c: "b{}-d{}-n{}-L{}".format(*c[:4]))
def test_selective_scan_matches_reference(case):
    *tensors, softplus, last = case_inputs("selective_scan", case, DEVICE, seed=hash(case) % 2**31)
    present = [(n, a) for n, a in zip(SS_NAMES, tensors) if a is not None]

    def call(fn):
        def run(*given):
            kw = dict(zip([n for n, _ in present], given))
            return fn(**kw, delta_softplus=softplus, return_last_state=last)
        return run

    assert_matches_reference(call(selective_scan_kernel), call(selective_scan_ref),
                             [a for _, a in present], [n for n, _ in present])


def test_selective_scan_is_deterministic():
    args = [a.requires_grad_() if a is not None else None
            for a in _selective_inputs(2, 8, 4, 37, True, True, True, True, True, 7)]
    results = []
    for _ in range(2):
        y, last = selective_scan_kernel(*args, delta_softplus=True, return_last_state=True)
        grads = torch.autograd.grad((y * y).sum() + last.sum(), [a for a in args if a is not None])
        results.append((y, last, *grads))
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_selective_scan_triton_rejects_bad_shapes():
    u, delta, A, B, C, *_ = _selective_inputs(2, 4, 4, 5, True, True, False, False, False, 0)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:, :, None], B, C, backend="triton")


# --------------------------------------------------------------------------- diagonal scan


@pytest.mark.parametrize("case", CASES["tests"]["diag_scan"],
                         ids=lambda c: "a{}-b{}-{}".format(c[0], c[1], "complex" if c[3] else "real"))
def test_diag_scan_matches_reference(case):
    a, b, h0 = case_inputs("diag_scan", case, DEVICE, seed=hash(case) % 2**31)
    args = [a, b] + ([h0] if h0 is not None else [])
    assert_matches_reference(kernel_entry_point(DIAG_SCAN), diag_scan_ref, args, ["a", "b", "h0"])


# --------------------------------------------------------------------------- Vandermonde kernel


@pytest.mark.parametrize("case", CASES["tests"]["vandermonde_kernel"], ids=lambda c: "H{}-N{}-L{}".format(*c))
def test_vandermonde_matches_reference(case):
    assert_matches_reference(kernel_entry_point(VANDERMONDE_KERNEL), vandermonde_kernel_ref,
                             list(case_inputs("vandermonde_kernel", case, DEVICE, seed=sum(case))), ["C", "dtA", "L"])


# --------------------------------------------------------------------------- dispatch

OP_RECORDS = {"selective_scan": SELECTIVE_SCAN, "diag_scan": DIAG_SCAN, "vandermonde_kernel": VANDERMONDE_KERNEL}


def _op_call(op, seed=3):
    """(public function call, its float64 reference) on small inputs of ``op``."""
    if op == "selective_scan":
        u, delta, A, B, C, D, z, bias = _selective_inputs(2, 4, 4, 5, True, True, True, True, True, seed)
        return (lambda backend="auto": selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                                      backend=backend),
                lambda: selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True))
    if op == "diag_scan":
        a, b = torch.rand(3, 1, device=DEVICE) * 0.9, torch.randn(2, 3, 6, device=DEVICE)
        return lambda backend="auto": diag_scan(a, b, backend=backend), lambda: diag_scan_ref(a, b)
    C = torch.randn(2, 4, dtype=torch.complex64, device=DEVICE)
    dtA = torch.complex(-torch.rand(2, 4), torch.randn(2, 4)).to(DEVICE)
    return (lambda backend="auto": vandermonde_kernel(C, dtA, 7, backend=backend),
            lambda: vandermonde_kernel_ref(C, dtA, 7))


def _recording(op, change=None):
    """The op's real kernel, recording the arguments of every call and (``change``) altering its output."""
    real, calls = kernel_entry_point(OP_RECORDS[op]), []

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


@pytest.mark.parametrize("op", list(OP_RECORDS))
def test_backend_triton_checks_the_kernel_once_then_runs_it(op):
    run, calls = _recording(op)
    call, ref = _op_call(op)
    with kernel_override(op, run):
        out = call("triton")
        assert len(calls) == 2  # the first-use check on its own small input, then the call itself
        torch.testing.assert_close(out, ref(), **FWD_TOL)
        call("triton")
        assert len(calls) == 3  # checked once per process and shape class
        assert list(kernel_checks().values()) == [None]


@pytest.mark.parametrize("op", list(OP_RECORDS))
def test_auto_checks_then_uses_the_kernel(op, auto_on_this_device):
    run, calls = _recording(op)
    call, ref = _op_call(op)
    with kernel_override(op, run):
        torch.testing.assert_close(call(), ref(), **FWD_TOL)
        call()
    assert len(calls) == 3
    # the check ran on its own input, then both calls on the caller's
    assert calls[0][0] is not calls[1][0] and calls[1][0] is calls[2][0]


WRONG = {
    "forward": lambda out: (out[0] + 0.1, *out[1:]) if isinstance(out, tuple) else out + 0.1,
    # forward exact, gradient 5 % too large: only the backward half of the check can see it
    "backward": lambda out: out + 0.05 * (out - out.detach()),
}


@pytest.mark.parametrize("wrong", list(WRONG))
@pytest.mark.parametrize("op", list(OP_RECORDS))
def test_a_wrong_kernel_warns_once_and_auto_runs_the_torch_path(op, wrong, auto_on_this_device):
    import triton

    run, calls = _recording(op, WRONG[wrong])
    call, _ = _op_call(op)
    expected = call("torch")
    with kernel_override(op, run):
        with pytest.warns(KernelCheckWarning) as caught:
            out = call()
        message = str(caught[0].message)
        assert len(caught) == 1 and op in message and f"triton {triton.__version__}" in message
        assert str(DEVICE) in message and ("output 0" if wrong == "forward" else "gradient") in message
        assert "runs the PyTorch path" in message
        assert torch.equal(out, expected)
        n_calls = len(calls)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once: the second call is quiet, and still correct
            assert torch.equal(call(), expected)
        assert len(calls) == n_calls  # the failed kernel never runs on the caller's inputs
        with pytest.raises(BackendError, match=f"{op}: the Triton kernel .* disagrees"):
            call("triton")


def test_global_triton_override_raises_on_a_wrong_kernel(monkeypatch):
    run, _ = _recording("diag_scan", WRONG["forward"])
    call, _ = _op_call("diag_scan")
    monkeypatch.setenv("ADVSSM_BACKEND", "triton")
    with kernel_override("diag_scan", run), warnings.catch_warnings():
        warnings.simplefilter("error")  # raises, with no warning first
        with pytest.raises(BackendError, match="disagrees with the PyTorch path"):
            call()


def test_a_kernel_that_raises_fails_its_check(auto_on_this_device):
    def broken(*args):
        raise RuntimeError("PTX assembly failed")

    call, _ = _op_call("vandermonde_kernel")
    with kernel_override("vandermonde_kernel", broken):
        with pytest.warns(KernelCheckWarning, match="raised RuntimeError: PTX assembly failed"):
            torch.testing.assert_close(call(), call("torch"))
        with pytest.raises(BackendError, match="PTX assembly failed"):
            call("triton")


def test_float64_inputs_never_reach_the_fp32_kernels(auto_on_this_device):
    run, calls = _recording("selective_scan")
    u, delta, A, B, C, D, z, bias = [a.double() for a in _selective_inputs(2, 4, 4, 9, True, True, True, True,
                                                                           True, 5)]
    with kernel_override("selective_scan", run):
        y = selective_scan(u, delta, A, B, C, D, z, bias)
        with pytest.raises(BackendError, match="computes in fp32 .* float64.*backend='torch'"):
            selective_scan(u, delta, A, B, C, D, z, bias, backend="triton")
    assert calls == [] and y.dtype == torch.float64
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C, D, z, bias), rtol=1e-10, atol=1e-10)


def test_the_check_leaves_the_callers_rng_and_grad_mode_alone(auto_on_this_device):
    call, ref = _op_call("selective_scan")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with torch.no_grad():  # the check still runs a backward, in its own grad mode
        out = call()
    assert torch.equal(torch.get_rng_state(), state)
    assert not out.requires_grad and list(kernel_checks().values()) == [None]
    torch.testing.assert_close(out, ref(), **FWD_TOL)


def test_double_backward_fails_loudly():
    C = torch.randn(2, 4, dtype=torch.complex64, device=DEVICE, requires_grad=True)
    dtA = torch.complex(-torch.rand(2, 4), torch.randn(2, 4)).to(DEVICE).requires_grad_()
    K = vandermonde_kernel(C, dtA, 5, backend="triton")
    with pytest.raises(RuntimeError, match=r"vandermonde_kernel's Triton kernel .*double_backward\(\)"):
        torch.autograd.grad(K.square().sum(), [C], create_graph=True)


def test_selective_scan_half_inputs_give_the_torch_paths_result():
    """fp16 inputs: output in fp16, last state in fp32 (as the torch path and mamba_ssm return it)."""
    from advssm.ssm_layers.ops.selective_scan import selective_scan_torch

    args = [a.half() if a is not None else None
            for a in _selective_inputs(2, 4, 4, 21, True, True, True, True, True, 11)]
    y, last = selective_scan(*args, delta_softplus=True, return_last_state=True, backend="triton")
    y_ref, last_ref = selective_scan_torch(*args, delta_softplus=True, return_last_state=True)
    assert (y.dtype, last.dtype) == (torch.float16, torch.float32) == (y_ref.dtype, last_ref.dtype)
    torch.testing.assert_close(y, y_ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(last, last_ref, **FWD_TOL)


def test_global_override_runs_a_layer_on_the_kernels(monkeypatch):
    from advssm.ssm_layers.layers import S6

    torch.manual_seed(0)
    layer = S6(8, d_state=4).to(DEVICE)
    x = torch.randn(2, 7, 8, device=DEVICE)
    expected = layer(x)
    run, calls = _recording("selective_scan")
    monkeypatch.setenv("ADVSSM_BACKEND", "triton")
    with kernel_override("selective_scan", run):
        torch.testing.assert_close(layer(x), expected, **FWD_TOL)
    assert calls and calls[-1][0].shape == (2, 16, 7)  # the layer's own input (inner width 2 x 8) ran on it


def test_each_kernel_tile_gets_its_own_check(auto_on_this_device):
    """Inputs the kernel runs with another tile (rows per program) are checked again, on an example
    with that tile: 6 rows (one program of 8) and 130 rows (programs of 64)."""
    run, calls = _recording("diag_scan")
    with kernel_override("diag_scan", run):
        for rows in (6, 130, 140):
            diag_scan(torch.rand(rows, 1, device=DEVICE) * 0.9, torch.randn(rows, 5, device=DEVICE))
        assert len(kernel_checks()) == 2 and all(v is None for v in kernel_checks().values())
    checked_rows = [args[1].shape[0] for args in calls if args[1].shape[0] not in (6, 130, 140)]
    assert checked_rows == [70]  # the second tile's example: two programs of 64 rows (6 rows is its own example)
