"""Robust evaluation: clean and robust accuracy of a classifier under a set of attacks, the
per-example worst case over them, and the gradient-masking checks of AutoAttack.

    result = evaluate(model, (x_test, y_test), {"pgd10": PGD(model, eps, alpha, steps=10)})
    result.clean_acc, result.robust_acc["pgd10"], result.worst_acc, result.warnings
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .attacks import Attack, AutoAttack, Square, eval_mode

# Square may break this fraction of the examples the white-box attacks missed before we call
# it suspicious (AutoAttack's threshold: 0.2 percentage points).
SQUARE_SLACK = 0.002


@dataclass
class EvalResult:
    """What ``evaluate`` measured.

    Attributes:
        n: examples evaluated.
        clean_acc: fraction classified correctly.
        robust_acc: per attack name, fraction still correct under that attack.
        worst_acc: fraction correct under every attack (the per-example worst case).
        warnings: gradient-masking and other diagnostics, as sentences.
        seconds: wall time of the evaluation.
    """

    n: int
    clean_acc: float
    robust_acc: dict[str, float]
    worst_acc: float
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def _batches(data, batch_size: int) -> Iterable:
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data=(x, y) disagree on the number of examples: {x.shape[0]} vs {y.shape[0]}")
        return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size))
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise TypeError(f"data must be a Dataset, a DataLoader or an (x, y) tuple of tensors, got {type(data).__name__}")


def _limited(batches: Iterable, n_examples: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields (x, y) batches, cut so that at most ``n_examples`` come out."""
    seen = 0
    for batch in batches:
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise TypeError("each batch must be an (inputs, labels) pair")
        x, y = batch[0], batch[1]
        if n_examples is not None:
            x, y = x[: n_examples - seen], y[: n_examples - seen]
        if x.shape[0] == 0:
            return
        seen += x.shape[0]
        yield x, y


def _total(data, n_examples: int | None) -> int | None:
    try:
        size = len(data[0]) if isinstance(data, tuple | list) else len(data.dataset if isinstance(data, DataLoader)
                                                                         else data)
    except TypeError:
        return n_examples
    return size if n_examples is None else min(size, n_examples)


def _normalise_attacks(attacks) -> dict[str, Attack]:
    if isinstance(attacks, Attack):
        attacks = [attacks]
    if isinstance(attacks, dict):
        named = dict(attacks)
    elif isinstance(attacks, list | tuple):
        named = {}
        for attack in attacks:
            name = type(attack).__name__
            while name in named:
                name += "'"
            named[name] = attack
    else:
        raise TypeError(f"attacks must be a dict name -> Attack or a list of Attacks, got {type(attacks).__name__}")
    for name, attack in named.items():
        if not isinstance(attack, Attack):
            raise TypeError(f"attack {name!r} is a {type(attack).__name__}, not an advssm Attack")
    return named


def _print_progress(info: dict) -> None:
    """The ``progress=True`` display: one line per stage and batch, on stderr so stdout stays clean."""
    total = "?" if info["total"] is None else info["total"]
    print(f"evaluate: {info['stage']} {info['done']}/{total}", file=sys.stderr, flush=True)


def masking_warnings(model: nn.Module, x: Tensor, y: Tensor) -> list[str]:
    """AutoAttack's gradient-masking checks on one batch, model in eval mode: non-finite or zero
    input gradients, outputs that change between two identical forward passes, and outputs that
    look like probabilities rather than logits. Returns one sentence per finding."""
    found = []
    with eval_mode(model), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), x)
        with torch.no_grad():
            again = model(x)
    out = out.detach()
    if not torch.isfinite(out).all() or not torch.isfinite(grad).all():
        found.append("non-finite outputs or input gradients: gradient-based attacks are unreliable")
    zero = int((grad.flatten(1).abs().amax(1) == 0).sum())
    if zero:
        found.append(f"{zero} of {x.shape[0]} examples have an all-zero input gradient (gradient masking?): "
                     "gradient-based robust accuracy may be overestimated")
    if not torch.allclose(out, again, rtol=1e-5, atol=1e-6):
        found.append("two forward passes on the same input in eval mode differ (randomised defence or dropout "
                     "left on?): use an expectation over transformations, robust accuracy may be overestimated")
    if out.min() >= 0 and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4):
        found.append("the model's outputs are non-negative and sum to 1 (probabilities, not logits): the attacks' "
                     "losses expect logits; return the logits")
    return found


