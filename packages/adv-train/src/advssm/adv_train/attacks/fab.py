"""FAB (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020): a minimum-norm attack that repeatedly projects onto the linear
approximation of the decision boundary, biased towards the original point, and steps back
towards it whenever it is on the wrong side. Robust accuracy at eps counts an example as broken
when FAB's smallest adversarial perturbation has norm <= eps.

Each iteration, at the current point x_k with boundary function f (logit of the label minus
logit of the target) and gradient g, the boundary is approximated by the hyperplane
f(x_k) + <g, p - x_k> = 0. With d_k, d_0 the minimal-norm steps from x_k and from the original
x_0 onto that hyperplane inside [0, 1]^d,
    a = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max),
    x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x_0 + eta d_0), 0, 1),
and if x_{k+1} is misclassified it is recorded (if smaller than the best so far) and pulled
back: x_{k+1} = x_0 + beta (x_{k+1} - x_0). Defaults as in AutoAttack: alpha_max 0.1, eta 1.05,
beta 0.9.

Differences from the reference implementation:
- the projection onto hyperplane-and-box is solved exactly (in float64) by Newton's method on
  its piecewise-linear dual, finished by sorting the breakpoints where a few steps do not suffice;
- restarts after the first start uniformly on the sphere of radius eps / 2 (Linf or L2);
- the untargeted version picks the closest linearised boundary with one backward pass per class.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import TINY, Attack, apply_mask, check_positive_int, per_example_norm, random_in_ball

# Newton iterations before the remaining rows (if any) are solved by sorting; 2 to 4 suffice in practice.
NEWTON_STEPS = 16


def _breakpoints(z: Tensor, w: Tensor, c: Tensor, norm: str) -> tuple[Tensor, Tensor, Tensor]:
    """(v, slopes a, breakpoints t) of ``sign(c) <w, clip(s v, -z, 1 - z)> = sum_i a_i min(s, t_i)``.

    Written with arithmetic: ``torch.where`` and a ``clamp`` with tensor bounds are several times slower
    on the CPU. Where v_i = 0 (so a_i = 0), t_i is large and finite: it never matters.
    """
    sigma = c.sign()[:, None]
    v = sigma * (w if norm == "L2" else w.sign())
    slope = (sigma * w) * v  # >= 0; zero where v is
    room = 0.5 + v.sign() * (0.5 - z)  # distance to the box along v: 1 - z where v > 0, z where v < 0
    t = room / v.abs().clamp(min=TINY)
    return v, slope, t


def _solve_by_sorting(slope: Tensor, t: Tensor, target: Tensor) -> Tensor:
    """The smallest s with ``sum_i a_i min(s, t_i) >= target`` per row (the largest t where none reaches it)."""
    t, order = t.sort(dim=1)
    slope = slope.gather(1, order)
    flat = slope * t
    before = flat.cumsum(1) - flat  # sum_{j < k} a_j t_j: the coordinates already on the box
    after = slope.flip(1).cumsum(1).flip(1)  # sum_{j >= k} a_j: those still moving
    reach = before + t * after  # value at each breakpoint
    target = target[:, None]
    k = (reach < target).sum(1, keepdim=True)  # first breakpoint that reaches the target (d: none does)
    inside = k < t.shape[1]
    k = k.clamp(max=t.shape[1] - 1)
    rate = after.gather(1, k)
    s = torch.where(rate > 0, (target - before.gather(1, k)) / rate.clamp(min=TINY), t.gather(1, k))
    return torch.where(inside, s, t[:, -1:]).squeeze(1)


def _project_l1(z: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """The minimal-L1 step onto ``<w, delta> = c`` inside the box: the coordinates in order of decreasing
    |w_i| (the most margin per unit of L1 norm), each moved along ``sign(c w_i)`` as far as the box lets it,
    until the hyperplane is reached (the last one partly); every coordinate on the box where it is not."""
    sigma = c.sign()[:, None]
    direction = sigma * w.sign()
    room = 0.5 + direction * (0.5 - z)  # 1 - z where the coordinate moves up, z where it moves down
    weight = w.abs()
    weight, order = weight.sort(dim=1, descending=True)
    room = room.gather(1, order)
    gain = weight * room  # margin each coordinate can give
    before = gain.cumsum(1) - gain
    target = c.abs()[:, None]
    amount = ((target - before) / weight.clamp(min=TINY)).clamp(min=0)
    amount = torch.minimum(amount, room) * (weight > 0)
    step = torch.zeros_like(z).scatter_(1, order, amount)
    return step * direction


def project_onto_hyperplane_in_box(z: Tensor, w: Tensor, c: Tensor, norm: str) -> Tensor:
    """Minimal-``norm`` steps ``delta`` with ``<w, delta> = c`` and ``z + delta`` in [0, 1], per row.

    Args:
        z: points, (batch, d), inside [0, 1].
        w: hyperplane normals, (batch, d); a coordinate with w_i = 0 (e.g. outside a mask) never moves.
        c: offsets, (batch,).
        norm: "Linf", "L2" or "L1" (L1: the greedy ``_project_l1``, exact for this linear program).

    The minimiser has the form ``delta(s) = clip(s v, -z, 1 - z)`` with ``v = sign(c) w`` (L2) or
    ``sign(c) sign(w)`` (Linf). Coordinate i then contributes ``a_i min(s, t_i)`` to
    ``sign(c) <w, delta(s)>``, with slope ``a_i = sign(c) w_i v_i`` until it meets the box at
    ``t_i``: a piecewise-linear, non-decreasing, concave function of ``s``. Newton's method from
    s = 0 never overshoots such a function and lands exactly on the root's segment after a few
    steps (each costs a few elementwise passes); rows still short after ``NEWTON_STEPS`` are
    solved exactly by sorting the breakpoints (prefix sums over the sorted ``t_i``). Where the box
    cannot reach the hyperplane, the result is the feasible step that gets closest to it (every
    coordinate on the box).
    """
    if norm == "L1":
        return _project_l1(z, w, c)
    v, slope, t = _breakpoints(z, w, c, norm)
    target = c.abs()
    s = torch.zeros_like(target)
    solved = torch.zeros_like(target, dtype=torch.bool)
    for _ in range(NEWTON_STEPS):
        reach = (slope * torch.minimum(s[:, None], t)).sum(1)
        rate = (slope * (t > s[:, None])).sum(1)  # the right derivative
        gap = target - reach
        solved = (gap <= 1e-13 * target) | (rate <= 0)
        if bool(solved.all()):
            break
        s = torch.where(solved, s, s + gap / rate.clamp(min=TINY))
    else:
        rest = (~solved).nonzero().squeeze(1)
        s[rest] = _solve_by_sorting(slope[rest], t[rest], target[rest])
    # nothing moves any more but the hyperplane is not reached: every coordinate on the box
    s = torch.where(solved & (rate <= 0) & (gap > 0), t.amax(1), s)
    return torch.maximum(torch.minimum(s[:, None] * v, 1 - z), -z)


class FAB(Attack):
    """FAB, targeted by default (FAB-T, as in AutoAttack), Linf, L2 or L1; with a mask, every projection is
    onto the hyperplane within the masked coordinates (the gradient is zeroed outside them).

    Args:
        model: classifier mapping [0, 1] inputs to logits.
        norm: "Linf", "L2" or "L1".
        eps: an example counts as broken when the smallest perturbation found has norm <= eps.
        steps: iterations per run (100 in AutoAttack).
        n_restarts: runs per target (the first from x itself, later ones from random points).
        targeted: FAB-T (one run per target class, the classes with the highest clean logits
            after the top one) or untargeted FAB (the closest linearised boundary each step).
        n_target_classes: targets for FAB-T (capped at classes - 1).
        alpha_max, eta, beta: the bias towards x_0, the overshoot and the backward step.
        seed: seeds the random restarts.

    Returns the smallest adversarial example found where its norm is <= eps, else ``x``.
    """

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 8 / 255, steps: int = 100,
                 n_restarts: int = 1, targeted: bool = True, n_target_classes: int = 9, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9, seed: int | None = 0):
        super().__init__(model, eps, norm=norm, seed=seed)
        self.steps = check_positive_int(steps, "steps")
        self.n_restarts = check_positive_int(n_restarts, "n_restarts")
        self.n_target_classes = check_positive_int(n_target_classes, "n_target_classes")
        self.targeted = bool(targeted)
        if not (0 <= alpha_max <= 1 and eta >= 1 and 0 < beta <= 1):
            raise ValueError(f"need 0 <= alpha_max <= 1, eta >= 1 and 0 < beta <= 1; got {alpha_max}, {eta}, {beta}")
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)

    def __repr__(self) -> str:
        return (f"FAB(norm={self.norm!r}, eps={self.eps:g}, steps={self.steps}, n_restarts={self.n_restarts}, "
                f"targeted={self.targeted}, n_target_classes={self.n_target_classes})")

    def budget(self) -> dict:
        return {"steps": self.steps, "restarts": self.n_restarts, "targeted": self.targeted,
                **({"target_classes": self.n_target_classes} if self.targeted else {})}

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            logits = self.logits(x)
        ranked = logits.argsort(dim=1, descending=True)
        n_targets = min(self.n_target_classes, logits.shape[1] - 1)
        targets = [ranked[:, rank] for rank in range(1, n_targets + 1)] if self.targeted else [None]
        x_adv, robust = x.clone(), logits.argmax(1) == y
        for target in targets:
            for restart in range(self.n_restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    return x_adv
                x_found, found_norm = self.run(x[idx], y[idx], None if target is None else target[idx],
                                               generator if restart > 0 else None,
                                               None if self.mask is None else self.mask[idx])
                broken = found_norm <= self.eps
                x_adv[idx[broken]] = x_found[broken]
                robust[idx[broken]] = False
        return x_adv

    def boundary(self, x: Tensor, y: Tensor, target: Tensor | None,
                 mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The boundary function f = z_y - z_target at ``x``, its input gradient (zero outside ``mask``) and the
        logits (targeted), or, untargeted, those of the class whose linearised boundary is closest."""
        if target is not None:
            f, g, logits = self.loss_and_grad(x, lambda z: z.gather(1, y[:, None]).squeeze(1)
                                              - z.gather(1, target[:, None]).squeeze(1))
            return f, apply_mask(g, mask), logits
        x = x.detach().requires_grad_(True)
        logits = self.logits(x)
        dual = {"Linf": "L1", "L2": "L2", "L1": "Linf"}[self.norm]  # distance to a hyperplane: |f| / ||g||_dual
        best_f = best_g = best_dist = None
        for j in range(logits.shape[1]):
            f = logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]
            (g,) = torch.autograd.grad(f.sum(), x, retain_graph=j + 1 < logits.shape[1])
            self.backward_passes += x.shape[0]
            g = apply_mask(g, mask)
            g_norm = per_example_norm(g, dual)
            dist = torch.where(y == j, torch.full_like(f, float("inf")), f.detach().abs() / (g_norm + 1e-12))
            if best_dist is None:
                best_f, best_g, best_dist = f.detach(), g, dist
                continue
            closer = dist < best_dist
            best_f = torch.where(closer, f.detach(), best_f)
            best_g = torch.where(closer.reshape(-1, *([1] * (g.dim() - 1))), g, best_g)
            best_dist = torch.where(closer, dist, best_dist)
        return best_f, best_g, logits.detach()

    def run(self, x0: Tensor, y: Tensor, target: Tensor | None, generator: torch.Generator | None,
            mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One FAB run: (smallest adversarial point found, its norm; inf where none was found).

        Each iteration costs a forward pass (does the new iterate fool the model?) and a forward+backward
        (the linearisation at the iterate, after the step back where it fooled), as in the reference.
        Linearising at the new iterate first and again only where it fooled saves the forward pass where
        few iterates fool, but FAB keeps crossing the boundary it follows: measured on trained models it
        spent more passes, not fewer.
        """
        shape, flat0 = x0.shape, x0.flatten(1).double()
        rows = (-1, *([1] * (x0.dim() - 1)))
        x1 = x0
        if generator is not None:  # random restart on the sphere of radius eps / 2
            noise = random_in_ball(x0, 1.0, self.norm, generator, mask)
            noise = noise / (per_example_norm(noise, self.norm) + 1e-12).reshape(rows)
            x1 = (x0 + self.eps / 2 * noise).clamp(0, 1)
        best, best_norm = x0.clone(), torch.full((x0.shape[0],), float("inf"), device=x0.device, dtype=x0.dtype)
        for _ in range(self.steps):
            f, g, _ = self.boundary(x1, y, target, mask)
            with torch.no_grad():
                x1 = self._step(flat0, x1.flatten(1).double(), f.double(), g.flatten(1).double()).to(x0.dtype)
                x1 = x1.reshape(shape)
                fooled = self.logits(x1).argmax(1) != y
                dist = per_example_norm(x1 - x0, self.norm)
                better = fooled & (dist < best_norm)
                best[better], best_norm[better] = x1[better], dist[better]
                x1 = torch.where(fooled.reshape(rows), x0 + self.beta * (x1 - x0), x1)
        return best, best_norm

    def _step(self, flat0: Tensor, flat1: Tensor, f: Tensor, g: Tensor) -> Tensor:
        """The biased projection step from x_k (``flat1``) towards the linearised boundary, in [0, 1]."""
        n = flat1.shape[0]
        # both projections (from x_k and from x_0) in one call
        d = project_onto_hyperplane_in_box(torch.cat([flat1, flat0]), torch.cat([g, g]),
                                           torch.cat([-f, -f - (g * (flat0 - flat1)).sum(1)]), self.norm)
        d1, d0 = d[:n], d[n:]
        n1, n0 = per_example_norm(d1, self.norm), per_example_norm(d0, self.norm)
        a = (n1 / (n1 + n0)).nan_to_num(0.0).clamp(0, self.alpha_max)[:, None]
        return ((1 - a) * (flat1 + self.eta * d1) + a * (flat0 + self.eta * d0)).clamp(0, 1)
