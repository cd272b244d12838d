"""The Triton kernels against the float64 references: the cases and one function to run them.

Shared by the kernel tests (``tests/test_kernels.py``, at the ``"tests"`` sizes) and the GPU
verification (``benchmarks/gpu_verify.py``, at the ``"tests"`` and ``"paper"`` sizes), so both
check the same thing: every output and the gradient of a random linear functional of the
outputs with respect to every tensor input, kernel (fp32 inputs) against the reference (float64
copies), within ``ops.FWD_TOL`` / ``ops.GRAD_TOL``.

    from advssm.ssm_layers.kernel_verification import verify
    rows = verify("tests", device="cuda")        # one dict per case: op, case, ok, mismatch, seconds
"""
from __future__ import annotations

import time

import torch

from .ops import FWD_TOL, GRAD_TOL, OPS, compare, kernel_entry_point

# selective scan: (batch, dim, N, L, var_B, var_C, D, z, delta_bias, softplus, return_last_state)
# diag scan: (a shape, b shape, h0 shape or None, complex)
# Vandermonde kernel: (H, N, L)
# ssd: (batch, L, nheads, ngroups, headdim, dstate, chunk_size, D ("head", "channel" or None), z, dt_bias,
#       dt_softplus, dt_limit (a pair) or None)
# The "tests" sizes are small (interpreted kernels are slow) and include L = 1 and lengths that are
# not multiples of the chunk / block sizes; the "paper" sizes are the paper's models (S6 inner
# width 256 with N 16 / 32 / 64, S5's complex state, Mega's EMA, S4D's kernels) at L 784 / 1024 /
# 4096, batch 2 (the float64 references hold the whole (batch, dim, L, N) trajectory).
CASES = {
    "tests": {
        "selective_scan": [
            (2, 4, 4, 1, True, True, True, True, True, True, True),
            (2, 6, 8, 5, True, True, True, True, True, True, False),
            (2, 4, 4, 16, False, False, False, False, False, False, False),
            (2, 8, 4, 37, True, True, True, True, True, True, True),
            (1, 5, 3, 37, False, True, True, False, False, True, True),
            (2, 4, 6, 20, True, False, False, True, True, False, False),
            (2, 40, 5, 17, True, True, True, True, False, True, True),  # two channel blocks, padded N
        ],
        "diag_scan": [(a, b, h0, cplx) for cplx in (False, True) for a, b, h0 in [
            ((3, 1), (3, 1), None),
            ((3, 1), (2, 3, 5), (3,)),
            ((2, 3, 37), (2, 3, 37), (2, 3)),
            ((4, 1), (2, 4, 16), None),
            ((70, 1), (70, 9), (70,)),  # two row blocks
            ((2, 3, 1), (2, 3, 21), (1,)),  # time-invariant a per row, h0 broadcast
        ]],
        "vandermonde_kernel": [(3, 5, 1), (4, 8, 37), (2, 40, 130)],
        "ssd": [
            (1, 1, 2, 1, 4, 4, 16, "channel", True, True, True, None),
            (1, 37, 4, 2, 3, 5, 16, "head", True, True, True, (0.2, 1.5)),  # two kernel chunks, dt clamped
            (2, 40, 2, 1, 8, 8, 8, None, False, False, False, None),  # dt used as given
            (1, 33, 2, 1, 20, 130, 16, "channel", True, True, True, None),  # two row blocks of 16, padded dstate
        ],
    },
    "paper": {
        "selective_scan": [(2, 256, 32, 784, *[True] * 6, False), (2, 256, 16, 1024, *[True] * 6, False),
                           (2, 256, 64, 4096, *[True] * 6, True)],
        "diag_scan": [((64, 1), (2, 64, 4096), None, True),  # S5: complex diagonal state, P = 64
                      ((128, 16, 1), (2, 128, 16, 1024), None, False)],  # Mega's EMA, ema="scan"
        "vandermonde_kernel": [(128, 32, 784), (128, 64, 1024), (128, 64, 4096)],
        # Mamba-2 at d_model 128 (inner width 256, head_dim 64 -> 4 heads; 8 heads of 32 in 2 groups),
        # d_state 64 / 128, its D per head, its gate applied by the gated RMSNorm outside the op
        "ssd": [(2, 784, 8, 2, 32, 64, 256, "head", False, True, True, None),
                (2, 1024, 4, 1, 64, 64, 256, "head", False, True, True, None),
                (2, 4096, 4, 1, 64, 128, 256, "head", False, True, True, None)],
    },
    "tiny": {  # the "paper" structure at sizes the Triton interpreter runs in seconds
        "selective_scan": [(1, 6, 16, 20, *[True] * 6, True)],
        "diag_scan": [((8, 1), (1, 8, 20), None, True), ((4, 3, 1), (1, 4, 3, 20), None, False)],
        "vandermonde_kernel": [(4, 40, 70)],
        "ssd": [(1, 20, 2, 1, 8, 16, 8, "head", True, True, True, (0.0, 2.0))],
    },
}


def case_name(op: str, case) -> str:
    """A short, stable name of one case: ``b2-d256-n16-L1024``, ``a(64, 1)-b(2, 64, 4096)-complex``."""
    if op == "selective_scan":
        return "b{}-d{}-n{}-L{}".format(*case[:4])
    if op == "diag_scan":
        return f"a{case[0]}-b{case[1]}-{'complex' if case[3] else 'real'}"
    if op == "ssd":
        return "b{}-L{}-h{}-g{}-p{}-n{}".format(*case[:6])
    return "H{}-N{}-L{}".format(*case)


