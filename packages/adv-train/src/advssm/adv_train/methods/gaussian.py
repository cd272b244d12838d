"""Gaussian data augmentation (Cohen, Rosenfeld and Kolter 2019): cross-entropy on ``x + sigma * N(0, I)``, the
training that makes a base classifier worth smoothing (``advssm.adv_train.certify.Smooth``)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import StepContext, TrainMethod, ce_stats


class GaussianNoise(TrainMethod):
    """Train on Gaussian-noised inputs with ``TrainConfig.noise_sigma`` as the noise's standard deviation.

    The noise is drawn from the run's seeded generator and, as in Cohen et al., not clipped to [0, 1], so the model
    sees exactly the inputs the smoothed classifier will feed it; train with the sigma you will certify with.
    The eps settings play no part (no attack runs).

    Example:
        >>> from advssm.adv_train import TrainConfig
        >>> GaussianNoise(TrainConfig(method="gaussian", noise_sigma=0.25)).name
        'gaussian'
    """

    name = "gaussian"

    def loss(self, ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = ctx.model(x + ctx.config.noise_sigma * ctx.randn_like(x))
        loss = F.cross_entropy(logits, y)
        return loss, ce_stats(loss, y, adv=logits)
