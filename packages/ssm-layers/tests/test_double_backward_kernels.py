"""Under ``double_backward()`` an op asked for its Triton kernel (explicitly, or by ``auto`` on a device
where it would pick the kernel) hands over to its twice-differentiable PyTorch path and says so once;
outside, the kernels' first-order backward refuses a second derivative loudly.

Runs under ``TRITON_INTERPRET=1`` on the CPU (``nox -s kernels``) or on a CUDA device; marked ``kernels``.
"""
from __future__ import annotations

import importlib
import os
import warnings

import pytest
import torch
from advssm.ssm_layers.ops import DoubleBackwardWarning, diag_scan, double_backward, selective_scan, vandermonde_kernel
from torch.autograd import gradgradcheck

dispatch_mod = importlib.import_module("advssm.ssm_layers.ops._dispatch")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = [
    pytest.mark.kernels,
    pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                       reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (nox -s kernels)"),
]
DEVICE = torch.device("cpu" if INTERPRET else "cuda")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(dispatch_mod, "_said", set())
    # auto picks the kernel on this device, as it does on CUDA
    monkeypatch.setattr(dispatch_mod, "AUTO_KERNEL_DEVICE_TYPES", ("cuda", "cpu"))


def rand(*shape, seed, low=None, high=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g) if low is None else torch.rand(*shape, generator=g) * (high - low) + low
    return t.to(DEVICE, dtype).requires_grad_()


def inputs():
    u, delta = rand(1, 3, 6, seed=1), rand(1, 3, 6, seed=2, low=0.1, high=0.8)
    A, B, C = rand(3, 2, seed=3, low=-1.5, high=-0.2), rand(1, 2, 6, seed=4), rand(1, 2, 6, seed=5)
    return {
        "selective_scan": (selective_scan, (u, delta, A, B, C)),
        "diag_scan": (diag_scan, (rand(3, 1, seed=6, low=0.1, high=0.9), rand(2, 3, 6, seed=7))),
        "vandermonde_kernel": (lambda C, dtA, backend: vandermonde_kernel(C, dtA, 7, backend=backend),
                               (rand(3, 4, seed=8, dtype=torch.complex64),
                                (rand(3, 4, seed=9, dtype=torch.complex64).detach() * 0.3 - 0.2).requires_grad_())),
    }


@pytest.mark.parametrize("op", ["selective_scan", "diag_scan", "vandermonde_kernel"])
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_kernel_hands_over_to_a_twice_differentiable_path_and_says_so_once(op, backend):
    fn, args = inputs()[op]
    with pytest.warns(DoubleBackwardWarning, match=f"{op}'s Triton kernel") as record:
        with double_backward():
            y = fn(*args, backend=backend)
            fn(*args, backend=backend)
    assert sum(issubclass(w.category, DoubleBackwardWarning) for w in record) == 1
    (g,) = torch.autograd.grad(y.abs().pow(2).sum(), args[0], create_graph=True)
    g.abs().pow(2).sum().backward()  # the second derivative exists
    wide = tuple(a.detach().to(torch.complex128 if a.is_complex() else torch.float64).requires_grad_() for a in args)

    def f(*a):
        with double_backward():
            return fn(*a, backend=backend)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DoubleBackwardWarning)
        assert gradgradcheck(f, wide)  # the path that ran, in float64


@pytest.mark.parametrize("op", ["selective_scan", "diag_scan", "vandermonde_kernel"])
def test_kernel_outside_double_backward_refuses_a_second_derivative(op):
    fn, args = inputs()[op]
    y = fn(*args, backend="triton")
    with pytest.raises(RuntimeError, match=rf"{op}'s Triton kernel has a first-order backward only.*double_backward"):
        torch.autograd.grad(y.abs().pow(2).sum(), args[0], create_graph=True)
    (g,) = torch.autograd.grad(y.abs().pow(2).sum(), args[0])  # a first derivative still runs on the kernel
    assert g.shape == args[0].shape