def case_inputs(op: str, case, device, seed: int = 0) -> tuple:
    """The op's positional arguments for one case (fp32 / complex64), drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device)

    if op == "selective_scan":
        batch, dim, N, L, var_B, var_C, with_D, with_z, with_bias, softplus, last = case
        return (rand(batch, dim, L), (torch.rand(batch, dim, L, generator=g) * 0.6 + 0.05).to(device),
                -(torch.rand(dim, N, generator=g) + 0.3).to(device),  # decaying, as in S6's A = -exp(A_log)
                rand(batch, N, L) if var_B else rand(dim, N), rand(batch, N, L) if var_C else rand(dim, N),
                rand(dim) if with_D else None, rand(batch, dim, L) if with_z else None,
                rand(dim, scale=0.3) if with_bias else None, softplus, last)
    if op == "diag_scan":
        a_shape, b_shape, h0_shape, is_complex = case

        def draw(shape):
            re = torch.randn(shape, generator=g)
            return torch.complex(re, torch.randn(shape, generator=g)) if is_complex else re

        a = torch.rand(a_shape, generator=g) * 0.9 + 0.05  # |a| < 1: a stable recurrence
        if is_complex:
            a = a * torch.exp(1j * torch.randn(a_shape, generator=g))
        return (a.to(device), draw(b_shape).to(device), None if h0_shape is None else draw(h0_shape).to(device))
    if op == "vandermonde_kernel":
        H, N, L = case
        C = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g))
        if L > 1000:  # S4D's initialisation: dt log-uniform in [1e-3, 1e-1], dtA = dt (-1/2 + i pi n)
            dt = 1e-3 * 100.0 ** torch.rand(H, 1, generator=g)
            dtA = dt * torch.complex(torch.full((H, N), -0.5), torch.pi * torch.arange(N).float().expand(H, N))
        else:  # small negative real part, moderate frequencies
            dtA = torch.complex(-torch.rand(H, N, generator=g) * 0.1, torch.randn(H, N, generator=g) * 0.5)
        return C.to(device), dtA.to(device), L
    if op == "ssd":
        batch, L, nheads, ngroups, headdim, dstate, chunk_size, D, with_z, with_bias, softplus, limit = case
        x = rand(batch, L, nheads, headdim)
        # dt = softplus(raw + bias), raw ~ N(0, 1), bias ~ N(-2, 0.5): mostly 0.03..0.6; without softplus dt > 0
        dt = rand(batch, L, nheads) if softplus else (torch.rand(batch, L, nheads, generator=g) * 0.6 + 0.05).to(device)
        A = -(torch.rand(nheads, generator=g) * 2 + 0.1).to(device)  # decaying, as Mamba-2's A = -exp(A_log)
        B, C = rand(batch, L, ngroups, dstate), rand(batch, L, ngroups, dstate)
        D = {"head": lambda: rand(nheads), "channel": lambda: rand(nheads, headdim), None: lambda: None}[D]()
        return (x, dt, A, B, C, chunk_size, D, rand(batch, L, nheads, headdim) if with_z else None,
                rand(nheads, scale=0.5, shift=-2.0) if with_bias else None, softplus,
                tuple(limit) if limit is not None else (0.0, float("inf")))
    raise ValueError(f"no kernel cases for op {op!r}; choose from {', '.join(CASES['tests'])}")


def _wide(t: torch.Tensor) -> torch.dtype:
    return torch.complex128 if t.is_complex() else torch.float64


def verify_case(op: str, case, device, seed: int = 0) -> dict:
    """The kernel of ``op`` against its float64 reference on one case: a row with op, case, ok,
    mismatch (None, the differences, or what raised) and seconds."""
    start = time.perf_counter()
    row = {"op": op, "case": case_name(op, case)}
    try:
        args = case_inputs(op, case, device, seed)
        OPS[op].check(*args)
        mismatch = compare(kernel_entry_point(OPS[op]), OPS[op].reference, args, FWD_TOL, GRAD_TOL,
                           weights_seed=seed + 1, ref_dtype=_wide)
    except Exception as exc:  # a kernel that fails to compile or run is a failed case, not a crash
        mismatch = f"raised {exc.__class__.__name__}: {str(exc).strip()[:500]}"
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return {**row, "ok": mismatch is None, "mismatch": mismatch, "seconds": round(time.perf_counter() - start, 3)}


def verify(sizes: str = "tests", device=None, ops=None, deadline: float | None = None) -> list[dict]:
    """Every case of the ``sizes`` set ("tests", "paper" or "tiny") for ``ops`` (default: every op with
    a kernel) on ``device``. Past ``deadline`` (a ``time.perf_counter()`` value) the remaining cases
    are listed as skipped, not run."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for op in ops or CASES[sizes]:
        for i, case in enumerate(CASES[sizes][op]):
            if deadline is not None and time.perf_counter() > deadline:
                rows.append({"op": op, "case": case_name(op, case), "ok": None, "mismatch": None,
                             "skipped": "time budget spent"})
                continue
            rows.append({**verify_case(op, case, device, seed=1000 * i + len(rows)), "sizes": sizes})
            if device.type == "cuda":  # the float64 references of the paper's sizes hold gigabytes
                torch.cuda.empty_cache()
    return rows
