"""One dispatch function for every op: ``auto`` | ``triton`` | ``torch`` | ``reference``, and the
first-use check of the Triton kernels.

Each op module describes itself with an ``Op`` (its input check, reference, PyTorch path, and
the name of its Triton entry point, imported on first use) and its public function is one
``dispatch(OP, backend, *args)`` call. Imports point one way: op modules -> this module ->
``_backend``; the kernel modules (``ops/triton/*``, torch and triton only) are imported here,
lazily, by name.

Backend choice:
- ``auto`` (or ``ADVSSM_BACKEND``, which replaces ``auto`` everywhere): the Triton kernel for
  CUDA tensors when triton imports, the op has a kernel and no input is float64; the PyTorch
  path otherwise. float64 inputs go to the PyTorch path, which computes in float64: the
  kernels compute in fp32, so they would silently lower the precision.
- ``triton``: the kernel, or ``BackendError`` where it cannot run (no CUDA / triton, float64
  inputs, the first-use check failed). Never a silent fallback.
- ``torch``, ``reference``: the PyTorch path and the sequential reference, on any device.

Double backward: inside ``double_backward()`` (Jacobian regularisation runs its forward there)
every backend but ``reference`` runs the op's ``twice_differentiable`` path (its PyTorch path when
that is already made of differentiable ops): the Triton kernels and the hand-written backward of a
fast PyTorch path are first-order only. Each substitution is said once per process with a
``DoubleBackwardWarning``; outside the block a hand-written backward asked for a second derivative
raises an error that names ``double_backward()``.

The first-use check: the first time a process would run a kernel for a (device, kernel,
dtypes, shape class), the kernel and the PyTorch path run on a small seeded input of that
shape class (forward, and the gradient of a random linear functional of the outputs with
respect to every input) and must agree within ``tolerance(dtype)``. The verdict is kept for
the process. On disagreement (or an exception from the kernel) ``auto`` warns once with a
``KernelCheckWarning`` naming the kernel, device, triton version and mismatch, and runs the
PyTorch path; an explicit ``triton`` raises ``BackendError`` with the same message.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._backend import (
    BACKENDS,
    BackendError,
    DoubleBackwardWarning,
    KernelCheckWarning,
    device_name,
    triton_status,
    triton_version,
)

# Kernel modules live here; an Op names its entry point as "module:function" relative to it.
_KERNEL_PACKAGE = "advssm.ssm_layers.ops.triton"

# Device types on which ``auto`` picks a kernel. The Triton interpreter also runs them on the
# CPU, but there ``auto`` keeps the (much faster) PyTorch path; tests add "cpu" here to
# exercise the auto path and its first-use check under TRITON_INTERPRET=1.
AUTO_KERNEL_DEVICE_TYPES: tuple[str, ...] = ("cuda",)

# The documented tolerance of a kernel against the PyTorch path (and of both against the
# float64 reference in the kernel tests): |kernel - torch| <= atol + rtol |torch|, elementwise.
FWD_TOL = {"rtol": 6e-4, "atol": 2e-3}
GRAD_TOL = {"rtol": 1.2e-3, "atol": 4e-3}
_FP64 = (torch.float64, torch.complex128)


@dataclass(frozen=True)
class Op:
    """One functional op: its check, its two PyTorch implementations and (optionally) its kernel.

    All callables take the op's arguments positionally, in the order of its public signature
    without ``backend``.

    Attributes:
        name: the public function's name.
        check: raises ``ValueError`` for bad inputs (shapes, dtypes); returns nothing.
        reference: the obviously-right sequential loop (validates its inputs itself).
        torch: the fast PyTorch path, any device (validates its inputs itself).
        kernel: ``"module:function"`` of the Triton entry point under ``ops/triton`` (inputs
            already validated), or None for an op without a kernel.
        shape_class: the kernel's specialisation class of the arguments (hashable): a first-use
            verdict holds for every call of the same class.
        example: ``(args, generator) -> args``: a small input of the same shape class, dtypes
            and device, drawn from ``generator``, for the first-use check.
        twice_differentiable: the PyTorch path run under ``double_backward()``, made of ops autograd
            differentiates twice, or None when ``torch`` itself is.
        fast_path: what ``torch`` is, said when ``twice_differentiable`` replaces it.
    """

    name: str
    check: Callable
    reference: Callable
    torch: Callable
    kernel: str | None = None
    shape_class: Callable | None = None
    example: Callable | None = None
    twice_differentiable: Callable | None = None
    fast_path: str = "the PyTorch path"


def _device(tensors) -> torch.device:
    return next((t.device for t in tensors if isinstance(t, torch.Tensor)), torch.device("cpu"))


def resolve_backend(backend: str, *tensors: torch.Tensor, op: str = "this op", has_triton: bool = True) -> str:
    """The concrete backend ("triton", "torch" or "reference") for ``tensors``, before any check of
    the inputs' dtypes or of the kernel itself (``dispatch`` adds those).

    ``has_triton=False`` is for an op without a Triton kernel (``op`` names it in errors): an
    ``ADVSSM_BACKEND=triton`` override then leaves it on its PyTorch path, while an explicit
    ``backend="triton"`` is refused.

    Raises:
        ValueError: ``backend`` (or ``ADVSSM_BACKEND``) names no backend.
        BackendError: "triton" was asked for where it cannot run; the message says why and what to use.
    """
    return _resolve(backend, _device(tensors), op, has_triton)[0]


def _resolve(backend: str, device: torch.device, op: str, has_triton: bool) -> tuple[str, bool]:
    """(backend, explicit): ``explicit`` is True when "triton" was asked for by name (argument or
    ADVSSM_BACKEND), so a kernel that fails its check raises instead of falling back."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        env = os.environ.get("ADVSSM_BACKEND", "").strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(
                    f"ADVSSM_BACKEND={env!r} is not a backend; set it to one of {', '.join(BACKENDS)}"
                )
            backend = "torch" if env == "triton" and not has_triton else env
        else:
            if has_triton and device.type in AUTO_KERNEL_DEVICE_TYPES and triton_status(device)[0]:
                return "triton", False
            return "torch", False
    if backend == "triton":
        if not has_triton:
            raise BackendError(f"{op} has no Triton kernel (its PyTorch path runs on every device); "
                               "use backend='auto' or 'torch'")
        ok, why = triton_status(device)
        if not ok:
            raise BackendError(f"backend 'triton' cannot run on {device}: {why}. Use backend='torch' instead.")
        return "triton", True
    return backend, False


