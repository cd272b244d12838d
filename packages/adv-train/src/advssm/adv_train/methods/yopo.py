"""YOPO (Zhang et al. 2019, "You Only Propagate Once"): most of the attack runs through the first layer.

Protocol: the model exposes ``model.first_layer``, an ``nn.Module`` whose output the rest of the model
consumes exactly once per forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import StepContext, TrainMethod, correct, project_linf


def first_layer_of(model: nn.Module) -> nn.Module:
    """``model.first_layer``, or a TypeError that names the protocol."""
    layer = getattr(model, "first_layer", None)
    if not isinstance(layer, nn.Module):
        raise TypeError(
            f"YOPO needs the first-layer protocol: {type(model).__name__} must expose `first_layer`, the "
            "nn.Module applied first to the input whose output the rest of the model uses once per forward; "
            "add that attribute or choose another method")
    return layer


class YOPO(TrainMethod):
    """YOPO-m-n (default 5-3) with the Hamiltonian taken at the first layer.

    Per batch, from a uniform random start, ``yopo_m`` times: one full forward/backward at ``x + eta``
    gives the weight gradient of every layer but the first and the co-state ``p = -dL/df0`` at the first
    layer's output f0; then ``yopo_n`` signed steps of size ``alpha`` ascend the Hamiltonian
    ``-<p, f0(x + eta)>`` using the first layer only; the first layer's gradient is that of the Hamiltonian
    at the updated eta. Gradients are averaged over the m outer steps; the first layer has its own optimiser
    (``"layer_one"``), the rest the ``"main"`` one; both use the run's AdamW settings and schedule.
    """

    name = "yopo"

    def param_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        first = [p for p in first_layer_of(model).parameters() if p.requires_grad]
        ids = {id(p) for p in first}
        return {"main": [p for p in model.parameters() if p.requires_grad and id(p) not in ids], "layer_one": first}

    def train_step(self, ctx: StepContext, x: Tensor, y: Tensor) -> dict[str, float]:
        cfg, model = ctx.config, ctx.model
        first = first_layer_of(model)
        groups = self.param_groups(model)
        for opt in ctx.optimizers.values():
            opt.zero_grad(set_to_none=True)
        reg = ctx.regulariser(x)
        if reg.requires_grad:
            ctx.check_finite(reg)
            reg.backward()
        eta = project_linf(x + (2 * ctx.rand_like(x) - 1) * ctx.eps, x, ctx.eps) - x
        loss_sum, hits = 0.0, 0
        for _ in range(cfg.yopo_m):
            logits, f0 = self._forward_capturing(model, first, x + eta)
            loss = F.cross_entropy(logits, y)
            ctx.check_finite(loss)
            grads = torch.autograd.grad(loss, [f0, *groups["main"]], allow_unused=True)
            costate = grads[0].detach()  # dL/df0 = -p
            _accumulate(groups["main"], grads[1:], 1.0 / cfg.yopo_m)
            for _ in range(cfg.yopo_n):
                eta.requires_grad_(True)
                (g,) = torch.autograd.grad((costate * first(x + eta)).sum(), eta)
                eta = project_linf(x + eta.detach() + ctx.alpha * g.sign(), x, ctx.eps) - x
            hamiltonian = (costate * first(x + eta)).sum()
            _accumulate(groups["layer_one"], torch.autograd.grad(hamiltonian, groups["layer_one"], allow_unused=True),
                        1.0 / cfg.yopo_m)
            loss_sum, hits = loss_sum + float(loss.detach()), hits + correct(logits.detach(), y)
        for name, opt in ctx.optimizers.items():
            ctx.sync_grads(groups[name])
            opt.step()
        return {"loss": loss_sum / cfg.yopo_m, "n": float(x.shape[0] * cfg.yopo_m), "adv_correct": float(hits)}

    @staticmethod
    def _forward_capturing(model: nn.Module, first: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """Full forward pass that also returns the first layer's output (checked to be produced once)."""
        outputs: list[Tensor] = []
        handle = first.register_forward_hook(lambda module, args, out: outputs.append(out))
        try:
            logits = model(x)
        finally:
            handle.remove()
        if len(outputs) != 1 or not isinstance(outputs[0], Tensor):
            raise RuntimeError(f"YOPO's first-layer protocol: model.first_layer ran {len(outputs)} times in one "
                               "forward pass (or returned a non-tensor); it must run exactly once")
        return logits, outputs[0]


def _accumulate(params: list[nn.Parameter], grads: tuple[Tensor | None, ...], scale: float) -> None:
    """Add ``scale * grad`` into each parameter's ``.grad``."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        p.grad = g * scale if p.grad is None else p.grad + g * scale
