"""The attack base class and the pieces every attack shares: argument checks, eval-mode
handling, seeded randomness, eps-ball projections, per-example norms and losses.

An attack maps a clean batch ``x`` in [0, 1] (any shape ``(batch, ...)``) and integer labels
``y`` of shape ``(batch,)`` to an adversarial batch inside the eps-ball of its norm and inside
[0, 1]. An optional mask (``attack(x, y, mask=m)``, 0/1 or bool, broadcastable to ``x``) restricts the
threat model to some coordinates: the perturbation is exactly zero where ``m == 0`` and the norm bound
holds over the others. The geometry below (projection, steepest ascent, random start) takes the mask,
so every attack searches only the masked coordinates. Gradients are taken with respect to the input
only, through ``torch.autograd.grad``, so the model's weights and their ``.grad`` are never touched.
"""
from __future__ import annotations

import contextlib
import contextvars
import numbers
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("Linf", "L2", "L1")
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
    """The ``norm`` ("Linf", "L2" or "L1") of each example of ``t``, shape (batch,)."""
    flat = t.flatten(1)
    if norm == "Linf":
        return flat.abs().amax(dim=1)
    return flat.norm(dim=1) if norm == "L2" else flat.abs().sum(dim=1)


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    """Reshapes a (batch,) tensor to broadcast against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def apply_mask(t: Tensor, mask: Tensor | None) -> Tensor:
    """``t`` with the coordinates outside ``mask`` (a bool tensor shaped like ``t``) set to exactly 0."""
    return t if mask is None else torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device))


def check_mask(mask, x: Tensor) -> Tensor | None:
    """Validates a threat-model mask for inputs ``x`` and returns it as a bool tensor of ``x``'s shape.

    ``mask`` must be a tensor broadcastable to ``x`` holding only 0 and 1 (bool, integer or float); None
    means every coordinate may change.

        m = check_mask(torch.tensor([1, 1, 0, 0])[None, :, None], torch.rand(8, 4, 3))   # the first 2 positions
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor of 0/1 (or bool) broadcastable to x, got {type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the inputs' shape "
                         f"{tuple(x.shape)}; give it the inputs' shape or size-1 dims where it is shared "
                         "(e.g. (1, L, 1) for positions of a (B, L, C) batch)")
    mask = mask.to(x.device)
    if mask.dtype != torch.bool:
        if mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("mask must hold only 0 and 1 (or be a bool tensor); got other values")
        mask = mask != 0
    return mask.expand(x.shape)


def project_l1_box(delta: Tensor, x: Tensor, eps: float | Tensor) -> Tensor:
    """The Euclidean projection of ``delta`` onto {d : ||d||_1 <= eps, 0 <= x + d <= 1}, per example.

    The minimiser is ``sign(delta_i) * clip(|delta_i| - lam, 0, room_i)`` with ``room_i`` the distance from
    ``x_i`` to the box along ``sign(delta_i)`` and ``lam >= 0`` the smallest value whose L1 norm is at most eps
    (0 when clipping ``delta`` to the box already is). That norm, f(lam), is piecewise linear and
    non-increasing, with breakpoints at ``|delta_i| - room_i`` (coordinate i leaves the box) and ``|delta_i|``
    (it reaches 0): sorting them gives f at every breakpoint by a prefix sum, and lam by linear interpolation
    on the segment where f crosses eps. Computed in float64; a last rescaling absorbs rounding so the result
    never exceeds eps.
    """
    shape, dtype = delta.shape, delta.dtype
    d = delta.flatten(1).double()
    room = torch.where(d > 0, 1 - x.flatten(1).double(), x.flatten(1).double()).clamp(min=0)
    size = d.abs()
    eps_ = torch.as_tensor(eps, dtype=torch.float64, device=d.device).reshape(-1, 1).expand(d.shape[0], 1)
    points, order = torch.cat([size - room, size], 1).sort(dim=1)
    events = torch.cat([-torch.ones_like(size), torch.ones_like(size)], 1).gather(1, order)
    slope = events.cumsum(1)  # f's slope right of each breakpoint (minus the coordinates strictly inside)
    f = room.sum(1, keepdim=True) + torch.cat([torch.zeros_like(eps_), (slope[:, :-1] * points.diff(dim=1)).cumsum(1)],
                                              1)
    k = (f > eps_).sum(1, keepdim=True).clamp(1, points.shape[1] - 1)  # f crosses eps between b_{k-1} and b_k
    lam = points.gather(1, k - 1) + (f.gather(1, k - 1) - eps_) / (-slope.gather(1, k - 1)).clamp(min=TINY)
    within = torch.minimum(size, room).sum(1, keepdim=True) <= eps_  # lam = 0: the box alone keeps the ball
    lam = torch.where(within, torch.zeros_like(lam), lam.clamp(min=0))
    out = d.sign() * torch.minimum((size - lam).clamp(min=0), room)
    norm = out.abs().sum(1, keepdim=True)
    out = out * (eps_ / norm).clamp(max=1).nan_to_num(1.0)
    return out.to(dtype).reshape(shape)


