"""The Triton kernels' backward passes are first-order: they compute gradients with kernels, which build no
autograd graph. A second derivative through one (``create_graph=True``) is refused when it is asked for, with
a message that names the way to get it, instead of PyTorch's generic ``once_differentiable`` error at the
later backward.
"""
from __future__ import annotations

import functools

import torch


def first_order_backward(op: str):
    """Decorate an autograd Function's ``backward``: run it without a graph, and refuse ``create_graph=True``.

    Example::

        @staticmethod
        @first_order_backward("selective_scan")
        def backward(ctx, dout): ...
    """
    def decorate(backward):
        once = torch.autograd.function.once_differentiable(backward)

        @functools.wraps(backward)
        def checked(ctx, *grads):
            if torch.is_grad_enabled():  # the engine enables grad mode in backward only under create_graph
                raise RuntimeError(
                    f"{op}'s Triton kernel has a first-order backward only, and a second derivative was asked for "
                    "(create_graph=True); run the forward inside advssm.ssm_layers.ops.double_backward() "
                    f"(Jacobian regularisation does), where {op} runs its twice-differentiable PyTorch path")
            return once(ctx, *grads)

        return checked

    return decorate
