"""Attacks on the internals of selective SSM layers: how far an Linf-bounded input perturbation can push a
layer's step size Delta or its hidden state's energy, against random noise of the same size.

A selective layer (S6, Mamba-2: ``is_selective``) computes its step sizes Delta_t from the input, so the
discretised transition exp(Delta_t A) is itself a function of the input; spectral attacks on selective SSMs
target it. For each selective block i this module runs a PGD in input space (Linf ``eps``, inputs kept in
[0, 1]) that maximises, per example, the relative change of one internal quantity of that block's layer:

* ``"delta"``: ``||Delta_i(x + d) - Delta_i(x)||_2 / ||Delta_i(x)||_2`` over positions and channels;
* ``"state"``: ``||E_i(x + d) - E_i(x)||_2 / ||E_i(x)||_2`` with E_i(x)_t the squared norm of the hidden state
  after step t (``selective_internals(x)["state_energy"]``).

The baseline is random noise at the same eps (a random corner of the Linf ball: every coordinate +-eps, then
clipped to [0, 1], the largest random perturbation of that norm). ``amplification`` = attack's change / random
change says how much worse than noise an adversary makes the layer's internals; it is the number ``advssm
analyze`` reports beside the error propagation (non-selective layers: n/a).

Example:
    >>> from advssm.ssm_layers import ModelConfig, build_model
    >>> model = build_model(ModelConfig(layer="s6", d_model=8, d_state=4, n_layers=1, n_classes=3))
    >>> report = internal_attack_report(model, torch.rand(2, 12, 1), eps=0.05, steps=3, seed=0)
    >>> print(report.to_markdown().splitlines()[-1].split("|")[1:4])   # block 0's last row: its state attack
    [' 0 ', ' S6 ', ' state ']
"""
from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

OBJECTIVES = ("delta", "state")
_KEYS = {"delta": "delta", "state": "state_energy"}


def block_input(model: nn.Module, x: Tensor, block: int) -> Tensor:
    """The tensor block ``block``'s layer reads for the model input ``x`` (differentiable in ``x``)."""
    trace = model.forward_trace(x)
    h = trace["embedding"] if block == 0 else trace[f"blocks.{block - 1}.norm"]
    return model.blocks[block].norm(h) if model.prenorm else h


def internals(model: nn.Module, x: Tensor, block: int) -> dict[str, Tensor]:
    """``selective_internals`` of block ``block``'s layer at the model input ``x`` (the scan wrappers get the
    token grid, as the model passes it)."""
    layer = model.blocks[block].layer
    inner = block_input(model, x, block)
    if "grid" in inspect.signature(layer.selective_internals).parameters:
        grid = model.token_grid(x) if callable(getattr(model, "token_grid", None)) else None
        return layer.selective_internals(inner, grid=grid if grid is not None else (1, model.tokens(x).shape[1]))
    return layer.selective_internals(inner)


def relative_change(reference: Tensor, value: Tensor) -> Tensor:
    """Per example ``||value - reference|| / ||reference||`` over all but the batch dimension, float64."""
    reference, value = reference.flatten(1).double(), value.flatten(1).double()
    return (value - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)


def attack_internal(model: nn.Module, x: Tensor, block: int, objective: str, eps: float, steps: int = 10,
                    alpha: float | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(x_adv, change): the Linf PGD (random start, ``steps`` signed-gradient steps of ``alpha``, default
    2.5 eps / steps) maximising the relative change of ``objective`` in block ``block``; per example the best
    point seen and its relative change (B,). ``x_adv`` stays within ``eps`` of ``x`` and in [0, 1]."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    key = _KEYS[objective]
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x = x.detach()
    with torch.no_grad():
        reference = internals(model, x, block)[key].detach()
    start = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) if generator is not None \
        else torch.rand_like(x)
    x_adv = _project(x + (2 * start - 1) * eps, x, eps)
    best, best_change = x_adv.clone(), torch.full((x.shape[0],), -1.0, dtype=torch.float64, device=x.device)
    for step in range(steps + 1):
        x_adv = x_adv.detach().requires_grad_(True)
        change = relative_change(reference, internals(model, x_adv, block)[key])
        better = change.detach() > best_change
        best[better], best_change[better] = x_adv.detach()[better], change.detach()[better]
        if step == steps:
            break
        (grad,) = torch.autograd.grad(change.sum(), x_adv)
        x_adv = _project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return best, best_change


def random_corner(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """``x + eps * s`` for random signs s, clipped to [0, 1]: random noise at the largest Linf size eps."""
    signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    return (x + eps * signs).clamp(0.0, 1.0)


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


@dataclass
class InternalAttackReport:
    """Per block and objective: the mean relative change the attack reached, the one random noise of the same eps
    caused, and their ratio ``amplification`` (None, shown as n/a, for layers that are not selective)."""

    rows: list[dict]
    eps: float
    steps: int
    n_examples: int
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_markdown(self) -> str:
        """The rows as a Markdown table."""
        lines = [f"Attacks on SSM internals: Linf eps {self.eps:g}, PGD-{self.steps}, {self.n_examples} examples "
                 "(relative change of the layer's step size Delta or state energy; random = a random corner "
                 "of the same eps)", "",
                 "| block | layer | objective | attack change | random change | amplification |",
                 "|---|---|---|---:|---:|---:|"]
        for r in self.rows:
            cells = [str(r["block"]), r["layer"], r["objective"] or "n/a"]
            cells += ["n/a" if r[k] is None else format(r[k], ".3g")
                      for k in ("attack_change", "random_change", "amplification")]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def internal_attack_report(model: nn.Module, x: Tensor, eps: float, steps: int = 10,
                           objectives: tuple[str, ...] = OBJECTIVES, seed: int = 0) -> InternalAttackReport:
    """Attack every selective block's internals (one PGD per block and objective) and compare with random noise.

    Runs in eval mode (restored after); the model's weights are not touched. Seeded: the random starts and the
    random baseline come from one generator seeded with ``seed`` on the input's device.
    """
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
    if not callable(getattr(model, "forward_trace", None)):
        raise TypeError(f"internal_attack_report needs a model with forward_trace (advssm.ssm_layers.build_model), "
                        f"got {type(model).__name__}")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i, block in enumerate(model.blocks):
            layer = block.layer
            name = getattr(layer, "inner", None) or type(layer).__name__
            if not getattr(layer, "is_selective", False):
                rows.append(dict(block=i, layer=name, objective=None, attack_change=None, random_change=None,
                                 amplification=None))
                continue
            for objective in objectives:
                with torch.enable_grad():
                    _, change = attack_internal(model, x, i, objective, eps, steps, generator=generator)
                with torch.no_grad():
                    reference = internals(model, x, i)[_KEYS[objective]]
                    noisy = internals(model, random_corner(x, eps, generator), i)[_KEYS[objective]]
                    random_change = float(relative_change(reference, noisy).mean())
                attack_change = float(change.mean())
                rows.append(dict(block=i, layer=name, objective=objective, attack_change=attack_change,
                                 random_change=random_change,
                                 amplification=attack_change / random_change if random_change > 0 else None))
    finally:
        model.train(was_training)
    return InternalAttackReport(rows=rows, eps=float(eps), steps=int(steps), n_examples=int(x.shape[0]),
                                meta={"layer": getattr(getattr(model, "config", None), "layer", None)})
