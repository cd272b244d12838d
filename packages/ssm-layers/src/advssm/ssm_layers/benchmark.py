"""Op benchmarks: forward and forward+backward time of every available backend of every op.

``run_benchmarks`` returns one dict per (op, size, backend); ``to_markdown`` renders them.
Ratios are the reference's time over the backend's, both measured in the same run. For the
selective scan a plain sequential loop (``unbind`` over time, autograd backward) is timed as
well (backend "loop"), since the mamba-style reference is far slower than a careful loop and
a ratio against it alone flatters the fast path. A reference whose single forward+backward
is estimated above ``ref_budget_s`` (see ``estimate_ref_seconds``: an upper bound) is skipped
and the row says so; no number is invented.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from .backend_status import backends as available_backends
from .ops import diag_scan, fft_conv, fft_conv_ref, selective_scan, ssd, vandermonde_kernel

# Paper sizes: d_model 128 (S6 inner dim 256), d_state 16..64, L 784 / 1024 / 4096.
SIZES = {
    "cpu": {
        "selective_scan": [dict(batch=8, dim=128, N=16, L=1024), dict(batch=8, dim=256, N=16, L=784),
                           dict(batch=8, dim=256, N=16, L=4096)],
        "diag_scan": [dict(batch=8, H=128, N=16, L=1024, complex=False),
                      dict(batch=8, H=64, N=1, L=1024, complex=True)],
        "vandermonde_kernel": [dict(H=128, N=32, L=1024), dict(H=128, N=32, L=4096)],
        "fft_conv": [dict(batch=8, H=128, L=1024), dict(batch=8, H=128, L=4096)],
        # Mamba-2 at d_model 128: inner width 256 = 4 heads of 64, d_state 64, one group, chunk 256
        "ssd": [dict(batch=2, L=L, nheads=4, ngroups=1, headdim=64, dstate=64, chunk=256) for L in (1024, 4096)],
    },
    "gpu": {
        "selective_scan": [dict(batch=64, dim=256, N=16, L=L) for L in (784, 1024, 4096)]
        + [dict(batch=64, dim=256, N=64, L=1024)],
        "diag_scan": [dict(batch=64, H=128, N=16, L=L, complex=False) for L in (784, 1024, 4096)]
        + [dict(batch=64, H=64, N=1, L=1024, complex=True)],
        "vandermonde_kernel": [dict(H=128, N=32, L=L) for L in (784, 1024, 4096)],
        "fft_conv": [dict(batch=64, H=128, L=L) for L in (784, 1024, 4096)],
        "ssd": [dict(batch=64, L=L, nheads=4, ngroups=1, headdim=64, dstate=64, chunk=256) for L in (784, 1024, 4096)]
        + [dict(batch=64, L=1024, nheads=4, ngroups=1, headdim=64, dstate=128, chunk=256)],
    },
    "tiny": {
        "selective_scan": [dict(batch=2, dim=8, N=4, L=33)],
        "diag_scan": [dict(batch=2, H=8, N=4, L=33, complex=True)],
        "vandermonde_kernel": [dict(H=8, N=4, L=33)],
        "fft_conv": [dict(batch=2, H=8, L=33)],
        "ssd": [dict(batch=2, L=33, nheads=4, ngroups=2, headdim=4, dstate=8, chunk=16)],
    },
}


def sequential_loop_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """A careful sequential selective scan (``unbind`` over time, autograd backward): the honest baseline."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    delta = F.softplus(delta) if delta_softplus else delta
    decay = torch.exp(delta[..., None] * A[:, None, :]).unbind(2)  # L x (batch, dim, N)
    Bt = B.permute(0, 2, 1)[:, None] if B.dim() == 3 else B[None, :, None]  # (batch|1, 1|dim, L|1, N)
    Ct = C.permute(0, 2, 1)[:, None] if C.dim() == 3 else C[None, :, None]
    inputs = ((delta * u)[..., None] * Bt).unbind(2)
    readout = Ct.expand(u.shape[0], u.shape[1], u.shape[2], A.shape[1]).unbind(2)
    x, ys = torch.zeros_like(inputs[0]), []
    for a_t, b_t, c_t in zip(decay, inputs, readout):
        x = a_t * x + b_t
        ys.append((x * c_t).sum(-1))
    y = torch.stack(ys, dim=2)
    y = y if D is None else y + D[:, None] * u
    return y if z is None else y * F.silu(z)


