"""Second derivatives (Jacobian regularisation, gradient penalties) through every op and layer.

Inside ``ops.double_backward()`` each op runs a path autograd differentiates twice; each is checked
here in float64 with ``gradgradcheck`` (analytic second derivatives against finite differences of the
first). Outside it, the hand-written first-order backward of the selective scan's fast path refuses a
second derivative with an error that names the fix, and each substitution is said once.
"""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from advssm.ssm_layers import ops
from advssm.ssm_layers.layers import LAYERS
from advssm.ssm_layers.ops import (
    DoubleBackwardWarning,
    _dispatch,
    diag_scan,
    double_backward,
    fft_conv,
    selective_scan,
    selective_scan_ref,
    vandermonde,
    vandermonde_kernel,
)
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

F64 = torch.float64


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    """Each test sees the once-per-process notices afresh."""
    monkeypatch.setattr(_dispatch, "_said", set())


def rand(*shape, seed, dtype=F64, low=None, high=None):
    g = torch.Generator().manual_seed(seed)
    if low is not None:
        return (torch.rand(*shape, generator=g, dtype=F64) * (high - low) + low).to(dtype).requires_grad_()
    if dtype.is_complex:
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64),
                             torch.randn(*shape, generator=g, dtype=F64)).requires_grad_()
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


def scan_args(variable_bc: bool, seed: int = 0):
    batch, dim, N, L = 2, 3, 2, 5
    u, z = rand(batch, dim, L, seed=seed), rand(batch, dim, L, seed=seed + 1)
    delta = rand(batch, dim, L, seed=seed + 2, low=0.1, high=0.8)
    A = rand(dim, N, seed=seed + 3, low=-1.5, high=-0.2)
    B, C = ((rand(batch, N, L, seed=seed + 4), rand(batch, N, L, seed=seed + 5)) if variable_bc
            else (rand(dim, N, seed=seed + 4), rand(dim, N, seed=seed + 5)))
    return u, delta, A, B, C, rand(dim, seed=seed + 6), z, rand(dim, seed=seed + 7)


# ---------------------------------------------------------------- each op's PyTorch path


@pytest.mark.parametrize("variable_bc", [True, False])
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_selective_scan_second_derivative(variable_bc, backend):
    args = scan_args(variable_bc)

    def f(*a):
        with double_backward():
            return selective_scan(*a, delta_softplus=True, return_last_state=True, backend=backend)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DoubleBackwardWarning)
        assert gradgradcheck(f, args)
        # the path is the same function as the reference, last state included
        for got, want in zip(f(*args), selective_scan_ref(*args, delta_softplus=True, return_last_state=True)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_selective_scan_fast_path_refuses_a_second_derivative_and_names_the_fix():
    u, delta, A, B, C, D, z, bias = scan_args(True)
    y = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="torch")
    (g,) = torch.autograd.grad(y.sum(), u, create_graph=False)  # first order: the fast path, unchanged
    with pytest.raises(RuntimeError, match=r"first-order backward only.*double_backward\(\)"):
        torch.autograd.grad(y.pow(2).sum(), u, create_graph=True)


def test_substitution_is_said_once():
    args = scan_args(False)
    with pytest.warns(DoubleBackwardWarning, match="selective_scan's block-wise PyTorch scan") as record:
        with double_backward():
            for _ in range(3):
                selective_scan(*args, backend="torch")
    assert len([w for w in record if issubclass(w.category, DoubleBackwardWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", DoubleBackwardWarning)
        with double_backward():
            selective_scan(*args, backend="torch")  # said already: silent now
            selective_scan(*args, backend="reference")  # the reference is differentiable: nothing to say
    assert not ops.double_backward_enabled()


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("time_varying", [False, True])
def test_diag_scan_second_derivative(complex_, time_varying):
    dtype = torch.complex128 if complex_ else F64
    a = rand(*((2, 3, 6) if time_varying else (3, 1)), seed=1, low=0.1, high=0.9)
    if complex_:
        a = (a.detach() * torch.exp(1j * rand(*a.shape, seed=2).detach())).requires_grad_()
    b, h0 = rand(2, 3, 6, seed=3, dtype=dtype), rand(2, 3, seed=4, dtype=dtype)
    # no substitution: the PyTorch path's backward is itself made of differentiable ops
    assert gradcheck(lambda *t: diag_scan(*t, backend="torch"), (a, b, h0))
    assert gradgradcheck(lambda *t: diag_scan(*t, backend="torch"), (a, b, h0))


def test_fft_conv_second_derivative():
    u, K, D = rand(2, 3, 7, seed=1), rand(3, 5, seed=2), rand(3, seed=3)
    assert gradgradcheck(lambda *t: fft_conv(*t, backend="torch"), (u, K, D))


@pytest.mark.parametrize("chunked", [False, True])
def test_vandermonde_second_derivative(chunked, monkeypatch):
    if chunked:  # columns in checkpointed chunks, as for long kernels
        monkeypatch.setattr(vandermonde, "_MAX_CHUNK_BYTES", 3 * 4 * 16 * 3)  # 3 columns a chunk
    C, dtA = rand(3, 4, seed=1, dtype=torch.complex128), rand(3, 4, seed=2, dtype=torch.complex128)
    dtA = (dtA.detach() * 0.3 - 0.2).requires_grad_()
    assert gradgradcheck(lambda *t: vandermonde_kernel(*t, 9, backend="torch"), (C, dtA))


# ---------------------------------------------------------------- every layer of the zoo

D_MODEL = 4
# keeps the numerical second derivative over all parameters quick (Mamba2's head_dim must divide 2 * D_MODEL)
SMALL = {"mega": {"z_dim": 4}, "mamba2": {"head_dim": 4}}


def make_layer(name: str, **options):
    cls = LAYERS[name]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in (("d_state", 4),) if k in accepted} | SMALL.get(name, {}) | options
    torch.manual_seed(0)
    return cls(D_MODEL, **kwargs).to(F64)


def layer_cases():
    cases = [(name, {}) for name in LAYERS]
    return cases + [("mega", {"ema": "scan"})]  # Mega's EMA as the diagonal scan (default: FFT convolution)


@pytest.mark.parametrize(("name", "options"), layer_cases(), ids=lambda c: c if isinstance(c, str) else
                         "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_layer_second_derivative_in_input_and_parameters(name, options):
    """What Jacobian regularisation differentiates: d/d(x, weights) of d layer(x) / dx."""
    layer = make_layer(name, **options)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = rand(1, 5, D_MODEL, seed=3)

    def f(x, *ps):
        with double_backward():
            return functional_call(layer, dict(zip(names, ps)), (x,))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DoubleBackwardWarning)
        assert gradgradcheck(f, (x, *params), atol=1e-5, rtol=1e-4)
