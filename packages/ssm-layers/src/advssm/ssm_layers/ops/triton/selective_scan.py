"""Selective scan (S6 / Mamba) as Triton kernels: forward, backward and the autograd Function.

Design (chosen for being simple to get right, and close to what mamba's CUDA kernel does
per thread): one program owns one batch element and a block of ``BLOCK_D`` channels, keeps
the (BLOCK_D, BLOCK_N) state in registers and walks the sequence with a sequential ``for``
loop, chunk by chunk. ``tl.associative_scan`` over a chunk would expose more parallelism on
a GPU, but the loop is exact in any order-sensitive sense and easy to verify.

The forward stores the state at the start of every chunk (``CHUNK`` times fewer states than
the whole trajectory). The backward walks the chunks in reverse: it recomputes the chunk's
states from its boundary state into a small per-program scratch buffer, then runs the
adjoint recurrence ``lam_t = dy_t C_t + exp(delta_{t+1} A) lam_{t+1}`` backwards through it.
Gradients of the shared parameters (A, fixed B/C, D, delta_bias) are accumulated per
program and summed with torch afterwards; input-dependent B/C gradients are written per
channel block and summed the same way, so no atomics are needed.

All compute is fp32. Numerics verified under ``TRITON_INTERPRET=1`` so far;
compiled for sm_80 / sm_90, without a GPU, by ``benchmarks/compile_kernels.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._first_order import first_order_backward

CHUNK = 16  # time steps between stored boundary states
MAX_BLOCK_D = 32  # channels per program
# Compile options of every launch, explicit rather than the installed triton's default: FP fusion
# (a*b+c as one FMA, rounded once) as CUDA and triton < 3.10 do by default; triton 3.10 turns
# the default off, which would change the kernels' rounding with the triton version.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@triton.jit
def _load_dt(delta_ptr, bias, idx, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta_t after bias and softplus (zero where masked), and the pre-softplus value."""
    raw = tl.load(delta_ptr + idx, mask=mask, other=0.0)
    if HAS_BIAS:
        raw = raw + bias
    dt = raw
    if SOFTPLUS:  # torch's softplus threshold: linear above 20
        dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw)))
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _load_bc(ptr, fixed, pid_b, offs_n, mask_n, t, N, L,
             VAR: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """B_t or C_t as a (BLOCK_D, BLOCK_N) tile: the fixed (dim, N) tile, or row t of (batch, N, L)."""
    if VAR:
        v = tl.load(ptr + pid_b * N * L + offs_n * L + t, mask=mask_n & (offs_n * 0 + t < L), other=0.0)
        return tl.broadcast_to(v[None, :], (BLOCK_D, BLOCK_N))
    else:
        return fixed


@triton.jit
def _load_optional(ptr, idx, mask, PRESENT: tl.constexpr):
    """The tensor's values, or zeros (same shape as ``idx``) when it was not given."""
    v = tl.zeros(idx.shape, dtype=tl.float32)
    if PRESENT:
        v = tl.load(ptr + idx, mask=mask, other=0.0)
    return v


@triton.jit
def _load_fixed(ptr, idx, mask, VAR: tl.constexpr):
    """A fixed (dim, N) B or C tile; zeros when B or C is input-dependent (then loaded per step)."""
    v = tl.zeros(idx.shape, dtype=tl.float32)
    if not VAR:
        v = tl.load(ptr + idx, mask=mask, other=0.0)
    return v


@triton.jit
def _ssm_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                    out_ptr, last_ptr, chunk_ptr, dim, L, N, n_chunks,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    VAR_B: tl.constexpr, VAR_C: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < dim, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]
    a = tl.load(A_ptr + dn, mask=mask_dn, other=0.0)
    b_fix, c_fix = _load_fixed(B_ptr, dn, mask_dn, VAR_B), _load_fixed(C_ptr, dn, mask_dn, VAR_C)
    d_skip = _load_optional(D_ptr, offs_d, mask_d, HAS_D)
    bias = _load_optional(bias_ptr, offs_d, mask_d, HAS_BIAS)
    row = (pid_b * dim + offs_d) * L
    chunk_row = ((pid_b * dim + offs_d[:, None]) * n_chunks) * N + offs_n[None, :]
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(n_chunks):
        tl.store(chunk_ptr + chunk_row + c * N, h, mask=mask_dn)
        for k in range(CHUNK):
            t = c * CHUNK + k
            m_t = mask_d & (offs_d * 0 + t < L)
            dt, _ = _load_dt(delta_ptr, bias, row + t, m_t, HAS_BIAS, SOFTPLUS)
            ut = tl.load(u_ptr + row + t, mask=m_t, other=0.0)
            bt = _load_bc(B_ptr, b_fix, pid_b, offs_n, mask_n, t, N, L, VAR_B, BLOCK_D, BLOCK_N)
            ct = _load_bc(C_ptr, c_fix, pid_b, offs_n, mask_n, t, N, L, VAR_C, BLOCK_D, BLOCK_N)
            h = tl.exp(dt[:, None] * a) * h + (dt * ut)[:, None] * bt
            y = tl.sum(h * ct, axis=1) + d_skip * ut
            if HAS_Z:
                zt = tl.load(z_ptr + row + t, mask=m_t, other=0.0)
                y = y * zt * tl.sigmoid(zt)
            tl.store(out_ptr + row + t, y, mask=m_t)
    tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * N + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _ssm_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                    dout_ptr, dlast_ptr, chunk_ptr, scratch_ptr,
                    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                    dim, L, N, n_chunks,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_DLAST: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b, pid_d = tl.program_id(0), tl.program_id(1)
    n_dblocks = tl.num_programs(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < dim, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]
    a = tl.load(A_ptr + dn, mask=mask_dn, other=0.0)
    b_fix, c_fix = _load_fixed(B_ptr, dn, mask_dn, VAR_B), _load_fixed(C_ptr, dn, mask_dn, VAR_C)
    d_skip = _load_optional(D_ptr, offs_d, mask_d, HAS_D)
    bias = _load_optional(bias_ptr, offs_d, mask_d, HAS_BIAS)
    row = (pid_b * dim + offs_d) * L
    bdn = (pid_b * dim + offs_d[:, None]) * N + offs_n[None, :]  # (batch, dim, N) layout
    chunk_row = ((pid_b * dim + offs_d[:, None]) * n_chunks) * N + offs_n[None, :]
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    scratch = scratch_ptr + (pid_b * n_dblocks + pid_d) * (CHUNK + 1) * BLOCK_D * BLOCK_N + tile
    part_nl = (pid_b * n_dblocks + pid_d) * N * L + offs_n * L  # per-block partial of (batch, N, L)

    # g carries exp(delta_{t+1} A) * lam_{t+1}; the last state's own gradient seeds it.
    g = tl.load(dlast_ptr + bdn, mask=mask_dn & HAS_DLAST, other=0.0)
    acc_dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    acc_dB = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    acc_dC = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    acc_dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        h = tl.load(chunk_ptr + chunk_row + c * N, mask=mask_dn, other=0.0)
        tl.store(scratch, h)
        for k in range(CHUNK):  # recompute this chunk's states: scratch[k + 1] = x_{c*CHUNK + k}
            t = c * CHUNK + k
            m_t = mask_d & (offs_d * 0 + t < L)
            dt, _ = _load_dt(delta_ptr, bias, row + t, m_t, HAS_BIAS, SOFTPLUS)
            ut = tl.load(u_ptr + row + t, mask=m_t, other=0.0)
            bt = _load_bc(B_ptr, b_fix, pid_b, offs_n, mask_n, t, N, L, VAR_B, BLOCK_D, BLOCK_N)
            h = tl.exp(dt[:, None] * a) * h + (dt * ut)[:, None] * bt
            tl.store(scratch + (k + 1) * BLOCK_D * BLOCK_N, h)
        tl.debug_barrier()
        for kr in range(CHUNK):
            k = CHUNK - 1 - kr
            t = c * CHUNK + k
            m_t = mask_d & (offs_d * 0 + t < L)
            x_t = tl.load(scratch + (k + 1) * BLOCK_D * BLOCK_N)
            x_prev = tl.load(scratch + k * BLOCK_D * BLOCK_N)
            dt, raw = _load_dt(delta_ptr, bias, row + t, m_t, HAS_BIAS, SOFTPLUS)
            ut = tl.load(u_ptr + row + t, mask=m_t, other=0.0)
            bt = _load_bc(B_ptr, b_fix, pid_b, offs_n, mask_n, t, N, L, VAR_B, BLOCK_D, BLOCK_N)
            ct = _load_bc(C_ptr, c_fix, pid_b, offs_n, mask_n, t, N, L, VAR_C, BLOCK_D, BLOCK_N)
            dy = tl.load(dout_ptr + row + t, mask=m_t, other=0.0)
            if HAS_Z:  # y = (C.x + D u) * silu(z)
                zt = tl.load(z_ptr + row + t, mask=m_t, other=0.0)
                sig = tl.sigmoid(zt)
                y_pre = tl.sum(x_t * ct, axis=1) + d_skip * ut
                tl.store(dz_ptr + row + t, dy * y_pre * sig * (1.0 + zt * (1.0 - sig)), mask=m_t)
                dy = dy * zt * sig
            lam = g + dy[:, None] * ct
            decay = tl.exp(dt[:, None] * a)
            if VAR_C:
                tl.store(dC_ptr + part_nl + t, tl.sum(dy[:, None] * x_t, axis=0), mask=mask_n & (offs_n * 0 + t < L))
            else:
                acc_dC += dy[:, None] * x_t
            lam_decay_x = lam * decay * x_prev
            acc_dA += lam_decay_x * dt[:, None]
            if VAR_B:
                tl.store(dB_ptr + part_nl + t, tl.sum(lam * (dt * ut)[:, None], axis=0),
                         mask=mask_n & (offs_n * 0 + t < L))
            else:
                acc_dB += lam * (dt * ut)[:, None]
            ddt = tl.sum(lam_decay_x * a + lam * bt * ut[:, None], axis=1)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            ddt = tl.where(m_t, ddt, 0.0)
            acc_dbias += ddt
            acc_dD += dy * ut
            tl.store(ddelta_ptr + row + t, ddt, mask=m_t)
            tl.store(du_ptr + row + t, tl.sum(lam * bt, axis=1) * dt + d_skip * dy, mask=m_t)
            g = decay * lam
        tl.debug_barrier()
    tl.store(dA_ptr + bdn, acc_dA, mask=mask_dn)
    if not VAR_B:
        tl.store(dB_ptr + bdn, acc_dB, mask=mask_dn)
    if not VAR_C:
        tl.store(dC_ptr + bdn, acc_dC, mask=mask_dn)
    tl.store(dD_ptr + pid_b * dim + offs_d, acc_dD, mask=mask_d)
    tl.store(dbias_ptr + pid_b * dim + offs_d, acc_dbias, mask=mask_d)