# --------------------------------------------------------------------------- double backward

_double_backward_depth = 0  # process-wide: the flag is read at forward time, in whichever thread runs it
_said: set[tuple[str, str]] = set()  # substitutions already announced


@contextlib.contextmanager
def double_backward():
    """Inside this block every op (and the attention layers) runs a path that autograd differentiates
    twice, so that ``torch.autograd.grad(..., create_graph=True)`` of the outputs can itself be
    differentiated: Jacobian regularisation and other gradient penalties. Only the forward needs to
    run inside. Each op or layer whose usual path is first-order only says once (``DoubleBackwardWarning``)
    what runs instead.

    Example:
        >>> from advssm.ssm_layers.ops import diag_scan, double_backward
        >>> u = torch.randn(1, 2, 5, requires_grad=True)
        >>> with double_backward():
        ...     y = diag_scan(torch.full((2, 1), 0.9), u)
        >>> (g,) = torch.autograd.grad(y.pow(2).sum(), u, create_graph=True)
        >>> g.pow(2).sum().backward()  # the second derivative
    """
    global _double_backward_depth
    with _lock:
        _double_backward_depth += 1
    try:
        yield
    finally:
        with _lock:
            _double_backward_depth -= 1


def double_backward_enabled() -> bool:
    """Whether a ``double_backward()`` block is open (the ops then run twice-differentiable paths)."""
    return _double_backward_depth > 0