def op_inputs(op, size, device, gen):
    """(args, kwargs) of one op call at ``size``, float32, seeded by ``gen``."""
    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

    if op == "selective_scan":
        b, d, n, L = size["batch"], size["dim"], size["N"], size["L"]
        A = -torch.exp(rand(d, n))
        return (rand(b, d, L), rand(b, d, L), A, rand(b, n, L), rand(b, n, L), rand(d), rand(b, d, L), rand(d)), \
            dict(delta_softplus=True)
    if op == "diag_scan":
        b, H, n, L = size["batch"], size["H"], size["N"], size["L"]
        dtype = torch.complex64 if size["complex"] else torch.float32
        a = (torch.rand(H, n, 1, generator=gen) * 0.99).to(dtype).to(device)
        return (a, rand(b, H, n, L, dtype=dtype), None), {}
    if op == "vandermonde_kernel":
        H, n = size["H"], size["N"]
        dtA = torch.complex(-torch.rand(H, n, generator=gen) * 0.1, torch.randn(H, n, generator=gen)).to(device)
        return (rand(H, n, dtype=torch.complex64), dtA, size["L"]), {}
    if op == "fft_conv":
        b, H, L = size["batch"], size["H"], size["L"]
        return (rand(b, H, L), rand(H, L), rand(H)), {}
    if op == "ssd":  # Mamba-2's call: D per head, dt_bias with softplus, the gate outside (its gated RMSNorm)
        b, L, h, g, p, n = (size[k] for k in ("batch", "L", "nheads", "ngroups", "headdim", "dstate"))
        A = -torch.exp(rand(h))
        return (rand(b, L, h, p), rand(b, L, h), A, rand(b, L, g, n), rand(b, L, g, n)), \
            dict(chunk_size=size["chunk"], D=rand(h), dt_bias=rand(h) - 2, dt_softplus=True)
    raise ValueError(f"unknown op {op!r}; choose from {', '.join(SIZES['cpu'])}")