def _blocks(dim: int, N: int) -> tuple[int, int]:
    return min(triton.next_power_of_2(dim), MAX_BLOCK_D), triton.next_power_of_2(N)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


class SelectiveScanFn(torch.autograd.Function):
    """Autograd wrapper: fp32 kernels, gradients for every tensor input and the last state."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        batch, dim, L = u.shape
        N = A.shape[1]
        f = [_f32(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
        uf = f[0]
        dummy = uf  # stands in for absent optional tensors; never read (masked by the constexpr flags)
        n_chunks = triton.cdiv(L, CHUNK)
        BLOCK_D, BLOCK_N = _blocks(dim, N)
        out = torch.empty_like(uf)
        last = uf.new_empty(batch, dim, N)
        chunks = uf.new_empty(batch, dim, n_chunks, N)
        grid = (batch, triton.cdiv(dim, BLOCK_D))
        _ssm_fwd_kernel[grid](*(t if t is not None else dummy for t in f), out, last, chunks, dim, L, N, n_chunks,
                              HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                              SOFTPLUS=bool(delta_softplus), VAR_B=B.dim() == 3, VAR_C=C.dim() == 3,
                              CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, **LAUNCH_OPTIONS)
        ctx.save_for_backward(*(t if t is not None else dummy for t in f), chunks)
        ctx.present = tuple(t is not None for t in (D, z, delta_bias))
        ctx.softplus = bool(delta_softplus)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias))
        out = out.to(u.dtype)
        if return_last_state:  # the state in the compute dtype, as the torch path and mamba_ssm return it
            return out, last.to(torch.float64 if u.dtype == torch.float64 else torch.float32)
        return out

    @staticmethod
    @first_order_backward("selective_scan")  # the kernels build no graph: a second derivative is refused
    def backward(ctx, dout, *maybe_dlast):
        u, delta, A, B, C, D, z, bias, chunks = ctx.saved_tensors
        has_d, has_z, has_bias = ctx.present
        batch, dim, L = u.shape
        N = A.shape[1]
        n_chunks = chunks.shape[2]
        BLOCK_D, BLOCK_N = _blocks(dim, N)
        n_dblocks = triton.cdiv(dim, BLOCK_D)
        var_b, var_c = B.dim() == 3, C.dim() == 3
        dlast = maybe_dlast[0] if maybe_dlast else None
        dout = _f32(dout) if dout is not None else torch.zeros_like(u)
        scratch = u.new_empty(batch * n_dblocks * (CHUNK + 1) * BLOCK_D * BLOCK_N)
        du, ddelta, dz = torch.empty_like(u), torch.empty_like(u), torch.zeros_like(u)
        dA = u.new_zeros(batch, dim, N)
        dB = u.new_zeros(batch, n_dblocks, N, L) if var_b else u.new_zeros(batch, dim, N)
        dC = u.new_zeros(batch, n_dblocks, N, L) if var_c else u.new_zeros(batch, dim, N)
        dD, dbias = u.new_zeros(batch, dim), u.new_zeros(batch, dim)
        _ssm_bwd_kernel[(batch, n_dblocks)](
            u, delta, A, B, C, D, z, bias, dout, _f32(dlast) if dlast is not None else u, chunks, scratch,
            du, ddelta, dz, dA, dB, dC, dD, dbias, dim, L, N, n_chunks,
            HAS_D=has_d, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=ctx.softplus, VAR_B=var_b, VAR_C=var_c,
            HAS_DLAST=dlast is not None, CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, **LAUNCH_OPTIONS)
        grads = (du, ddelta, dA.sum(0), dB.sum(1 if var_b else 0), dC.sum(1 if var_c else 0),
                 dD.sum(0) if has_d else None, dz if has_z else None, dbias.sum(0) if has_bias else None)
        grads = tuple(None if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes))
        return (*grads, None, None)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """Run the Triton selective scan (inputs already validated by the caller)."""
    return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
