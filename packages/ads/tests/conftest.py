"""Shared fixtures: tiny models of every layer type and a one-step FGSM attack.

The attack is written here on purpose: advssm-ads depends on advssm-ssm-layers only, so its
tests never import advssm.adv_train.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from advssm.ssm_layers import ModelConfig, build_model

# The models here are tiny: intra-op threads only add overhead, and on a busy 2-core machine
# (pytest-xdist workers) they turn millisecond ops into 10 ms ones.
torch.set_num_threads(1)


@pytest.fixture
def tiny_model():
    """Factory: a seeded, small classifier (d_model 8, d_state 4, 2 blocks, 3 classes)."""

    def make(layer: str = "s4d", seed: int = 0, **overrides):
        torch.manual_seed(seed)
        values = dict(layer=layer, d_input=1, d_model=8, d_state=4, n_layers=2, n_classes=3)
        values.update(overrides)
        return build_model(ModelConfig(**values))

    return make


@pytest.fixture
def fgsm():
    """Factory: fgsm(model, eps) -> attack(x, y), one signed-gradient step, clamped to [0, 1]."""

    def make(model: torch.nn.Module, eps: float):
        def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            was_training = model.training
            model.eval()
            x = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
            model.train(was_training)
            return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()

        return attack

    return make
