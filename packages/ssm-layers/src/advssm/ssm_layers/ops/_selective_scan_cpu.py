"""The selective scan's PyTorch path: a time-major, block-wise sequential scan with a
hand-written backward, bias, softplus, D and the gate included.

    delta <- softplus(delta + delta_bias)
    x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t,   x_{-1} = 0
    y_t = (<C_t, x_t> + D u_t) silu(z_t)

``selective_scan_cpu`` computes in the inputs' dtype (fp64 stays fp64; fp32 states for fp32).
The design, measured on 2 shared CPU cores (``benchmarks/bench_ops.py --scan-peers``;
figures in docs/performance.md):
- Time-major (L, batch, N, dim) work tensors make each time step one contiguous slab, so the
  recurrence is one fused ``addcmul_`` per step: one small op, with no autograd node. It is
  exactly the sequential recurrence (no products of decays are formed, so no range problem:
  exp(delta A) may underflow to 0 or, for delta < 0, exceed 1, as in the reference). For the
  1024 steps of batch 8, dim 128, N 16 the steps cost 14 ms on one core; ``torch.cumsum`` of the
  same (1024, 8, 128, 16) tensor costs 45 ms along a contiguous last dim and 270 ms along time,
  before the extra exp passes and the range limits of a cumsum-of-log-decays scan; the
  log-step block scan this replaces was 3.7-7x slower on one thread.
- dim innermost: the contractions over N (<C_t, x_t>, <B_t, g_t>) are (1, N) @ (N, dim)
  products, and those over dim and the batch (dA, fixed B / C) vectorise along dim.
- Time runs in blocks of about ``_BLOCK_BYTES`` of state, so that a block's decays, states and
  adjoints stay in cache; the elementwise and contraction work is batched per block (a few ops
  per block, not per step), into buffers allocated once per call.
- Forward keeps only the state entering each block; backward recomputes a block's decays and
  states from it and runs the adjoint g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1} backwards,
  again one ``addcmul_`` per step. Memory held for backward: time-major copies of the inputs
  and one state per block (at most 1/``_MIN_STEPS`` of all states).
- Forward and backward run on one intra-op thread (``_one_intra_op_thread``).
- The backward is first-order only (``out=`` and in-place ops record no graph); a second
  derivative raises an error naming ``double_backward()``, under which ``selective_scan`` runs
  its twice-differentiable path instead.
"""
from __future__ import annotations

import contextlib

import torch

# State bytes per time block: a block's decays, states, adjoints and scratch (four buffers of this
# size) stay in the L2 / L3 caches. Measured on one core at batch 8, N 16, L 1024, fwd+bwd CPU ms
# for 0.5 / 1 / 2 / 4 MiB: 96 / 90 / 91 / 106 (dim 128) and 215 / 198 / 183 / 206 (dim 256).
_BLOCK_BYTES = 2 << 20
# At least this many steps per block: the states kept for backward (one per block) are then at
# most 1/_MIN_STEPS of all states, also when one step's state alone exceeds _BLOCK_BYTES.
_MIN_STEPS = 8


