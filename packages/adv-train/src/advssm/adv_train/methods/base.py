"""What every training method shares: the step context the trainer hands in, and the method base class.

A method turns one batch into weight updates. Most methods only say what the loss is (``loss``); the
base ``train_step`` adds the optional Jacobian regulariser and lets the context take the optimiser
step. Methods that must step inside the batch (FreeAT's replays, YOPO's two optimisers) override
``train_step`` and step through the same context, so finiteness checks and the cross-rank gradient
reduction live in one place.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .jacobian import jacobian_frobenius_sq

if TYPE_CHECKING:  # config derives its method names from METHODS, so it imports this package
    from ..config import TrainConfig


def warmup_scale(epoch: int, warmup_epochs: int) -> float:
    """The eps warm-up's factor for training epoch ``epoch`` (1-based): ``min(1, epoch / warmup_epochs)``.

    With ``warmup_epochs = k > 0`` epoch 1 trains at eps / k, epoch e at e / k of eps, epoch k and later at
    the full eps; ``k = 0`` switches the ramp off (factor 1 in every epoch, epoch 0 included).

    Example:
        >>> [warmup_scale(e, 4) for e in (1, 2, 4, 9)], warmup_scale(0, 0)
        ([0.25, 0.5, 1.0, 1.0], 1.0)
    """
    if warmup_epochs == 0:
        return 1.0
    if epoch < 1:
        raise ValueError(f"the eps warm-up counts epochs from 1, got epoch {epoch}; a StepContext built outside "
                         "the Trainer needs epoch=1, 2, ... when TrainConfig.eps_warmup_epochs > 0")
    return min(1.0, epoch / warmup_epochs)


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message names the epoch and the batch."""

    def __init__(self, value: float, epoch: int, batch_idx: int) -> None:
        super().__init__(f"non-finite training loss ({value}) at epoch {epoch}, batch {batch_idx}; "
                         "lower TrainConfig.lr or check the model and data for NaN/inf")
        self.value, self.epoch, self.batch_idx = value, epoch, batch_idx


@dataclass
class StepContext:
    """Everything a method may touch during one training step.

    Attributes:
        model: the model being trained (maps [0, 1] inputs to logits).
        optimizers: named optimisers; ``"main"`` always exists unless the method's own groups leave it empty.
        config: the run's ``TrainConfig``.
        generator: the run's seeded CPU generator for the method's own randomness.
        epoch, batch_idx: where the run is, epoch 1-based (error messages, and the eps warm-up).
        sync_grads: reduces gradients across ranks (no-op in a single process).
        scaler: the fp16 loss scaler (``TrainConfig.precision = "fp16"``), or None.

    Methods read the training attack's budget from ``eps`` and ``alpha`` here, never from the config, so
    that ``TrainConfig.eps_warmup_epochs`` holds for every method through this one place.
    """

    model: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    config: TrainConfig
    generator: torch.Generator
    epoch: int = 0
    batch_idx: int = 0
    sync_grads: Callable[[Sequence[Tensor]], None] = field(default=lambda params: None)
    scaler: torch.amp.GradScaler | None = None

    @property
    def eps_scale(self) -> float:
        """The fraction of ``config.eps`` trained against in this epoch (see ``warmup_scale``)."""
        return warmup_scale(self.epoch, self.config.eps_warmup_epochs)

    @property
    def eps(self) -> float:
        """The training attack's Linf budget in this epoch: ``config.eps * eps_scale``."""
        return self.config.eps * self.eps_scale

    @property
    def alpha(self) -> float:
        """The training attack's step size in this epoch: ``config.alpha * eps_scale`` (scaled with eps)."""
        return self.config.alpha * self.eps_scale

    def rand_like(self, x: Tensor) -> Tensor:
        """Uniform [0, 1) noise shaped like ``x``, drawn from the seeded generator (CPU, then moved)."""
        return torch.rand(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like ``x``, drawn from the seeded generator."""
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)

    def check_finite(self, loss: Tensor) -> None:
        """Raise ``NonFiniteLossError`` naming the epoch and batch if ``loss`` is NaN or infinite."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(float(loss.detach().sum()), self.epoch, self.batch_idx)

    def regulariser(self, x: Tensor) -> Tensor:
        """``jacobian_weight * ||d logits / d x||_F^2`` on the clean batch, or 0 when switched off."""
        cfg = self.config
        if cfg.jacobian_weight == 0:
            return x.new_zeros(())
        return cfg.jacobian_weight * jacobian_frobenius_sq(self.model, x, cfg.jacobian_projections, self.generator)

    def step(self, loss: Tensor, names: Sequence[str] = ("main",)) -> None:
        """Check ``loss``, backpropagate it, reduce gradients across ranks and step the named optimisers
        (under fp16: the loss scaled, the gradients unscaled before the reduction, a step with inf/NaN
        gradients skipped and the scale lowered, as ``torch.amp.GradScaler`` does)."""
        self.check_finite(loss)
        opts = [self.optimizers[n] for n in names if n in self.optimizers]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        for opt in opts:
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            self.sync_grads([p for g in opt.param_groups for p in g["params"]])
            if self.scaler is None:
                opt.step()
            else:
                self.scaler.step(opt)
        if self.scaler is not None:
            self.scaler.update()


class TrainMethod:
    """Base class of a training method: subclasses define ``loss`` (or override ``train_step``).

    Stats returned by ``train_step`` are plain numbers: ``loss`` (mean over the batch), ``n`` (batch size),
    and where the method computes them ``clean_correct`` / ``adv_correct`` (counts).
    """

    name = "base"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def param_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Which parameters each named optimiser owns; one ``"main"`` optimiser by default."""
        return {"main": [p for p in model.parameters() if p.requires_grad]}

    def loss(self, ctx: StepContext, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The training loss of one batch (with grad) and its stats."""
        raise NotImplementedError(f"{type(self).__name__} must define loss() or override train_step()")

    def train_step(self, ctx: StepContext, x: Tensor, y: Tensor) -> dict[str, float]:
        """One optimiser step on the batch; returns the stats."""
        loss, stats = self.loss(ctx, x, y)
        ctx.step(loss + ctx.regulariser(x))
        return stats

    def state_dict(self) -> dict[str, Tensor]:
        """State carried across batches (saved for resume); stateless methods return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what ``state_dict`` returned."""


def correct(logits: Tensor, y: Tensor) -> int:
    """Number of rows whose arg-max is the label."""
    return int((logits.argmax(dim=1) == y).sum())


def ce_stats(loss: Tensor, y: Tensor, clean: Tensor | None = None, adv: Tensor | None = None) -> dict[str, float]:
    """Stats dict of a batch from its loss and whichever logits the method computed."""
    stats = {"loss": float(loss.detach()), "n": float(y.shape[0])}
    if clean is not None:
        stats["clean_correct"] = float(correct(clean, y))
    if adv is not None:
        stats["adv_correct"] = float(correct(adv, y))
    return stats


def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Clip ``x_adv`` into the Linf ball of radius ``eps`` around ``x`` and into the [0, 1] image box."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def kl_to_clean(adv_logits: Tensor, clean_probs: Tensor, reduction: str = "batchmean") -> Tensor:
    """KL(clean || adv) between softmax outputs, as TRADES writes it (``F.kl_div`` on log-probs)."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), clean_probs, reduction=reduction)
