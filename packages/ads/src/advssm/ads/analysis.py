"""Error-propagation analysis: how an input perturbation grows or shrinks through a model.

Runs ``model.forward_trace`` on clean and perturbed inputs and, for every recorded point
(embedding, then per block: SSM mix, output transform (AdS), output projection, residual,
norm; then pooling and logits), measures the relative error ``||h(x+d) - h(x)|| / ||h(x)||``,
the hidden-state MSE and the KL divergence of the point's outputs, and the change rate of
each across the component, ``(after - before) / before`` (the paper's component analysis,
arXiv 2406.05532). For linear time-invariant layers it also checks the measured mix error
against the bound their parameters imply; it is the bound of a causal convolution, so it applies to the
causal scan (pixels or patches as tokens) and not to a bidirectional or cross2d scan, whose report says so
(``meta["lti_bound"]``, also printed above the table).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

# Trace keys inside a block, in the order the block computes them.
BLOCK_POINTS = ("mix", "transform", "project", "residual", "norm")


@dataclass
class PropagationReport:
    """The result of ``propagation_analysis``.

    Attributes:
        rows: one dict per recorded point, in forward order, with keys ``name`` (trace key),
            ``block`` (block index or None), ``component``, ``rel_error`` (mean over the batch
            of per-example relative L2 errors), ``change_rate`` (relative change of
            ``rel_error`` from the previous row, i.e. across this component; None for the
            input or when the error before is zero; 0 for an identity transform slot; in a
            pre-norm model the mix step includes the block's input LayerNorm), ``mse`` (mean
            squared difference), ``kl`` (KL(softmax(h(x)) || softmax(h(x+d))) over the feature
            dimension, averaged over examples and positions: at ``logits`` it is the output KL
            ``kl`` below), ``mse_change_rate`` and ``kl_change_rate`` (the same relative change
            as ``change_rate``, for the MSE and the KL), and for the mix step of LTI layers
            ``linf_error`` (largest
            per-channel L-inf error), ``bound`` (largest per-channel bound) and
            ``bound_ratio`` (largest per-channel measured / bound; <= 1 when the bound
            holds), else None.
        kl: mean over the batch of KL(softmax(clean logits) || softmax(perturbed logits)).
        n_examples: batch size.
        perturbation_linf: max |x_adv - x|.
        clean_accuracy, adv_accuracy: accuracies when labels were given, else None.
    """

    rows: list[dict]
    kl: float
    n_examples: int
    perturbation_linf: float
    clean_accuracy: float | None = None
    adv_accuracy: float | None = None
    meta: dict = field(default_factory=dict)

    def block_mse(self) -> list[float]:
        """Hidden-state MSE at the output of each block, in block order."""
        return [r["mse"] for r in self.rows if r["component"] == "norm"]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of everything in the report."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_markdown(self) -> str:
        """The rows as a Markdown table, with the summary numbers above it."""
        lines = [f"KL(clean || adv) = {self.kl:.4g}, {self.n_examples} examples, "
                 f"||x_adv - x||_inf = {self.perturbation_linf:.4g}"]
        if self.clean_accuracy is not None:
            lines[0] += f", accuracy clean {self.clean_accuracy:.2%} / perturbed {self.adv_accuracy:.2%}"
        if self.meta.get("lti_bound"):
            lines.append(f"LTI bound: {self.meta['lti_bound']}")
        lines += ["", "| point | block | component | rel. error | change rate | MSE | MSE change | KL | KL change "
                      "| measured / bound |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            cells = [r["name"], "" if r["block"] is None else str(r["block"]), r["component"],
                     _fmt(r["rel_error"]), _fmt(r["change_rate"], "+.3g"), _fmt(r["mse"]),
                     _fmt(r["mse_change_rate"], "+.3g"), _fmt(r["kl"]), _fmt(r["kl_change_rate"], "+.3g"),
                     _fmt(r["bound_ratio"])]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Write a PNG: relative error across the depth, and change rate per component and block.

        Needs matplotlib (``pip install matplotlib``). Returns the path written.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError(
                "PropagationReport.plot needs matplotlib; install it with pip install matplotlib"
            ) from exc
        path = Path(path)
        fig = Figure(figsize=(12, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        depth, rates = fig.subplots(1, 2, width_ratios=[3, 2])
        names = [r["name"] for r in self.rows]
        depth.plot(range(len(names)), [max(r["rel_error"], 1e-12) for r in self.rows], marker="o",
                   label="relative error ||h(x+d) - h(x)|| / ||h(x)||")
        depth.plot(range(len(names)), [max(r["kl"], 1e-12) for r in self.rows], marker="s",
                   label="KL(softmax h(x) || softmax h(x+d))")
        depth.set_yscale("log")
        depth.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
        depth.set_ylabel("perturbation effect")
        depth.legend(fontsize=7)
        depth.set_title(f"error across depth (KL = {self.kl:.3g})")
        depth.grid(alpha=0.3)
        blocks = sorted({r["block"] for r in self.rows if r["block"] is not None})
        width = 0.8 / max(len(blocks), 1)
        for j, b in enumerate(blocks):
            values = {r["component"]: r["change_rate"] for r in self.rows if r["block"] == b}
            xs = [i + j * width for i in range(len(BLOCK_POINTS))]
            rates.bar(xs, [values.get(c) or 0.0 for c in BLOCK_POINTS], width, label=f"block {b}")
        rates.set_xticks([i + 0.4 - width / 2 for i in range(len(BLOCK_POINTS))], BLOCK_POINTS)
        rates.axhline(0.0, color="black", linewidth=0.8)
        rates.set_ylabel("change rate (after - before) / before")
        rates.set_title("change rate per component")
        rates.legend(fontsize=7)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=120)
        return path


def propagation_analysis(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None = None,
                         y: torch.Tensor | None = None,
                         attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                         ) -> PropagationReport:
    """Measure how the perturbation ``x_adv - x`` propagates through ``model``.

    Args:
        model: a model with ``forward_trace`` (``advssm.ssm_layers.build_model``).
        x: clean inputs, images (B, C, H, W) or sequences (B, L, C), in [0, 1].
        x_adv: perturbed inputs of the same shape; or leave None and pass ``attack``.
        y: labels (B,); needed with ``attack``; when given, accuracies are reported.
        attack: any callable ``attack(x, y) -> x_adv`` (for example a PGD attack).

    Both traces run in eval mode under ``no_grad``; the model's mode is restored afterwards.
    """
    if not callable(getattr(model, "forward_trace", None)):
        raise TypeError(f"propagation_analysis needs a model with forward_trace (advssm.ssm_layers.build_model), "
                        f"got {type(model).__name__}")
    if (x_adv is None) == (attack is None):
        raise ValueError("propagation_analysis: pass exactly one of x_adv (perturbed inputs) or attack "
                         "(a callable attack(x, y) -> x_adv)")
    if y is not None and (y.dim() != 1 or y.shape[0] != x.shape[0]):
        raise ValueError(f"propagation_analysis: y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if attack is not None:
        if y is None:
            raise ValueError("propagation_analysis: an attack needs the labels y")
        x_adv = attack(x, y)
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise ValueError(f"propagation_analysis: x_adv must have the shape of x {tuple(x.shape)}, got {got}")

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean, adv = model.forward_trace(x), model.forward_trace(x_adv.detach())
            bounds = {i: _lti_bound(model, i, clean, adv) for i in range(len(model.blocks))}
    finally:
        model.train(was_training)

    rows, previous = [], None
    for name in clean:
        block, component = _locate(name)
        measured = dict(rel_error=_relative_error(clean[name], adv[name]),
                        mse=float((adv[name].double() - clean[name].double()).pow(2).mean()),
                        kl=_feature_kl(clean[name], adv[name]))
        rates = {key: None if previous is None else _change_rate(previous[key], value)
                 for key, value in measured.items()}
        row = dict(name=name, block=block, component=component, rel_error=measured["rel_error"],
                   change_rate=rates["rel_error"], mse=measured["mse"], mse_change_rate=rates["mse"],
                   kl=measured["kl"], kl_change_rate=rates["kl"], linf_error=None, bound=None, bound_ratio=None)
        if component == "mix" and bounds.get(block) is not None:
            row.update(bounds[block])
        rows.append(row)
        previous = measured

    kl = _feature_kl(clean["logits"], adv["logits"])
    accuracies = [None, None] if y is None else [float((t["logits"].argmax(-1) == y).double().mean())
                                                 for t in (clean, adv)]
    meta = {"layer": getattr(getattr(model, "config", None), "layer", None),
            "transform": getattr(getattr(model, "config", None), "transform", None)}
    note = lti_bound_note(model)
    if note is not None:  # LTI layers whose bound is not checked: say why
        meta["lti_bound"] = note
    return PropagationReport(rows=rows, kl=kl, n_examples=x.shape[0],
                             perturbation_linf=float((x_adv - x).abs().max()),
                             clean_accuracy=accuracies[0], adv_accuracy=accuracies[1], meta=meta)


def lti_bound_note(model: nn.Module) -> str | None:
    """Why the LTI bound is not checked although the layers are LTI (a non-causal scan), else None.

    Example:
        >>> from advssm.ssm_layers import ModelConfig, build_model
        >>> lti_bound_note(build_model(ModelConfig(d_model=8, d_state=4, scan="bidirectional")))[:14]
        'not applicable'
    """
    layers = [block.layer for block in model.blocks]
    wrapped = [layer for layer in layers if not getattr(layer, "is_causal", True)
               and getattr(getattr(layer, "directions", [None])[0], "is_lti", False)]
    if not wrapped:
        return None
    scan = getattr(wrapped[0], "scan", type(wrapped[0]).__name__)
    return (f"not applicable: the layers are LTI but the {scan} scan is not causal (each token's output sums "
            "directions that read it in different orders), so the causal-convolution bound does not hold for the "
            "mix step; use scan 'causal' for the bound")


def _locate(name: str) -> tuple[int | None, str]:
    """Trace key -> (block index or None, component name)."""
    parts = name.split(".")
    if parts[0] == "blocks":
        return int(parts[1]), parts[2]
    return None, name


def _change_rate(before: float, after: float) -> float | None:
    """(after - before) / before; None when there was nothing before to change."""
    return None if before == 0.0 else (after - before) / before


def _feature_kl(clean: torch.Tensor, adv: torch.Tensor) -> float:
    """Mean over examples (and positions) of KL(softmax(clean) || softmax(adv)) along the last dimension."""
    log_p, log_q = (torch.log_softmax(t.double(), dim=-1) for t in (clean, adv))
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def _relative_error(clean: torch.Tensor, adv: torch.Tensor) -> float:
    """Mean over the batch of ||adv_b - clean_b|| / ||clean_b|| (per-example L2 norms)."""
    clean, adv = clean.double().flatten(1), adv.double().flatten(1)
    norms = clean.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return float(((adv - clean).norm(dim=1) / norms).mean())


def _mix_input(model: nn.Module, block_index: int, trace: dict) -> torch.Tensor:
    """The tensor the block's layer mixes: the block input, or its LayerNorm in a pre-norm model."""
    h = trace["embedding"] if block_index == 0 else trace[f"blocks.{block_index - 1}.norm"]
    return model.blocks[block_index].norm(h) if model.prenorm else h


