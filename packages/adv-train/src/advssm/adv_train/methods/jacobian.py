"""Jacobian regularisation (Hoffman, Roberts and Yaida 2019): a cheap unbiased estimate of ||J||_F^2."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

try:  # the layer zoo's ops and attention take twice-differentiable paths inside this block
    from advssm.ssm_layers.ops import double_backward
except ImportError:  # adv-train without the zoo: any other model is differentiated as it is
    double_backward = contextlib.nullcontext


def jacobian_frobenius_sq(model: nn.Module, x: Tensor, n_projections: int, generator: torch.Generator) -> Tensor:
    """Mean over the batch of ``||d logits / d x||_F^2``, estimated with random projections.

    For v uniform on the unit sphere of the C-dimensional output space, ``C * E ||v^T J||^2 = ||J||_F^2``,
    so ``n_projections`` vector-Jacobian products replace the C a full Jacobian would take. The graph is
    kept (``create_graph``) so the estimate can be minimised. The forward runs inside
    ``advssm.ssm_layers.ops.double_backward()`` (when advssm-ssm-layers is installed), so every op and
    layer of the zoo takes a path autograd differentiates twice (each substitution said once, with a
    ``DoubleBackwardWarning``).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> jacobian_frobenius_sq(model, torch.rand(2, 4), 1, torch.Generator().manual_seed(0)).shape
        torch.Size([])

    Args:
        model: maps ``x`` to logits of shape (batch, classes).
        x: clean inputs (batch, ...).
        n_projections: number of random directions per example (>= 1).
        generator: seeded CPU generator for the directions.
    """
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    x = x.detach().requires_grad_(True)
    with double_backward():
        logits = model(x)
    batch, classes = logits.shape
    total = logits.new_zeros(())
    for _ in range(n_projections):
        v = torch.randn((batch, classes), generator=generator, dtype=logits.dtype).to(logits.device)
        v = v / v.norm(dim=1, keepdim=True)
        (vjp,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=True, retain_graph=True)
        total = total + vjp.pow(2).sum()
    return classes * total / (n_projections * batch)
