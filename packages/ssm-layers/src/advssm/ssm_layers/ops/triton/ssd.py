"""SSD (Mamba-2's scan) as Triton kernels: forward, backward and the autograd Function.

Design (chosen for being simple to get right; correctness before speed): one program owns one
batch element, one head and a block of ``BLOCK_P`` of the head's ``headdim`` rows, keeps the
(BLOCK_P, BLOCK_N) state in registers and walks the sequence with a sequential ``for`` loop:

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t + D x_t,   y <- y silu(z)

with dt_t <- clamp(softplus(dt_t + dt_bias)) computed on the fly. This is the recurrence itself,
not the chunked (quadratic-within-a-chunk) algorithm of ``mamba_ssm``: ``chunk_size`` does not
enter (the result does not depend on it beyond rounding). The forward stores the state every
``CHUNK`` steps. The backward walks those chunks in reverse: it recomputes a chunk's states from
its stored start into a per-program scratch buffer, then runs the adjoint
``lam_t = dy_t C_t^T + exp(dt_{t+1} A) lam_{t+1}`` backwards through it.

Gradients shared between programs are written per program and summed with torch afterwards, so no
atomics are needed and the result is deterministic: B and C per head (a group's heads summed after),
dt per row block, A and D per batch element. All compute is fp32. Numerics verified under
``TRITON_INTERPRET=1``; compiled for sm_80 / sm_90, without a GPU, by ``benchmarks/compile_kernels.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._first_order import first_order_backward

CHUNK = 32  # time steps between stored states (memory for backward: L / CHUNK states + CHUNK + 1 scratch)
MAX_TILE = 4096  # state elements per program: BLOCK_P x BLOCK_N (registers)
# Compile options of every launch, explicit rather than the installed triton's default: FP fusion
# (a*b+c as one FMA, rounded once) as CUDA and triton < 3.10 do by default; triton 3.10 turns
# the default off, which would change the kernels' rounding with the triton version.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@triton.jit
def _dt_at(dt_ptrs, bias, dt_lo, dt_hi, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr):
    """dt_t after bias, softplus and clamp, and d dt_t / d raw dt_t, as vectors of equal values
    (``dt_ptrs`` repeats one address: the same code then runs compiled and in the interpreter)."""
    raw = tl.load(dt_ptrs)
    if HAS_BIAS:
        raw = raw + bias
    dt = raw
    slope = raw * 0.0 + 1.0
    if SOFTPLUS:  # torch's softplus: linear above 20
        dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw)))
        slope = tl.where(raw > 20.0, 1.0, tl.sigmoid(raw))
    if HAS_LIMIT:  # torch.clamp's gradient: 1 inside [lo, hi], bounds included
        slope = tl.where((dt >= dt_lo) & (dt <= dt_hi), slope, 0.0)
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    return dt, slope


@triton.jit
def _program_setup(A_ptr, D_ptr, bias_ptr, nheads, headdim, ngroups, dstate, L,
                   HAS_D: tl.constexpr, D_PER_HEAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's rows and state columns, their masks, A, dt_bias and D of its head, and the
    offsets of its step 0 in x (rows), dt (repeated) and B / C (columns)."""
    pid_b, pid_h, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p, mask_n = offs_p < headdim, offs_n < dstate
    a = tl.load(A_ptr + pid_h)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + pid_h)
    d_skip = tl.zeros((BLOCK_P,), dtype=tl.float32)
    if HAS_D:
        if D_PER_HEAD:
            d_skip += tl.load(D_ptr + pid_h)
        else:
            d_skip = tl.load(D_ptr + pid_h * headdim + offs_p, mask=mask_p, other=0.0)
    x_off = (pid_b * L * nheads + pid_h) * headdim + offs_p
    dt_off = pid_b * L * nheads + pid_h + offs_p * 0
    bc_off = (pid_b * L * ngroups + pid_h // (nheads // ngroups)) * dstate + offs_n
    return offs_p, offs_n, mask_p, mask_n, a, bias, d_skip, x_off, dt_off, bc_off


@triton.jit
def _ssd_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, chunk_ptr,
                    L, nheads, headdim, ngroups, dstate, n_chunks, dt_lo, dt_hi,
                    HAS_D: tl.constexpr, D_PER_HEAD: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_p, offs_n, mask_p, mask_n, a, bias, d_skip, x_off, dt_off, bc_off = _program_setup(
        A_ptr, D_ptr, bias_ptr, nheads, headdim, ngroups, dstate, L, HAS_D, D_PER_HEAD, HAS_BIAS, BLOCK_P, BLOCK_N)
    program = (tl.program_id(0) * nheads + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
    tile = tl.arange(0, BLOCK_P)[:, None] * BLOCK_N + offs_n[None, :]
    states = chunk_ptr + program * n_chunks * BLOCK_P * BLOCK_N + tile
    x_step, bc_step = nheads * headdim, ngroups * dstate
    h = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for c in range(0, n_chunks):
        tl.store(states + c * BLOCK_P * BLOCK_N, h)
        for t in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, L)):
            dt, _ = _dt_at(dt_ptr + dt_off + t * nheads, bias, dt_lo, dt_hi, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
            xt = tl.load(x_ptr + x_off + t * x_step, mask=mask_p, other=0.0)
            bt = tl.load(B_ptr + bc_off + t * bc_step, mask=mask_n, other=0.0)
            ct = tl.load(C_ptr + bc_off + t * bc_step, mask=mask_n, other=0.0)
            h = tl.exp(dt * a)[:, None] * h + (dt * xt)[:, None] * bt[None, :]
            y = tl.sum(h * ct[None, :], axis=1) + d_skip * xt
            if HAS_Z:
                zt = tl.load(z_ptr + x_off + t * x_step, mask=mask_p, other=0.0)
                y = y * zt * tl.sigmoid(zt)
            tl.store(out_ptr + x_off + t * x_step, y, mask=mask_p)


@triton.jit
def _ssd_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, chunk_ptr, scratch_ptr,
                    dx_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr,
                    L, nheads, headdim, ngroups, dstate, n_chunks, dt_lo, dt_hi,
                    HAS_D: tl.constexpr, D_PER_HEAD: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_p, offs_n, mask_p, mask_n, a, bias, d_skip, x_off, dt_off, bc_off = _program_setup(
        A_ptr, D_ptr, bias_ptr, nheads, headdim, ngroups, dstate, L, HAS_D, D_PER_HEAD, HAS_BIAS, BLOCK_P, BLOCK_N)
    n_pblocks = tl.num_programs(2)
    program = (tl.program_id(0) * nheads + tl.program_id(1)) * n_pblocks + tl.program_id(2)
    tile = tl.arange(0, BLOCK_P)[:, None] * BLOCK_N + offs_n[None, :]
    states = chunk_ptr + program * n_chunks * BLOCK_P * BLOCK_N + tile
    scratch = scratch_ptr + program * (CHUNK + 1) * BLOCK_P * BLOCK_N + tile
    x_step, bc_step = nheads * headdim, ngroups * dstate
    # per-head, per-row-block parts of the B / C / dt gradients (summed over heads and row blocks afterwards):
    # dB, dC (batch, L, nheads * n_pblocks, dstate); ddt (batch, L, nheads, n_pblocks)
    part_off = (tl.program_id(0) * L * nheads * n_pblocks + tl.program_id(1) * n_pblocks + tl.program_id(2)) * dstate \
        + offs_n
    part_step = nheads * n_pblocks * dstate
    ddt_off = (tl.program_id(0) * L * nheads + tl.program_id(1)) * n_pblocks + tl.program_id(2) + offs_p * 0
    first = tl.arange(0, BLOCK_P) == 0  # one lane stores a value all lanes hold

    g = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)  # exp(dt_{t+1} A) lam_{t+1}: d loss / d h_t from later steps
    acc_dA = tl.zeros((BLOCK_P,), dtype=tl.float32)
    acc_dD = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        start = c * CHUNK
        steps = tl.minimum(CHUNK, L - start)
        h = tl.load(states + c * BLOCK_P * BLOCK_N)
        tl.store(scratch, h)
        for k in range(0, steps):  # recompute this chunk's states: scratch[k + 1] = h_{start + k}
            t = start + k
            dt, _ = _dt_at(dt_ptr + dt_off + t * nheads, bias, dt_lo, dt_hi, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
            xt = tl.load(x_ptr + x_off + t * x_step, mask=mask_p, other=0.0)
            bt = tl.load(B_ptr + bc_off + t * bc_step, mask=mask_n, other=0.0)
            h = tl.exp(dt * a)[:, None] * h + (dt * xt)[:, None] * bt[None, :]
            tl.store(scratch + (k + 1) * BLOCK_P * BLOCK_N, h)
        tl.debug_barrier()
        for kr in range(0, steps):
            k = steps - 1 - kr
            t = start + k
            h_t = tl.load(scratch + (k + 1) * BLOCK_P * BLOCK_N)
            h_prev = tl.load(scratch + k * BLOCK_P * BLOCK_N)
            dt, slope = _dt_at(dt_ptr + dt_off + t * nheads, bias, dt_lo, dt_hi, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
            xt = tl.load(x_ptr + x_off + t * x_step, mask=mask_p, other=0.0)
            bt = tl.load(B_ptr + bc_off + t * bc_step, mask=mask_n, other=0.0)
            ct = tl.load(C_ptr + bc_off + t * bc_step, mask=mask_n, other=0.0)
            dy = tl.load(dout_ptr + x_off + t * x_step, mask=mask_p, other=0.0)
            if HAS_Z:  # out = y silu(z): d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z)
                zt = tl.load(z_ptr + x_off + t * x_step, mask=mask_p, other=0.0)
                sig = tl.sigmoid(zt)
                y = tl.sum(h_t * ct[None, :], axis=1) + d_skip * xt
                tl.store(dz_ptr + x_off + t * x_step, dy * y * sig * (1.0 + zt * (1.0 - sig)), mask=mask_p)
                dy = dy * zt * sig
            lam = g + dy[:, None] * ct[None, :]  # d loss / d h_t
            decay = tl.exp(dt * a)  # (BLOCK_P,) equal values
            tl.store(dC_ptr + part_off + t * part_step, tl.sum(dy[:, None] * h_t, axis=0), mask=mask_n)
            tl.store(dB_ptr + part_off + t * part_step, tl.sum(lam * (dt * xt)[:, None], axis=0), mask=mask_n)
            lam_b = tl.sum(lam * bt[None, :], axis=1)
            tl.store(dx_ptr + x_off + t * x_step, lam_b * dt + d_skip * dy, mask=mask_p)
            lam_decay_h = tl.sum(lam * h_prev, axis=1) * decay  # d loss / d (dt A), per row
            acc_dA += lam_decay_h * dt
            ddt = tl.sum(lam_decay_h * a + lam_b * xt, axis=0) * slope
            tl.store(ddt_ptr + ddt_off + t * nheads * n_pblocks, ddt, mask=first)
            acc_dD += dy * xt
            g = decay[:, None] * lam
        tl.debug_barrier()
    tl.store(dA_ptr + program, tl.sum(acc_dA, axis=0))
    tl.store(dD_ptr + program * BLOCK_P + tl.arange(0, BLOCK_P), acc_dD)


def blocks(headdim: int, dstate: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_N): the state tile of one program, at most ``MAX_TILE`` elements."""
    block_n = triton.next_power_of_2(dstate)
    return min(triton.next_power_of_2(headdim), max(1, MAX_TILE // block_n)), block_n


def _warps(block_p: int, block_n: int) -> int:
    return 8 if block_p * block_n >= 4096 else 4


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


_NO_LIMIT = (0.0, float("inf"))


class SSDFn(torch.autograd.Function):
    """Autograd wrapper: fp32 kernels, gradients for every tensor input; once differentiable."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit):
        batch, L, nheads, headdim = x.shape
        ngroups, dstate = B.shape[2], B.shape[3]
        f = [_f32(t) for t in (x, dt, A, B, C, D, z, dt_bias)]
        xf = f[0]
        dummy = xf  # stands in for absent optional tensors; never read (masked by the constexpr flags)
        BLOCK_P, BLOCK_N = blocks(headdim, dstate)
        n_pblocks, n_chunks = triton.cdiv(headdim, BLOCK_P), triton.cdiv(L, CHUNK)
        has_limit = tuple(float(v) for v in dt_limit) != _NO_LIMIT
        lo, hi = (float(v) for v in dt_limit)
        out = torch.empty_like(xf)
        chunks = xf.new_empty(batch * nheads * n_pblocks * n_chunks * BLOCK_P * BLOCK_N)
        flags = dict(HAS_D=D is not None, D_PER_HEAD=D is not None and D.dim() == 1, HAS_Z=z is not None,
                     HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit,
                     CHUNK=CHUNK, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N)
        _ssd_fwd_kernel[(batch, nheads, n_pblocks)](
            *(t if t is not None else dummy for t in f), out, chunks,
            L, nheads, headdim, ngroups, dstate, n_chunks, lo, hi if has_limit else 0.0,
            **flags, num_warps=_warps(BLOCK_P, BLOCK_N), **LAUNCH_OPTIONS)
        ctx.save_for_backward(*(t if t is not None else dummy for t in f), chunks)
        ctx.flags, ctx.limit = flags, (lo, hi if has_limit else 0.0)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (x, dt, A, B, C, D, z, dt_bias))
        return out.to(x.dtype)

    @staticmethod
    @first_order_backward("ssd")  # the kernels build no graph: a second derivative is refused
    def backward(ctx, dout):
        x, dt, A, B, C, D, z, bias, chunks = ctx.saved_tensors
        flags = ctx.flags
        batch, L, nheads, headdim = x.shape
        ngroups, dstate = B.shape[2], B.shape[3]
        BLOCK_P, BLOCK_N = flags["BLOCK_P"], flags["BLOCK_N"]
        n_pblocks, n_chunks = triton.cdiv(headdim, BLOCK_P), triton.cdiv(L, CHUNK)
        programs = batch * nheads * n_pblocks
        scratch = x.new_empty(programs * (CHUNK + 1) * BLOCK_P * BLOCK_N)
        dx, dz = torch.empty_like(x), torch.zeros_like(x)
        ddt = x.new_empty(batch, L, nheads, n_pblocks)
        dB, dC = (x.new_empty(batch, L, nheads * n_pblocks, dstate) for _ in range(2))
        dA = x.new_empty(batch, nheads, n_pblocks)
        dD = x.new_empty(batch, nheads, n_pblocks * BLOCK_P)
        _ssd_bwd_kernel[(batch, nheads, n_pblocks)](
            x, dt, A, B, C, D, z, bias, _f32(dout), chunks, scratch, dx, ddt, dA, dB, dC, dD, dz,
            L, nheads, headdim, ngroups, dstate, n_chunks, *ctx.limit,
            **flags, num_warps=_warps(BLOCK_P, BLOCK_N), **LAUNCH_OPTIONS)
        ddt = ddt.sum(-1)  # d loss / d (raw dt + bias): the row blocks' parts
        per_group = nheads // ngroups * n_pblocks
        dB, dC = (g.view(batch, L, ngroups, per_group, dstate).sum(3) for g in (dB, dC))
        dD = dD[..., :headdim].sum(0)
        grads = (dx, ddt, dA.sum((0, 2)), dB, dC,
                 (dD.sum(-1) if flags["D_PER_HEAD"] else dD) if flags["HAS_D"] else None,
                 dz if flags["HAS_Z"] else None, ddt.sum((0, 1)) if flags["HAS_BIAS"] else None)
        grads = tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))
        return (*grads, None, None)


def ssd_fn(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=_NO_LIMIT):
    """Run the Triton SSD (inputs already validated by the caller; ``chunk_size`` does not enter)."""
    return SSDFn.apply(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