def project(x_adv: Tensor, x: Tensor, eps: float | Tensor, norm: str, mask: Tensor | None = None) -> Tensor:
    """Projects ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then onto [0, 1];
    with ``mask`` (bool, ``x``'s shape) the perturbation outside the mask is set to exactly 0 first.

    Clipping to the box after the ball cannot leave the ball: ``x`` is in the box, so clipping
    only moves each coordinate of the perturbation towards zero. For L1 the projection is onto the
    intersection of the ball and the box (``project_l1_box``), as in the AutoAttack paper's L1 threat model.
    """
    delta = apply_mask(x_adv - x, mask)
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "L2":
        scale = (eps / (per_example_norm(delta, "L2") + TINY)).clamp(max=1.0)
        delta = delta * _per_example(scale, delta)
    else:
        delta = project_l1_box(delta, x, eps)
    return (x + delta).clamp(0.0, 1.0)


def steepest_ascent(grad: Tensor, norm: str, mask: Tensor | None = None, x_adv: Tensor | None = None) -> Tensor:
    """The unit-norm direction of steepest ascent within ``mask``: ``sign(grad)`` for Linf, ``grad / ||grad||``
    for L2, and for L1 a signed unit vector on the coordinate of largest ``|grad|``; given the current point
    ``x_adv``, L1 skips the coordinates that the box stops from moving along the gradient."""
    grad = apply_mask(grad, mask)
    if norm == "Linf":
        return grad.sign()
    if norm == "L2":
        return grad / _per_example(per_example_norm(grad, "L2") + TINY, grad)
    score = grad.abs()
    if x_adv is not None:
        blocked = ((grad > 0) & (x_adv >= 1)) | ((grad < 0) & (x_adv <= 0))
        score = score.masked_fill(blocked, 0.0)
    flat = score.flatten(1)
    one_hot = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0).reshape(grad.shape)
    return one_hot * grad.sign()


def random_in_ball(x: Tensor, eps: float, norm: str, generator: torch.Generator,
                   mask: Tensor | None = None) -> Tensor:
    """A perturbation drawn uniformly from the ``norm`` ball of radius ``eps`` (shape of ``x``), over the
    coordinates of ``mask`` (zero elsewhere; the ball's dimension is the number of masked coordinates)."""
    kwargs = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if norm == "Linf":
        return apply_mask((2 * torch.rand(x.shape, **kwargs) - 1) * eps, mask)
    if norm == "L2":
        direction = apply_mask(torch.randn(x.shape, **kwargs), mask)
    else:  # Laplace coordinates normalised by their L1 norm: uniform on the L1 sphere
        direction = apply_mask(-torch.rand(x.shape, **kwargs).clamp(min=TINY).log()
                               * (2 * (torch.rand(x.shape, **kwargs) < 0.5).to(x.dtype) - 1), mask)
    direction = direction / _per_example(per_example_norm(direction, norm) + TINY, x)
    # Radius with density proportional to r^(d-1): uniform in volume (d: the coordinates that may move).
    dims = x[0].numel() if mask is None else mask.flatten(1).sum(1).clamp(min=1).to(x.dtype)
    u = torch.rand(x.shape[0], **kwargs)
    radius = eps * u ** (1.0 / dims)
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
        norm: "Linf", "L2" or "L1" (the L1 ball intersected with the [0, 1] box).
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
        #: the current call's mask (bool, the inputs' shape) while ``perturb`` runs, else None
        self.mask: Tensor | None = None
        #: a default mask for every call: any object with ``mask(x)`` and ``name`` (see
        #: ``advssm.adv_train.threat_models``); None perturbs every coordinate
        self.threat_model = None

    def __call__(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Returns adversarial examples for ``x`` (labels ``y``), detached, same shape and dtype.

        ``mask`` (0/1 or bool, broadcastable to ``x``; default: the attack's ``threat_model``'s mask for ``x``,
        else none) restricts the perturbation to its coordinates: where it is 0, the result equals ``x``
        bitwise, and the norm bound holds over the rest.

            x_adv = PGD(model, eps=0.1, alpha=0.025)(x, y, mask=window(start=10, length=4).mask(x))
        """
        y = self._check_inputs(x, y)
        x = x.detach()
        if mask is None and self.threat_model is not None:
            mask = self.threat_model.mask(x)
        self.mask = check_mask(mask, x)
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
            # the final projection zeroes the perturbation outside the mask whatever perturb did
            return project(x_adv.detach(), x, self.eps, self.norm, self.mask)
        finally:
            _CALLER_AUTOCAST.reset(token)
            self._label_range = None
            self.mask = None

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """The attack itself; runs in eval mode with gradients enabled. ``self.mask`` holds the call's mask
        (bool, ``x``'s shape) or None; attacks pass it (indexed like ``x``) to the shared geometry."""
        raise NotImplementedError

    def budget(self) -> dict:
        """The attack's budget (steps, queries, restarts, ...), for ``describe``."""
        return {}

    def describe(self) -> dict:
        """What this attack is, JSON-ready: name, norm, eps and its budget (steps or queries, restarts, ...)."""
        described = {"attack": type(self).__name__, "norm": self.norm, "eps": self.eps, **self.budget()}
        if self.threat_model is not None:
            described["threat_model"] = self.threat_model.name
        return described

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