def say_double_backward(what: str, instead: str) -> None:
    """Warn once per process that under ``double_backward()`` ``what`` is replaced by ``instead``."""
    with _lock:
        if (what, instead) in _said:
            return
        _said.add((what, instead))
    warnings.warn(f"double backward (Jacobian regularisation): {what} has a first-order backward only; "
                  f"{instead} runs instead (said once per process)", DoubleBackwardWarning, stacklevel=3)


def _twice_differentiable(op: Op, name: str, device: torch.device):
    """The path ``dispatch`` runs under ``double_backward()`` for the resolved backend ``name``."""
    path = op.twice_differentiable or op.torch
    if name == "triton":
        say_double_backward(f"{op.name}'s Triton kernel on {device.type}",
                            f"its twice-differentiable PyTorch path ({path.__name__})")
    elif op.twice_differentiable is not None:
        say_double_backward(f"{op.name}'s {op.fast_path}", f"its twice-differentiable path ({path.__name__})")
    return path


def dispatch(op: Op, backend: str, *args):
    """Run ``op`` on ``args`` with ``backend`` (see the module docstring for the rules)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = _device(tensors)
    name, explicit = _resolve(backend, device, op.name, op.kernel is not None)
    if name == "reference":
        return op.reference(*args)
    if double_backward_enabled():
        if name == "triton":
            op.check(*args)
        return _twice_differentiable(op, name, device)(*args)
    if name == "torch":
        return op.torch(*args)
    op.check(*args)  # the kernels take validated inputs
    if any(t.device != device for t in tensors):
        raise ValueError(f"{op.name}: all tensors must be on one device for the Triton kernel; move them to {device}")
    wide = sorted({str(t.dtype).replace("torch.", "") for t in tensors if t.dtype in _FP64})
    if wide:
        if explicit:
            raise BackendError(f"{op.name}: the Triton kernel computes in fp32 and these inputs are "
                               f"{' and '.join(wide)}; use backend='torch' (computes in float64) or cast to float32")
        return op.torch(*args)  # auto: keep float64 precision, on the PyTorch path
    kernel = _kernel(op)
    key, failure = _first_use_check(op, kernel, args, device)
    if failure is None:
        return kernel(*args)
    if explicit:
        raise BackendError(f"{failure}. Use backend='torch' (or 'auto', which then runs the PyTorch path)")
    with _lock:
        warn = key not in _warned
        _warned.add(key)
    if warn:
        warnings.warn(f"{failure}; backend='auto' runs the PyTorch path for these inputs in this process "
                      "(backend='triton' would raise)", KernelCheckWarning, stacklevel=3)
    return op.torch(*args)


# --------------------------------------------------------------------------- kernels and their check

_lock = threading.RLock()
_loaded: dict[str, Callable] = {}
_overrides: dict[str, Callable] = {}
_verdicts: dict[tuple, str | None] = {}  # first-use check key -> None (agreed) or the failure message
_warned: set[tuple] = set()  # keys whose failure ``auto`` has already warned about


def _kernel(op: Op) -> Callable:
    """The op's Triton entry point (a test's override first), imported on first use."""
    with _lock:
        if op.name in _overrides:
            return _overrides[op.name]
        if op.name not in _loaded:
            module, function = op.kernel.split(":")
            _loaded[op.name] = getattr(importlib.import_module(f"{_KERNEL_PACKAGE}.{module}"), function)
        return _loaded[op.name]


def kernel_entry_point(op: Op) -> Callable:
    """The Triton entry point of ``op`` without dispatch or first-use check (inputs must already be
    validated): for the kernel tests and the GPU verification, which compare it with the reference."""
    return _kernel(op)


@contextlib.contextmanager
def kernel_override(op_name: str, fn: Callable):
    """For tests: ``fn`` runs in place of the op's Triton entry point inside the block (e.g. a
    deliberately wrong kernel, to see the first-use check catch it). First-use verdicts are
    forgotten on entry and on exit."""
    with _lock:
        _overrides[op_name] = fn
        reset_kernel_checks()
    try:
        yield
    finally:
        with _lock:
            _overrides.pop(op_name, None)
            reset_kernel_checks()


def kernel_checks() -> dict[tuple, str | None]:
    """The first-use verdicts of this process: {(op, device, dtypes, shape class): None (the kernel
    agreed with the PyTorch path) or the failure message}."""
    with _lock:
        return dict(_verdicts)


def reset_kernel_checks() -> None:
    """Forget every first-use verdict (the next kernel call of each class is checked again, and warns
    again if it fails)."""
    with _lock:
        _verdicts.clear()
        _warned.clear()


def tolerance(dtype: torch.dtype) -> tuple[dict, dict]:
    """(forward, gradient) tolerances of a kernel against the PyTorch path for inputs of ``dtype``:
    ``FWD_TOL`` and ``GRAD_TOL``, with rtol widened by two units in the last place of a half
    precision input dtype (both paths compute in fp32 and round their results to it)."""
    if dtype in (torch.float16, torch.bfloat16):
        wide = 2 * torch.finfo(dtype).eps
        return ({**FWD_TOL, "rtol": FWD_TOL["rtol"] + wide}, {**GRAD_TOL, "rtol": GRAD_TOL["rtol"] + wide})
    return dict(FWD_TOL), dict(GRAD_TOL)


def _first_use_check(op: Op, kernel: Callable, args: tuple, device: torch.device) -> tuple[tuple, str | None]:
    """(key, verdict) for these arguments: the kept verdict of their class, or a fresh check's."""
    dtypes = tuple(str(a.dtype) if isinstance(a, torch.Tensor) else None for a in args)
    key = (op.name, str(device), dtypes, op.shape_class(*args))
    with _lock:
        if key in _verdicts:
            return key, _verdicts[key]
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return key, (f"{op.name}: the Triton kernel has not passed its first-use check for these inputs on "
                    f"{device}, and it cannot run while a CUDA graph is being captured; call the op once "
                    "before capturing")
        mismatch = _compare_with_torch_path(op, kernel, args)
        verdict = None
        if mismatch is not None:
            verdict = (f"{op.name}: the Triton kernel ({op.kernel}) disagrees with the PyTorch path on "
                       f"{device_name(device)}, triton {triton_version()}, torch {torch.__version__}, "
                       f"inputs {', '.join(d for d in dtypes if d)} of shape class {key[3]}: {mismatch}")
        _verdicts[key] = verdict
        return key, verdict


