"""APGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020): PGD with momentum and a step size
that halves at fixed checkpoints when progress stalls, restarting from the best point.

Schedule (the paper's Section 3): step size eta = 2 eps; checkpoints w_j = ceil(p_j N) with
p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06). At w_j the step size
halves for an example if
  1. the loss rose in fewer than rho * (w_j - w_{j-1}) of the steps since w_{j-1}, or
  2. the step size was not halved at w_{j-1} and the best loss has not improved since.
After a halving the iterate restarts from the best point found (with no momentum carried).
The targeted variant APGD-T lives in ``apgd_targeted.py``.
Update: z = P(x_k + eta * s(grad)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})),
a = 0.75 (a = 1 on the first step), s = sign for Linf, grad / ||grad||_2 for L2.

L1 (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML 2021,
as the AutoAttack code runs it): P is the projection onto the L1 ball intersected with the [0, 1] box; the
step moves the fraction ``topk`` of the coordinates with the largest |grad| (initially 0.2) by
``eta / their count`` each along sign(grad), with no momentum; eta starts at eps. Every
max(0.04 N, 1) steps the sparsity s of the best point is reviewed: topk becomes s / (d * 1.5); where s fell
below 0.95 of its value at the last review, eta resets to eps and the iterate restarts from the best
point, elsewhere eta is divided by 1.5 (kept within [eps / 10, eps]). ``large_reps`` (AutoAttack's L1
version) runs the N steps as three stages at 3 eps, 2 eps and eps (30 %, 30 % and the remaining 40 % of
the steps), each from the previous stage's best point; only the last stage's adversarial points count.
Unlike the AutoAttack code, the sparse step skips coordinates that the box stops from moving along the
gradient (the paper's point: the box decides which coordinates can still use the budget).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import (
    Attack,
    apply_mask,
    check_positive_int,
    get_loss,
    project,
    random_in_ball,
    steepest_ascent,
)

MOMENTUM = 0.75
# L1 (the AutoAttack code's constants): initial fraction of coordinates moved per step, the factor of the
# sparsity review, the step size's reduction and its floor (eps / L1_MIN_STEP), the review period (of N)
L1_TOPK, L1_SPARSITY, L1_STEP_DECAY, L1_MIN_STEP, L1_PERIOD = 0.2, 1.5, 1.5, 10.0, 0.04
# large_reps: the radii (multiples of eps) and the shares of the steps of the three stages
LARGE_REPS_EPS, LARGE_REPS_SHARE = (3.0, 2.0, 1.0), (0.3, 0.3)


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The iterations w_j = ceil(p_j * n_iter) (j >= 1, p_j <= 1) at which the step size is reviewed."""
    p = [0.0, 0.22]
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round() first: 0.57 * 100 is 57.000000000000007 in floating point.
    return sorted({math.ceil(round(pj * n_iter, 9)) for pj in p[1:] if pj <= 1} - {0})


def halve_step_size(n_rises: Tensor, period: int, rho: float, halved_before: Tensor, best_now: Tensor,
                    best_at_last_check: Tensor) -> Tensor:
    """The paper's review at a checkpoint w_j, per example: True where the step size halves.

    Args:
        n_rises: how many of the ``period`` = w_j - w_{j-1} steps since the last checkpoint raised the loss.
        rho: the oscillation threshold (0.75).
        halved_before: whether the step size was halved at w_{j-1}.
        best_now, best_at_last_check: the highest loss so far, now and at w_{j-1}.

    Condition 1 (the loss oscillates): ``n_rises < rho * period``. Condition 2 (progress stalled at
    an unchanged step size): not halved at w_{j-1} and the best loss did not improve since.
    """
    oscillating = n_rises < rho * period
    stalled = ~halved_before & (best_now <= best_at_last_check)
    return oscillating | stalled


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