def _callable(op, backend):
    if backend == "loop":
        return sequential_loop_selective_scan
    if op == "fft_conv":
        return fft_conv_ref if backend == "reference" else fft_conv
    fn = {"selective_scan": selective_scan, "diag_scan": diag_scan, "vandermonde_kernel": vandermonde_kernel,
          "ssd": ssd}[op]
    return lambda *args, **kw: fn(*args, **kw, backend=backend)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats, warmup=True):
    """Median seconds of ``repeats`` calls, after one warm-up call unless ``warmup`` is False."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def runners(op, backend, args, kwargs):
    """(forward, forward+backward) closures for one call."""
    fn = _callable(op, backend)
    grad_args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    grad_out = None

    def forward():
        with torch.no_grad():
            return fn(*args, **kwargs)

    def forward_backward():
        nonlocal grad_out
        y = fn(*grad_args, **kwargs)
        if grad_out is None:
            grad_out = torch.ones_like(y)
        y.backward(grad_out)

    return forward, forward_backward


def tensor_bytes(args, out):
    return sum(t.numel() * t.element_size() for t in (*args, out) if isinstance(t, torch.Tensor))


def copy_seconds(nbytes, device, repeats=5):
    """Median seconds of one device-to-device copy of ``nbytes`` bytes (read once, written once)."""
    src = torch.empty(max(1, nbytes // 4), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return median_seconds(lambda: dst.copy_(src), device, repeats)


def copy_bandwidth(device, nbytes=1 << 28):
    """Measured device-to-device copy bandwidth (bytes/s: read + write) of ``device``."""
    return 2 * nbytes / copy_seconds(nbytes, device)


def estimate_ref_seconds(op, size, device, gen, budget_s):
    """Forward+backward seconds of the reference at ``size``: measured, or bounded from above.

    The references are loops over time whose autograd backward is quadratic in L (each step's
    slice of a saved tensor is differentiated into a full-size gradient), but at short lengths
    the linear part dominates, so a power law fitted to short probes underestimates them badly
    (41 s at L 1024 was once estimated at a few seconds, and ``advssm bench --quick`` took 27
    minutes). So: after a warm-up call, time forward+backward at L = 64, 128, 256, ... while
    the probes stay within a quarter of ``budget_s`` (the next one is assumed to cost 4x the
    last), and extrapolate the last probe quadratically; at the full length the probe is the
    measurement. This never underestimates a cost growing at most quadratically in L, and
    overestimates a linear one by at most L / (last probe's L).
    """
    L = size["L"]
    probe_L, spent = min(L, 64), 0.0
    while True:
        args, kwargs = op_inputs(op, {**size, "L": probe_L}, device, gen)
        seconds = median_seconds(runners(op, "reference", args, kwargs)[1], device, 1, warmup=spent == 0)
        spent += seconds
        if probe_L >= L or spent + 4 * seconds > budget_s / 4:
            return seconds * (L / probe_L) ** 2
        probe_L = min(L, 2 * probe_L)


def run_benchmarks(ops=None, sizes="cpu", repeats=5, backends=None, device=None, ref_budget_s=60.0, seed=0):
    """Time every op at every size for every available backend.

    Args:
        ops: op names (default: all of ``SIZES[sizes]``).
        sizes: "cpu", "gpu" or "tiny" (a key of ``SIZES``), or a dict {op: [size dicts]}.
        repeats: timed calls per measurement (median reported), after one warm-up.
        backends: backend names to time (default: every available one, plus "loop" for the
            selective scan); the reference is always timed (or skipped with a reason) for the ratios.
        device: where to run (default: CUDA if available, else the CPU).
        ref_budget_s: skip a reference whose single forward+backward is estimated above this.
        seed: seeds every input.

    Returns:
        A list of dicts: op, backend, size, device, fwd_ms, fwd_bwd_ms, ratio_fwd and
        ratio_fwd_bwd (reference time / this time), repeats, and on CUDA bandwidth_frac
        (achieved forward bytes/s over the measured copy bandwidth); or ``skipped`` with a reason.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    table = SIZES[sizes] if isinstance(sizes, str) else sizes
    ops = list(ops or table)
    unknown = [op for op in ops if op not in table]
    if unknown:
        raise ValueError(f"no sizes for op(s) {unknown}; choose from {', '.join(table)}")
    copy_bw = copy_bandwidth(device) if device.type == "cuda" else None
    status = available_backends(device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for op in ops:
        names = [n for n, s in status[op].items() if s["available"]] + (["loop"] if op == "selective_scan" else [])
        if backends is not None:
            names = [n for n in names if n in backends or n == "reference"]
        for size in table[op]:
            args, kwargs = op_inputs(op, size, device, gen)
            ref = None
            for name in ["reference"] + [n for n in names if n != "reference"]:
                row = dict(op=op, backend=name, size=dict(size), device=str(device))
                n_rep, warmup = repeats, True
                if name == "reference":
                    estimate = estimate_ref_seconds(op, size, device, gen, ref_budget_s)
                    if estimate > ref_budget_s:
                        row["skipped"] = (f"reference estimated at up to {estimate:.3g} s per forward+backward "
                                          f"(> {ref_budget_s:g} s budget)")
                        rows.append(row)
                        continue
                    # the whole reference measurement (forward and forward+backward) stays within ~2 budgets
                    n_rep = max(1, min(repeats, int(ref_budget_s / max(estimate, 1e-9)) - 1))
                    warmup = estimate < ref_budget_s / 10  # a loop taking seconds needs no warm-up
                fwd, fwd_bwd = runners(op, name, args, kwargs)
                row.update(fwd_ms=1e3 * median_seconds(fwd, device, n_rep, warmup),
                           fwd_bwd_ms=1e3 * median_seconds(fwd_bwd, device, n_rep, warmup), repeats=n_rep)
                if name == "reference":
                    ref = row
                if ref is not None:
                    row["ratio_fwd"] = ref["fwd_ms"] / row["fwd_ms"]
                    row["ratio_fwd_bwd"] = ref["fwd_bwd_ms"] / row["fwd_bwd_ms"]
                if copy_bw is not None:
                    row["bandwidth_frac"] = tensor_bytes(args, fwd()) / (row["fwd_ms"] / 1e3) / copy_bw
                rows.append(row)
    return rows


def to_markdown(rows):
    """A markdown table of ``run_benchmarks`` rows."""
    lines = ["| op | size | backend | fwd ms | fwd+bwd ms | x ref fwd | x ref fwd+bwd | BW frac | note |",
             "|---|---|---|---|---|---|---|---|---|"]

    def fmt(row, key, spec):
        return format(row[key], spec) if key in row else "-"

    for r in rows:
        size = " ".join(f"{k}={v}" for k, v in r["size"].items())
        cells = [r["op"], size, r["backend"], fmt(r, "fwd_ms", ".2f"), fmt(r, "fwd_bwd_ms", ".2f"),
                 fmt(r, "ratio_fwd", ".1f"), fmt(r, "ratio_fwd_bwd", ".1f"), fmt(r, "bandwidth_frac", ".2f"),
                 r.get("skipped", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