def _compare_with_torch_path(op: Op, kernel: Callable, args: tuple) -> str | None:
    """None when the kernel and the PyTorch path (run in float64 on the same values) agree on a small
    example of ``args``' class, forward and backward; otherwise what differed (or what the kernel raised)."""
    example = op.example(args, torch.Generator().manual_seed(0))  # a private generator: the caller's RNG is untouched
    dtype = next(a.dtype for a in example if isinstance(a, torch.Tensor))
    fwd_tol, grad_tol = tolerance(dtype)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(example[0].device.type, enabled=False):
            return compare(kernel, op.torch, example, fwd_tol, grad_tol, weights_seed=1, ref_dtype=_wide)
    except Exception as exc:  # a kernel that does not compile or run here fails its check, it does not crash
        return f"the kernel raised {exc.__class__.__name__}: {str(exc).strip()[:500]}"


def _wide(t: torch.Tensor) -> torch.dtype:
    """float64 (complex128): the PyTorch path runs the check's input in it, so that neither its own
    fp32 rounding nor TF32 matmuls a caller may have enabled can fail a correct kernel."""
    return torch.complex128 if t.is_complex() else torch.float64


def compare(fast: Callable, ref: Callable, args, fwd_tol: dict, grad_tol: dict, weights_seed: int = 0,
            ref_dtype: Callable | None = None) -> str | None:
    """Compare ``fast(*args)`` with ``ref`` on copies of ``args``: every output, then the gradient of
    one random linear functional of the outputs with respect to every floating tensor argument.

    ``ref_dtype`` maps a tensor to the dtype the reference runs in (e.g. float64; default: the
    same dtype). Returns None when all agree within the tolerances, else the differences found.
    """
    def leaf(a, dtype=None):
        if not isinstance(a, torch.Tensor):
            return a
        t = a.detach().clone() if dtype is None else a.detach().to(dtype)
        return t.requires_grad_() if (t.is_floating_point() or t.is_complex()) else t

    fast_args = [leaf(a) for a in args]
    ref_args = [leaf(a, None if ref_dtype is None else ref_dtype(a)) if isinstance(a, torch.Tensor) else a
                for a in args]
    out_fast, out_ref = _as_tuple(fast(*fast_args)), _as_tuple(ref(*ref_args))
    problems = []
    if len(out_fast) != len(out_ref):
        return f"{len(out_fast)} outputs, the PyTorch path gives {len(out_ref)}"
    for i, (f, r) in enumerate(zip(out_fast, out_ref)):
        problems += _differences(f"output {i}", f, r, fwd_tol)
    gen = torch.Generator().manual_seed(weights_seed)
    # The fast path's backward receives the functional's weights rounded to its output dtype (autograd
    # casts the gradient of f.to(r.dtype) back to f's dtype); the reference gets the same rounded weights.
    # Otherwise a half-precision output compares its rounding of the incoming gradient, amplified by the
    # sums of the backward, not the op: on bf16 the PyTorch path itself missed GRAD_TOL against float64.
    weights = [_randn_like(r, gen).to(f.dtype).to(r.dtype) for f, r in zip(out_fast, out_ref)]
    inputs = [i for i, a in enumerate(fast_args) if isinstance(a, torch.Tensor) and a.requires_grad]
    loss_fast = sum((f.to(r.dtype) * w.conj()).real.sum() for f, r, w in zip(out_fast, out_ref, weights))
    loss_ref = sum((r * w.conj()).real.sum() for r, w in zip(out_ref, weights))
    grads_fast = torch.autograd.grad(loss_fast, [fast_args[i] for i in inputs], allow_unused=True)
    grads_ref = torch.autograd.grad(loss_ref, [ref_args[i] for i in inputs], allow_unused=True)
    for i, gf, gr in zip(inputs, grads_fast, grads_ref):
        gf = torch.zeros_like(fast_args[i]) if gf is None else gf
        gr = torch.zeros_like(ref_args[i]) if gr is None else gr
        problems += _differences(f"gradient of argument {i}", gf, gr, grad_tol)
    return "; ".join(problems) or None


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _randn_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(t.shape, generator=gen, dtype=torch.complex128 if t.is_complex() else torch.float64)
    return w.to(device=t.device, dtype=t.dtype)


def _differences(what: str, fast: torch.Tensor, ref: torch.Tensor, tol: dict) -> list[str]:
    """[] when ``fast`` matches ``ref`` within ``tol``; else one line saying how it does not."""
    if fast.shape != ref.shape:
        return [f"{what} has shape {tuple(fast.shape)}, expected {tuple(ref.shape)}"]
    wide = torch.complex128 if ref.is_complex() else torch.float64
    f, r = fast.detach().to(wide), ref.detach().to(wide)
    if not torch.isfinite(f).all():
        return [f"{what} has non-finite values"]
    err = (f - r).abs()
    bad = err > tol["atol"] + tol["rtol"] * r.abs()
    if not bad.any():
        return []
    return [f"{what}: {int(bad.sum())} of {bad.numel()} elements differ, max |difference| {err.max().item():.3g} "
            f"(tolerance atol {tol['atol']:g} + rtol {tol['rtol']:g} x |expected|)"]