def evaluate(model: nn.Module, data, attacks, n_examples: int | None = None, batch_size: int = 256,
             device: torch.device | str | None = None, progress: Callable[[dict], None] | bool | None = None,
             check_masking: bool = True) -> EvalResult:
    """Clean and robust accuracy of ``model`` under each attack, and their per-example worst case.

    Args:
        model: classifier mapping [0, 1] inputs to logits (the attacks must wrap this model).
        data: a Dataset, a DataLoader or an (x, y) tuple of tensors.
        attacks: dict name -> Attack, or a list of Attacks (named by class).
        n_examples: evaluate only the first n examples (all if None).
        batch_size: for Datasets and tensors (a DataLoader keeps its own).
        device: where to run; defaults to the device of the model's first parameter (CPU if none).
        progress: called as ``progress({"stage": name, "done": k, "total": n})`` after each stage
            of each batch; True prints one line per stage and batch on stderr; None (or False)
            prints nothing.
        check_masking: run the gradient-masking checks (on the first batch) and the Square check.

    Each attack sees only the examples that are correct on clean inputs; a batch stops early
    once nothing is left to attack.
    """
    start = time.perf_counter()
    named = _normalise_attacks(attacks)
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1):
        raise ValueError(f"n_examples must be a positive int or None, got {n_examples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total = _total(data, n_examples)
    report = _print_progress if progress is True else (progress or (lambda info: None))

    n, clean_total, worst_total = 0, 0, 0
    robust_total = dict.fromkeys(named, 0)
    square_only = 0  # examples only Square broke, among those all white-box attacks missed
    warnings: list[str] = []
    for x, y in _limited(_batches(data, batch_size), n_examples):
        x, y = x.to(device), y.to(device)
        if check_masking and n == 0:
            warnings += masking_warnings(model, x, y)
        with eval_mode(model), torch.no_grad():
            correct = model(x).argmax(1) == y
        report({"stage": "clean", "done": n + x.shape[0], "total": total})
        robust = {}
        for name, attack in named.items():
            robust[name] = correct.clone()
            idx = correct.nonzero().squeeze(1)
            if idx.numel():
                x_adv = attack(x[idx], y[idx])
                with eval_mode(model), torch.no_grad():
                    robust[name][idx] = model(x_adv).argmax(1) == y[idx]
            report({"stage": name, "done": n + x.shape[0], "total": total})
            if isinstance(attack, AutoAttack):
                square_only += sum(broken for key, broken in attack.last_broken.items()
                                   if isinstance(attack.attacks[key], Square))
        white_box = [robust[k] for k, a in named.items() if not isinstance(a, Square | AutoAttack)]
        for k, a in named.items():
            if isinstance(a, Square) and white_box:
                square_only += int((torch.stack(white_box).all(0) & ~robust[k]).sum())
        n += x.shape[0]
        clean_total += int(correct.sum())
        worst_total += int(torch.stack([correct, *robust.values()]).all(0).sum())
        for name in named:
            robust_total[name] += int(robust[name].sum())
    if n == 0:
        raise ValueError("data holds no examples to evaluate")
    if check_masking and square_only > SQUARE_SLACK * n:
        warnings.append(f"Square (black-box) broke {square_only} of {n} examples that the white-box attacks "
                        "missed: a sign of gradient masking; robust accuracy from gradients may be overestimated")
    return EvalResult(n=n, clean_acc=clean_total / n, robust_acc={k: v / n for k, v in robust_total.items()},
                      worst_acc=worst_total / n, warnings=warnings, seconds=time.perf_counter() - start)