def _block_steps(batch, dim, N, itemsize, L):
    """Time steps per block: about ``_BLOCK_BYTES`` of (batch, dim, N) states, at least ``_MIN_STEPS``."""
    return max(1, min(L, max(_MIN_STEPS, _BLOCK_BYTES // max(1, batch * dim * N * itemsize))))


def _time_major(M):
    """Time-varying (batch, X, L) -> (L, batch, X); a fixed (dim, N) B or C -> (N, dim); always a
    fresh contiguous copy (so that it may be changed in place).

    As one 2-D transpose (batch * X, L) -> (L, batch * X): ATen copies that with a cache-blocked
    kernel, about 5x faster here than the general strided copy of ``permute(2, 0, 1).contiguous()``.
    """
    if M.dim() == 2:
        return M.t().clone(memory_format=torch.contiguous_format)
    batch, X, L = M.shape
    return M.reshape(batch * X, L).t().clone(memory_format=torch.contiguous_format).view(L, batch, X)


def _batch_major(M_t):
    """The inverse of ``_time_major``."""
    if M_t.dim() == 2:
        return M_t.t().contiguous()
    L, batch, X = M_t.shape
    return M_t.view(L, batch * X).t().contiguous().view(batch, X, L)


def _per_step(M, t0, t1):
    """B or C of steps [t0, t1) broadcastable to (T, batch, N, dim): (T, batch, N, 1), or fixed (N, dim)."""
    return M[t0:t1, :, :, None] if M.dim() == 3 else M


def _contract_n(x, M, t0, t1, out, scratch):
    """out[t, b, d] = sum_n M[.., n] x[t, b, n, d]: <C_t, x_t> (or <B_t, g_t>) for one block."""
    T, batch, N, dim = x.shape
    if M.dim() == 3:  # one (1, N) @ (N, dim) product per step and batch element
        torch.bmm(M[t0:t1].reshape(T * batch, 1, N), x.view(T * batch, N, dim), out=out.view(T * batch, 1, dim))
    else:
        torch.sum(torch.mul(x, M, out=scratch), dim=2, out=out)


def _contract_d(x, w, M, t0, t1, grad, scratch):
    """The gradient of a B or C from sum_d x[t, b, n, d] w[t, b, d]: written per step into
    ``grad[t0:t1]`` (time-varying M), or also summed over steps and batch into ``grad`` (N, dim) (fixed M)."""
    T, batch, N, dim = x.shape
    xw = torch.mul(x, w[:, :, None, :], out=scratch)
    if M.dim() == 3:
        torch.sum(xw, dim=-1, out=grad[t0:t1])
    else:
        grad.add_(xw.view(T * batch, N, dim).sum(0))


@contextlib.contextmanager
def _one_intra_op_thread(device):
    """Run every op of the scan on the calling thread only (CPU; the setting is restored after).

    The ops of a block are ~10-100 us of work each. With more than one intra-op thread, each op
    over ATen's grain size (32768 elements) opens an OpenMP parallel region, thousands per call,
    and after each region libgomp's workers spin-wait by default (OMP_WAIT_POLICY unset). On a
    machine whose cores are busy with other processes the spinning workers take the cores the
    main thread needs: measured on 2 cores at load 6-15, this scan without this guard ran 16-19x
    slower on 2 threads than on 1 (1.3-2.6x with OMP_WAIT_POLICY=PASSIVE), and the log-step
    path it replaced 10-14x (1.1x PASSIVE). Even the ~25 elementwise ops of bias, softplus and
    gate left outside made 2 threads 2x slower, so they are inside. Nothing measured was lost:
    even with PASSIVE 2 threads were slower than 1 here, and the per-step ops are below the
    grain size, so they ran on one thread anyway. (Not measured on an idle many-core machine.)
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _SelectiveScan(torch.autograd.Function):
    """The whole op, prologue (bias, softplus) and epilogue (D, gate) included, so that all of it
    runs under ``_one_intra_op_thread`` in forward and in backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        with torch.autocast(device_type=u.device.type, enabled=False), _one_intra_op_thread(u.device):
            u_t, A_t, B_t, C_t = (_time_major(M) for M in (u, A, B, C))
            pre_t = _time_major(delta)  # delta + bias, before softplus
            if delta_bias is not None:
                pre_t.add_(delta_bias)
            delta_t = torch.nn.functional.softplus(pre_t) if delta_softplus else pre_t
            y_t, last, starts, T = _forward(u_t, delta_t, A_t, B_t, C_t)
            if D is not None:
                y_t.addcmul_(u_t, D)
            z_t = None if z is None else _time_major(z)
            out = y_t if z is None else y_t * torch.nn.functional.silu(z_t)
        ctx.save_for_backward(u_t, delta_t, A_t, B_t, C_t, starts, D, z_t, None if z is None else y_t,
                              pre_t if delta_softplus else None)
        ctx.block, ctx.has_bias = T, delta_bias is not None
        return _batch_major(out), last.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, dout, dlast):
        if torch.is_grad_enabled():  # create_graph: the out= and in-place ops below record no graph
            raise RuntimeError(
                "selective_scan's block-wise PyTorch scan has a first-order backward only, and a second derivative "
                "was asked for (create_graph=True); run the forward inside advssm.ssm_layers.ops.double_backward() "
                "(Jacobian regularisation does), where selective_scan runs its twice-differentiable path")
        u_t, delta_t, A_t, B_t, C_t, starts, D, z_t, y_t, pre_t = ctx.saved_tensors
        with torch.autocast(device_type=u_t.device.type, enabled=False), _one_intra_op_thread(u_t.device):
            dy_t = _time_major(dout.to(u_t.dtype))
            dz = None
            if z_t is not None:  # out = y silu(z): d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z)
                s = torch.sigmoid(z_t)
                dz = _batch_major(torch.sub(1, s).mul_(z_t).add_(1).mul_(s).mul_(y_t).mul_(dy_t))
                dy_t.mul_(s.mul_(z_t))
            dD = None if D is None else (dy_t * u_t).sum((0, 1))
            du, ddelta, dA, dB, dC = _backward(u_t, delta_t, A_t, B_t, C_t, starts, ctx.block, dy_t,
                                               dlast.to(u_t.dtype).transpose(1, 2))
            if D is not None:
                du.addcmul_(dy_t, D)
            if pre_t is not None:  # d softplus(x) / dx = sigmoid(x)
                ddelta.mul_(torch.sigmoid(pre_t))
            dbias = ddelta.sum((0, 1)) if ctx.has_bias else None
            grads = tuple(_batch_major(g) for g in (du, ddelta, dA, dB, dC))
        return (*grads, dD, dz, dbias, None)


def _forward(u_t, delta_t, A_t, B_t, C_t):
    """y (L, batch, dim), the last state (batch, N, dim), the state entering each block, the block length."""
    L, batch, dim = u_t.shape
    N = A_t.shape[0]
    T = _block_steps(batch, dim, N, u_t.element_size(), L)
    du = delta_t * u_t
    y = u_t.new_empty(L, batch, dim)
    starts = u_t.new_empty(-(-L // T), batch, N, dim)
    decay, scratch = u_t.new_empty(T, batch, N, dim), u_t.new_empty(T, batch, N, dim)
    # states[0] is the state entering the block, states[1 + t] the state after its step t
    states = u_t.new_zeros(T + 1, batch, N, dim)
    decay_t, states_t = decay.unbind(0), states.unbind(0)  # per-step views, made once
    for i, t0 in enumerate(range(0, L, T)):
        t1 = min(L, t0 + T)
        n = t1 - t0
        starts[i].copy_(states[0])
        torch.mul(delta_t[t0:t1, :, None, :], A_t, out=decay[:n]).exp_()
        x = torch.mul(du[t0:t1, :, None, :], _per_step(B_t, t0, t1), out=states[1:n + 1])
        for t in range(n):
            states_t[t + 1].addcmul_(decay_t[t], states_t[t])
        _contract_n(x, C_t, t0, t1, y[t0:t1], scratch[:n])
        states[0].copy_(x[n - 1])
    return y, states[0].clone(), starts, T


def _backward(u_t, delta_t, A_t, B_t, C_t, starts, T, dy, dlast):
    """Gradients of (u, delta, A, B, C), in the layouts of ``_time_major``, given those of y and of the last state."""
    L, batch, dim = u_t.shape
    N = A_t.shape[0]
    du_in = delta_t * u_t  # the input term is delta_t u_t B_t
    du, ddelta = torch.empty_like(u_t), torch.empty_like(delta_t)
    dA, dB, dC = torch.zeros_like(A_t), torch.zeros_like(B_t), torch.zeros_like(C_t)
    decay, states, adj, scratch = (u_t.new_empty(T + (k == 1), batch, N, dim) for k in range(4))
    gB, gA = u_t.new_empty(T, batch, dim), u_t.new_empty(T, batch, dim)
    decay_t, states_t, adj_t = decay.unbind(0), states.unbind(0), adj.unbind(0)  # per-step views, made once
    carry = dlast  # d loss / d x at the end of the block being processed, from everything later
    for i in reversed(range(starts.shape[0])):
        t0, t1 = i * T, min(L, (i + 1) * T)
        n = t1 - t0
        a = torch.mul(delta_t[t0:t1, :, None, :], A_t, out=decay[:n]).exp_()
        states[0].copy_(starts[i])
        x = torch.mul(du_in[t0:t1, :, None, :], _per_step(B_t, t0, t1), out=states[1:n + 1])
        for t in range(n):
            states_t[t + 1].addcmul_(decay_t[t], states_t[t])
        dy_blk = dy[t0:t1]
        g = torch.mul(dy_blk[:, :, None, :], _per_step(C_t, t0, t1), out=adj[:n])
        adj_t[n - 1].add_(carry)
        for t in range(n - 2, -1, -1):
            adj_t[t].addcmul_(decay_t[t + 1], adj_t[t + 1])
        carry = decay_t[0] * adj_t[0]
        # dC_t = sum_d x_t dy_t ; dB_t = sum_d g_t delta_t u_t ; sum_n g_t B_t -> du, ddelta
        _contract_d(x, dy_blk, C_t, t0, t1, dC, scratch[:n])
        _contract_d(g, du_in[t0:t1], B_t, t0, t1, dB, scratch[:n])
        _contract_n(g, B_t, t0, t1, gB[:n], scratch[:n])
        # h = d loss / d(delta_t A) = g_t exp(delta_t A) x_{t-1}, in place of the decays (no longer needed)
        h = a.mul_(states[:n]).mul_(g)
        torch.sum(torch.mul(h, A_t, out=scratch[:n]), dim=2, out=gA[:n])
        dA.add_(h.mul_(delta_t[t0:t1, :, None, :]).view(n * batch, N, dim).sum(0))
        torch.mul(gB[:n], delta_t[t0:t1], out=du[t0:t1])
        torch.addcmul(gA[:n], gB[:n], u_t[t0:t1], out=ddelta[t0:t1])
    return du, ddelta, dA, dB, dC


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """(y, last state) of the selective scan, differentiable (see the module docstring).

    u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (dim, N) or (batch, N, L); D,
    delta_bias: (dim,); all of one real floating dtype, the compute dtype (the caller checks
    shapes and casts; ``selective_scan_torch`` does). y = (<C_t, x_t> + D u_t) silu(z_t) with
    delta <- softplus(delta + delta_bias) (softplus only if ``delta_softplus``); the last state
    is (batch, dim, N).

    Example:
        >>> u, delta = torch.randn(2, 4, 10), torch.rand(2, 4, 10)
        >>> A, B, C = -torch.rand(4, 3), torch.randn(2, 3, 10), torch.randn(2, 3, 10)
        >>> y, last = selective_scan_cpu(u, delta, A, B, C, D=torch.ones(4), delta_softplus=True)
        >>> y.shape, last.shape
        (torch.Size([2, 4, 10]), torch.Size([2, 4, 3]))
    """
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or not u.dtype.is_floating_point:
        raise ValueError(f"selective_scan_cpu: all tensors must share one real floating dtype, got {dtypes}")
    return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