def _lti_bound(model: nn.Module, block_index: int, clean: dict, adv: dict) -> dict | None:
    """Check |d mix_h|_inf <= sum_i (||K_hi||_1 + |D_hi|) |d u_i|_inf for an LTI layer's mix step.

    A causal convolution y_t = sum_l K_l u_{t-l} + D u_t gives, per output channel h and
    example, max_t |dy_t,h| <= sum_i (sum_l |K_h,i,l| + |D_h,i|) max_t |du_t,i| (for per-channel
    kernels only i = h contributes). Returns None for layers that are not LTI.
    """
    layer = model.blocks[block_index].layer
    if not getattr(layer, "is_lti", False):
        return None
    du = _mix_input(model, block_index, adv).double() - _mix_input(model, block_index, clean).double()
    dy = adv[f"blocks.{block_index}.mix"].double() - clean[f"blocks.{block_index}.mix"].double()
    K, D = layer.conv_kernel(du.shape[1])
    gain = kernel_gain(K.detach().double(), None if D is None else D.detach().double())
    du_inf, dy_inf = du.abs().amax(dim=1), dy.abs().amax(dim=1)   # (B, H_in), (B, H_out)
    bound = du_inf @ gain.T                                       # (B, H_out)
    ratio = torch.where(bound > 0, dy_inf / bound.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.where(dy_inf > 0, torch.inf, 0.0))
    return dict(linf_error=float(dy_inf.max()), bound=float(bound.max()), bound_ratio=float(ratio.max()))


def kernel_gain(K: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """The L-inf gain matrix of a causal convolution with feedthrough: sum_l |K| + |D|, (H_out, H_in).

    Accepts what ``conv_kernel`` returns: a per-channel (H, L) kernel (the gain is then
    diagonal) or a MIMO (H_out, H_in, L) one, and D of shape (H,), (H_out, H_in) or None.
    Row h bounds output channel h: max_t |dy_h| <= sum_i gain[h, i] * max_t |du_i|.
    """
    if K.dim() == 2:
        gain = K.abs().sum(-1) + (0.0 if D is None else D.abs().reshape(-1))
        return torch.diag(gain)
    if K.dim() == 3:
        gain = K.abs().sum(-1)
        if D is not None:  # D may be a full (H_out, H_in) feedthrough or a per-channel (H,) one
            gain = gain + (torch.diag(D.abs()) if D.dim() == 1 else D.abs())
        return gain
    raise ValueError(f"conv_kernel returned a kernel of shape {tuple(K.shape)}; expected (H, L) or (H_out, H_in, L)")


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "" if value is None else format(value, spec)