class APGD(Attack):
    """Auto-PGD, untargeted.

    Args:
        model: classifier mapping [0, 1] inputs to logits.
        norm: "Linf", "L2" or "L1" (the sparse L1 version, see the module docstring).
        eps: radius of the threat model's ball.
        steps: iterations per restart (100 in AutoAttack).
        n_restarts: runs from independent random starts; later runs attack only the examples
            not yet fooled.
        loss: "ce" (APGD-CE), "dlr" (APGD-DLR) or "margin".
        rho: the oscillation threshold of condition 1.
        seed: seeds the random starts.
        eot_iter: samples per step for an expectation over transformation (randomised models): the
            loss, its input gradient and the logits are averaged over ``eot_iter`` forward+backward
            passes at the same point (20 in AutoAttack's "rand" version); 1 for deterministic models.
        large_reps: L1 only: the three-stage schedule over 3 eps, 2 eps and eps of AutoAttack's L1 version.

    Returns, per example, the first adversarial iterate found, else the highest-loss point.
    After a call, ``last_step_sizes`` (steps, batch) holds the step size of every iteration of the
    last run (the examples of that run only), to check the schedule.
    """

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, steps: int = 100,
                 n_restarts: int = 1, loss: str = "ce", rho: float = 0.75, seed: int | None = 0, eot_iter: int = 1,
                 large_reps: bool = False):
        super().__init__(model, eps, norm=norm, seed=seed)
        if large_reps and norm != "L1":
            raise ValueError(f"large_reps is the L1 version's schedule; it does not apply to norm={norm!r}")
        self.large_reps = bool(large_reps)
        self.steps = check_positive_int(steps, "steps")
        self.eot_iter = check_positive_int(eot_iter, "eot_iter")
        self.n_restarts = check_positive_int(n_restarts, "n_restarts")
        if not 0 < rho <= 1:
            raise ValueError(f"rho must lie in (0, 1], got {rho}")
        self.rho = float(rho)
        self.loss_name = loss
        self.loss_fn = self._loss_function(loss)
        self.checkpoints = set(apgd_checkpoints(self.steps))
        self.last_step_sizes: Tensor | None = None

    def _loss_function(self, loss: str) -> Callable:
        return get_loss(loss)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps:g}, steps={self.steps}, "
                f"n_restarts={self.n_restarts}, loss={self.loss_name!r}"
                + (f", eot_iter={self.eot_iter})" if self.eot_iter > 1 else ")"))

    def budget(self) -> dict:
        return {"steps": self.steps, "restarts": self.n_restarts, "loss": self.loss_name, "eot_iter": self.eot_iter,
                **({"large_reps": True} if self.large_reps else {})}

    def loss_and_grad(self, x_adv: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The base class's, averaged over ``eot_iter`` samples of a randomised model (EOT)."""
        loss, grad, logits = super().loss_and_grad(x_adv, loss_fn)
        for _ in range(self.eot_iter - 1):
            sample = super().loss_and_grad(x_adv, loss_fn)
            loss, grad, logits = loss + sample[0], grad + sample[1], logits + sample[2]
        if self.eot_iter > 1:
            loss, grad, logits = loss / self.eot_iter, grad / self.eot_iter, logits / self.eot_iter
        return loss, grad, logits

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            logits = self.logits(x)
            self.loss_fn(logits, y)  # the loss's own checks (DLR's class count), even if every example is fooled
        x_adv, fooled = x.clone(), logits.argmax(1) != y
        for _ in range(self.n_restarts):
            self.attack_remaining(x, y, x_adv, fooled, lambda z, idx: self.loss_fn(z, y[idx]), generator)
        return x_adv

    def attack_remaining(self, x: Tensor, y: Tensor, x_adv: Tensor, fooled: Tensor,
                         loss_fn: Callable[[Tensor, Tensor], Tensor], generator: torch.Generator) -> None:
        """One run on the examples not yet fooled; updates ``x_adv`` and ``fooled`` in place.

        ``loss_fn(logits, idx)`` is the loss for the examples ``idx`` of the batch.
        """
        idx = (~fooled).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        mask = None if self.mask is None else self.mask[idx]
        x_run, run_fooled = self.run(x[idx], y[idx], lambda z: loss_fn(z, idx), generator, mask)
        # None of these was fooled before: each takes this run's result (its best-loss point if not fooled).
        x_adv[idx] = x_run
        fooled[idx] = run_fooled

    def run(self, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor], Tensor],
            generator: torch.Generator, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One APGD run from a random start: (adversarial or best-loss point, fooled flags), perturbing only
        the coordinates of ``mask`` (bool, ``x``'s shape; None: all).

        Records the step size used at each iteration in ``last_step_sizes`` (steps, batch).
        """
        if self.norm == "L1":
            return self.run_l1(x, y, loss_fn, generator, mask)

        def step(x_from: Tensor, direction: Tensor, size: Tensor) -> Tensor:
            return project(x_from + _rows(size, x) * direction, x, self.eps, self.norm, mask)

        x_k = project(x + random_in_ball(x, self.eps, self.norm, generator, mask), x, self.eps, self.norm, mask)
        f_k, g_k, logits = self.loss_and_grad(x_k, loss_fn)
        fooled = logits.argmax(1) != y
        x_found = x_k.clone()
        x_best, f_best, g_best = x_k.clone(), f_k.clone(), g_k.clone()
        x_prev = x_k
        eta = torch.full_like(f_k, 2 * self.eps)
        n_rises = torch.zeros_like(f_k)
        f_best_at_check, halved_at_check, last_check = f_best.clone(), torch.zeros_like(fooled), 0
        step_sizes = []
        for k in range(self.steps):
            step_sizes.append(eta)
            z = step(x_k, steepest_ascent(g_k, self.norm, mask), eta)
            a = MOMENTUM if k > 0 else 1.0
            x_next = step(x_k, a * (z - x_k) + (1 - a) * (x_k - x_prev), torch.ones_like(eta))
            f_next, g_next, logits = self.loss_and_grad(x_next, loss_fn)

            newly_fooled = (logits.argmax(1) != y) & ~fooled
            x_found[newly_fooled] = x_next[newly_fooled]
            fooled |= newly_fooled
            n_rises += f_next > f_k
            better = f_next > f_best
            x_best[better], f_best[better], g_best[better] = x_next[better], f_next[better], g_next[better]
            x_prev, x_k, f_k, g_k = x_k, x_next, f_next, g_next

            if k + 1 in self.checkpoints:
                halve = halve_step_size(n_rises, k + 1 - last_check, self.rho, halved_at_check, f_best,
                                        f_best_at_check)
                eta = torch.where(halve, eta / 2, eta)
                # Restart the halved examples from their best point, without momentum (the paper's
                # x^(k+1) = x_max): the momentum term points along a trajectory that stopped paying off.
                x_k = torch.where(_rows(halve, x), x_best, x_k)
                x_prev = torch.where(_rows(halve, x), x_best, x_prev)
                g_k = torch.where(_rows(halve, x), g_best, g_k)
                f_k = torch.where(halve, f_best, f_k)
                n_rises.zero_()
                f_best_at_check, halved_at_check, last_check = f_best.clone(), halve, k + 1
        self.last_step_sizes = torch.stack(step_sizes)
        return torch.where(_rows(fooled, x), x_found, x_best), fooled

    # -- L1 -------------------------------------------------------------------------------
    def run_l1(self, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor], Tensor], generator: torch.Generator,
               mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """One L1 run (the module docstring's schedule; with ``large_reps`` its three stages)."""
        if not self.large_reps:
            start = x + random_in_ball(x, self.eps, "L1", generator, mask)
            x_out, fooled, _, step_sizes = self._l1_stage(x, y, loss_fn, start, self.eps, self.steps, mask)
            self.last_step_sizes = step_sizes
            return x_out, fooled
        shares = [math.ceil(share * self.steps) for share in LARGE_REPS_SHARE]
        stage_steps = [*shares, self.steps - sum(shares)]
        start = x + random_in_ball(x, LARGE_REPS_EPS[0] * self.eps, "L1", generator, mask)
        sizes = []
        for factor, steps in zip(LARGE_REPS_EPS, stage_steps):
            if steps < 1:  # a budget of 1 or 2 steps leaves the later stages none
                continue
            x_out, fooled, start, step_sizes = self._l1_stage(x, y, loss_fn, start, factor * self.eps, steps, mask)
            sizes.append(step_sizes)
        self.last_step_sizes = torch.cat(sizes)
        return x_out, fooled

    def _l1_stage(self, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor], Tensor], start: Tensor, eps: float,
                  steps: int, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``steps`` sparse L1 steps at radius ``eps`` from ``start`` (projected first): (adversarial or
        best-loss point, fooled flags, best-loss point, step sizes (steps, batch))."""
        n_coords = (mask.flatten(1).sum(1) if mask is not None else torch.full((x.shape[0],), x[0].numel(),
                    device=x.device)).clamp(min=1).to(x.dtype)
        period = max(int(L1_PERIOD * steps), 1)
        x_k = project(start, x, eps, "L1", mask)
        f_k, g_k, logits = self.loss_and_grad(x_k, loss_fn)
        fooled = logits.argmax(1) != y
        x_found = x_k.clone()
        x_best, f_best, g_best = x_k.clone(), f_k.clone(), g_k.clone()
        eta = torch.full_like(f_k, eps)
        topk = torch.full_like(f_k, L1_TOPK)
        sparsity_before = n_coords.clone()
        step_sizes = []
        for k in range(steps):
            step_sizes.append(eta)
            direction = sparse_l1_direction(g_k, topk, n_coords, mask, x_k)
            x_k = project(x_k + _rows(eta, x) * direction, x, eps, "L1", mask)
            f_k, g_k, logits = self.loss_and_grad(x_k, loss_fn)
            newly_fooled = (logits.argmax(1) != y) & ~fooled
            x_found[newly_fooled] = x_k[newly_fooled]
            fooled |= newly_fooled
            better = f_k > f_best
            x_best[better], f_best[better], g_best[better] = x_k[better], f_k[better], g_k[better]
            if (k + 1) % period == 0:
                sparsity = (x_best != x).flatten(1).sum(1).to(x.dtype)
                sparser = sparsity / sparsity_before < 0.95
                topk = sparsity / n_coords / L1_SPARSITY
                eta = torch.where(sparser, torch.full_like(eta, eps), eta / L1_STEP_DECAY).clamp(eps / L1_MIN_STEP,
                                                                                                 eps)
                sparsity_before = sparsity
                x_k = torch.where(_rows(sparser, x), x_best, x_k)
                g_k = torch.where(_rows(sparser, x), g_best, g_k)
        return torch.where(_rows(fooled, x), x_found, x_best), fooled, x_best, torch.stack(step_sizes)


def sparse_l1_direction(grad: Tensor, topk: Tensor, n_coords: Tensor, mask: Tensor | None, x_adv: Tensor) -> Tensor:
    """The L1-APGD step direction, unit L1 norm per example: ``sign(grad)`` on the ``ceil(topk * n_coords)``
    coordinates of largest |grad| (within ``mask``, skipping those the box stops along the gradient),
    divided by their number; zero where the gradient vanishes on every movable coordinate."""
    grad = apply_mask(grad, mask)
    blocked = ((grad > 0) & (x_adv >= 1)) | ((grad < 0) & (x_adv <= 0))
    score = grad.abs().masked_fill(blocked, 0.0).flatten(1)
    count = (topk * n_coords).ceil().clamp(1, score.shape[1]).long()
    threshold = score.sort(dim=1, descending=True).values.gather(1, (count - 1)[:, None])
    chosen = (score >= threshold) & (score > 0)
    direction = grad.sign().flatten(1) * chosen
    return (direction / chosen.sum(1, keepdim=True).clamp(min=1)).reshape(grad.shape)
