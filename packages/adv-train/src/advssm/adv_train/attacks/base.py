"""The attack base class and the pieces every attack shares: argument checks, eval-mode
handling, seeded randomness, eps-ball projections, per-example norms and losses.

An attack maps a clean batch ``x`` in [0, 1] (any shape ``(batch, ...)``) and integer labels
``y`` of shape ``(batch,)`` to an adversarial batch inside the eps-ball of its norm and inside
[0, 1]. Gradients are taken with respect to the input only, through ``torch.autograd.grad``,
so the model's weights and their ``.grad`` are never touched.
"""
from __future__ import annotations

import contextlib
import contextvars
import numbers
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("Linf", "L2")
# Keeps divisions by a norm or a logit gap finite; the value the AutoAttack paper uses.
TINY = 1e-12


# ---------------------------------------------------------------------------------------
# Losses: per example, shape (batch,); every attack maximises them.
# ---------------------------------------------------------------------------------------
def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def _best_other(logits: Tensor, y: Tensor) -> Tensor:
    """The largest logit among the classes other than ``y``."""
    return logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y``: positive exactly when misclassified."""
    return _best_other(logits, y) - logits.gather(1, y[:, None]).squeeze(1)


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): the margin over ``z_pi1 - z_pi3``,
    invariant to shifting and rescaling the logits. Needs at least 3 classes."""
    _need_classes(logits, 3, "dlr")
    top = logits.topk(3, dim=1).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + TINY)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs at least 4 classes."""
    _need_classes(logits, 4, "dlr-targeted")
    top = logits.topk(4, dim=1).values
    gap = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    return gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + TINY)


def _need_classes(logits: Tensor, n: int, name: str) -> None:
    if logits.shape[1] < n:
        raise ValueError(f"the {name} loss needs at least {n} classes, the model has {logits.shape[1]}; "
                         "use loss='ce' for models with fewer classes")


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": cross_entropy, "margin": margin_loss, "dlr": dlr_loss,
}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The untargeted loss called ``name`` (one of ``LOSSES``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


# ---------------------------------------------------------------------------------------
# Geometry of the threat model.
# ---------------------------------------------------------------------------------------
def per_example_norm(t: Tensor, norm: str) -> Tensor:
    """The ``norm`` ("Linf" or "L2") of each example of ``t``, shape (batch,)."""
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "Linf" else flat.norm(dim=1)


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    """Reshapes a (batch,) tensor to broadcast against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, eps: float | Tensor, norm: str) -> Tensor:
    """Projects ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then onto [0, 1].

    Clipping to the box after the ball cannot leave the ball: ``x`` is in the box, so clipping
    only moves each coordinate of the perturbation towards zero.
    """
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / (per_example_norm(delta, "L2") + TINY)).clamp(max=1.0)
        delta = delta * _per_example(scale, delta)
    return (x + delta).clamp(0.0, 1.0)


def steepest_ascent(grad: Tensor, norm: str) -> Tensor:
    """The unit-norm direction of steepest ascent: ``sign(grad)`` for Linf, ``grad / ||grad||`` for L2."""
    if norm == "Linf":
        return grad.sign()
    return grad / _per_example(per_example_norm(grad, "L2") + TINY, grad)


