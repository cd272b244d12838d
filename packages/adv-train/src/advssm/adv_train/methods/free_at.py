"""Free adversarial training (Shafahi et al. 2019): m replays of each batch, one backward serving both
the weight update and the perturbation update."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import StepContext, TrainMethod, correct


class FreeAT(TrainMethod):
    """FreeAT-m: each batch is replayed ``free_replays`` times; every replay steps the optimiser and
    moves a persistent perturbation by one FGSM step.

    The perturbation persists across batches (that is what makes it "free") and is part of the resume
    state. Both the FGSM step and the clamp are ``eps``, following Shafahi et al.: the paper under
    reproduction hard-codes 4/255 for every data set, which on MNIST (eps 0.3) would train against a
    perturbation 20 times smaller than the one evaluated.

    One epoch here is one pass over the data (``free_replays`` optimiser steps per batch); Shafahi et al.
    divide the epoch count by m to match the cost of standard training; set ``epochs`` accordingly.
    """

    name = "free-at"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.noise: Tensor | None = None

    def train_step(self, ctx: StepContext, x: Tensor, y: Tensor) -> dict[str, float]:
        eps, n = ctx.eps, x.shape[0]
        if self.noise is None or self.noise.shape[1:] != x.shape[1:] or self.noise.shape[0] < n:
            self.noise = torch.zeros_like(x)
        self.noise = self.noise.to(device=x.device, dtype=x.dtype)
        loss_sum, hits = 0.0, 0
        for _ in range(ctx.config.free_replays):
            delta = self.noise[:n].clone().requires_grad_(True)
            logits = ctx.model((x + delta).clamp(0.0, 1.0))
            loss = F.cross_entropy(logits, y)
            ctx.step(loss + ctx.regulariser(x))
            self.noise[:n] = (self.noise[:n] + eps * delta.grad.sign()).clamp(-eps, eps)
            loss_sum, hits = loss_sum + float(loss.detach()), hits + correct(logits.detach(), y)
        replays = ctx.config.free_replays
        return {"loss": loss_sum / replays, "n": float(n * replays), "adv_correct": float(hits)}

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.noise is None else {"noise": self.noise.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.noise = state["noise"].clone() if "noise" in state else None