def random_in_ball(x: Tensor, eps: float, norm: str, generator: torch.Generator) -> Tensor:
    """A perturbation drawn uniformly from the ``norm`` ball of radius ``eps`` (shape of ``x``)."""
    if norm == "Linf":
        return (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _per_example(per_example_norm(direction, "L2") + TINY, x)
    # Radius with density proportional to r^(d-1): uniform in volume.
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    radius = eps * u ** (1.0 / x[0].numel())
    return direction * _per_example(radius, x)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule's own previous mode restored after, also on errors."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_eps(eps: float, name: str = "eps") -> float:
    """Validates a non-negative finite radius (or step size)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(eps).__name__}")
    if not (0 <= float(eps) < float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {eps}")
    return float(eps)


def check_positive_int(value: int, name: str) -> int:
    """Validates a count such as ``steps`` or ``restarts``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


# (device type, enabled, dtype) of the autocast around the outermost attack call: its model forwards run under it
_CALLER_AUTOCAST: contextvars.ContextVar[tuple[str, bool, torch.dtype | None] | None] = contextvars.ContextVar(
    "advssm_attack_caller_autocast", default=None)


def _autocast_state(device: torch.device) -> tuple[str, bool, torch.dtype | None]:
    enabled = torch.is_autocast_enabled(device.type)
    return device.type, enabled, torch.get_autocast_dtype(device.type) if enabled else None


class Attack:
    """Base class: ``attack = SomeAttack(model, eps=...); x_adv = attack(x, y)``.

    Args:
        model: any ``nn.Module`` mapping inputs in [0, 1] to logits of shape (batch, classes).
        eps: radius of the threat model's ball (>= 0).
        norm: "Linf" or "L2".
        seed: seeds the attack's own ``torch.Generator`` (created on the input's device at each
            call, so a call is a pure function of its inputs). ``None`` draws a fresh seed from
            torch's global RNG at each call, so a globally seeded program stays reproducible.

    Subclasses implement ``perturb(x, y, generator)`` and ``budget()``; ``__call__`` wraps
    ``perturb`` with the checks, eval mode, ``torch.enable_grad()`` and the final projection.

    The checks cost one host sync and no model evaluation: the input range and the label range
    are read in one transfer, and the labels are checked against the number of classes on the
    first forward pass the attack makes anyway.

    ``forward_passes`` and ``backward_passes`` count, over the attack's lifetime, the examples
    sent through the model and the input gradients taken (a batch of 16 is 16 passes), including
    those of the attacks it runs (``sub_attacks``); ``passes()`` reads both.
    """

    def __init__(self, model: nn.Module, eps: float, norm: str = "Linf", seed: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
        self.model = model
        self.eps = check_eps(eps)
        self.norm = norm
        self.seed = check_seed(seed)
        self.forward_passes = 0
        self.backward_passes = 0
        self._label_range: tuple[int, int] | None = None  # labels still to check against the classes

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Returns adversarial examples for ``x`` (labels ``y``), detached, same shape and dtype."""
        y = self._check_inputs(x, y)
        x = x.detach()
        generator = self.make_generator(x.device)
        # the caller's autocast (e.g. bf16) is kept for the model's forward (``logits``) alone: the attack's
        # losses, margins, steps and projections run in fp32 (an attack run by another keeps the outer caller's)
        outer = _CALLER_AUTOCAST.get()
        token = _CALLER_AUTOCAST.set(outer if outer is not None else _autocast_state(x.device))
        try:
            with eval_mode(self.model), torch.autocast(device_type=x.device.type, enabled=False):
                with torch.enable_grad():
                    x_adv = self.perturb(x, y, generator)
                if self._label_range is not None and x.shape[0]:  # perturb never queried the model
                    with torch.no_grad():
                        self.logits(x[:1])
        finally:
            _CALLER_AUTOCAST.reset(token)
            self._label_range = None
        return project(x_adv.detach(), x, self.eps, self.norm)

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """The attack itself; runs in eval mode with gradients enabled."""
        raise NotImplementedError

    def budget(self) -> dict:
        """The attack's budget (steps, queries, restarts, ...), for ``describe``."""
        return {}

    def describe(self) -> dict:
        """What this attack is, JSON-ready: name, norm, eps and its budget (steps or queries, restarts, ...)."""
        return {"attack": type(self).__name__, "norm": self.norm, "eps": self.eps, **self.budget()}

    def sub_attacks(self) -> tuple[Attack, ...]:
        """Attacks this one runs (AutoAttack's components); their passes and seeds belong to it."""
        return ()

    def passes(self) -> tuple[int, int]:
        """(forward, backward) passes so far, per example, this attack's and its sub-attacks'."""
        forward, backward = self.forward_passes, self.backward_passes
        for sub in self.sub_attacks():
            f, b = sub.passes()
            forward, backward = forward + f, backward + b
        return forward, backward

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r})"

    # -- shared helpers -------------------------------------------------------------------
    def make_generator(self, device: torch.device) -> torch.Generator:
        """A generator on ``device`` seeded from ``seed`` (or from torch's global RNG)."""
        seed = self.seed if self.seed is not None else int(torch.randint(2**62, (1,)).item())
        return torch.Generator(device=device).manual_seed(seed)

    def logits(self, x: Tensor) -> Tensor:
        """The model's logits, checked for the (batch, classes) shape and counted as forward passes.

        The model runs under the autocast of the attack's caller (if any); the logits come back in fp32 at
        least, so every loss, margin and step of the attack is computed in fp32."""
        device_type, enabled, dtype = _CALLER_AUTOCAST.get() or (x.device.type, False, None)
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled):
            out = self.model(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the model must return logits of shape (batch, classes); got {shape}")
        if out.is_floating_point() and out.dtype != torch.float64:
            out = out.float()
        self.forward_passes += x.shape[0]
        if self._label_range is not None:
            low, high = self._label_range
            self._label_range = None
            n_classes = out.shape[1]
            if low < 0 or high >= n_classes:
                raise ValueError(f"labels must lie in [0, {n_classes}) for a model with {n_classes} classes; "
                                 f"got values in [{low}, {high}]")
        return out

    def loss_and_grad(self, x_adv: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-example loss, its gradient w.r.t. the input only, and the logits at ``x_adv``.

        ``loss_fn`` maps logits to a per-example loss. Examples are independent, so the gradient
        of the summed loss is each example's own gradient.
        """
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self.logits(x_adv)
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        self.backward_passes += x_adv.shape[0]
        return loss.detach(), grad.detach(), logits.detach()

    def _check_inputs(self, x: Tensor, y: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("inputs x must be a floating-point tensor of shape (batch, ...)")
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError("labels y must be an integer tensor of shape (batch,); convert with y.long()")
        if x.dim() < 2:
            raise ValueError(f"inputs x must have shape (batch, ...) with at least 2 dims, got {tuple(x.shape)}")
        if y.dim() != 1:
            raise ValueError(f"labels y must have shape (batch,), got {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y disagree on the batch size: {x.shape[0]} inputs, {y.shape[0]} labels")
        y = y.to(device=x.device, dtype=torch.long)
        if x.shape[0] == 0:
            return y
        # one host sync for both ranges (float64 holds any label and any input value exactly enough)
        x_low, x_high = torch.aminmax(x.detach())
        low, high, y_low, y_high = torch.stack([x_low.double(), x_high.double(), y.min().double(),
                                                y.max().double()]).tolist()
        if not (low >= 0 and high <= 1):  # also catches NaN
            raise ValueError(f"inputs must lie in [0, 1], got values in [{low:g}, {high:g}]; "
                             "move any normalisation inside the model")
        self._label_range = (int(y_low), int(y_high))
        return y


def check_seed(seed: int | None) -> int | None:
    """Validates a seed: an int or None."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    return None if seed is None else int(seed)
