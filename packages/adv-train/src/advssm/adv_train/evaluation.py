"""Robust evaluation: clean and robust accuracy of a classifier under a set of attacks, the
per-example worst case over them, per-example records, and the gradient-masking checks of AutoAttack.

    result = evaluate(model, (x_test, y_test), {"pgd10": PGD(model, eps, alpha, steps=10)}, seed=0)
    result.clean_acc, result.robust_acc["pgd10"], result.worst_acc, result.warnings

One rule for "robust": an example is robust under attack A iff the model classifies it correctly
clean AND classifies A(x) correctly; ``worst_acc`` counts the examples robust under every attack.
Clean, each attack and the worst case are computed on the same examples. Under torchrun each
rank evaluates every world_size-th batch and the per-example results are gathered, so every rank
returns the result of the whole data set.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from . import distributed as D
from .atomic import atomic_write
from .attacks import Attack, AutoAttack, Square, eval_mode, margin_loss, per_example_norm

# Square may break this fraction of the examples the white-box attacks missed before we call
# it suspicious (AutoAttack's threshold: 0.2 percentage points).
SQUARE_SLACK = 0.002
TOTAL = "total"  # the key of the summed pass counts


@dataclass
class EvalResult:
    """What ``evaluate`` measured.

    Attributes:
        n: examples evaluated.
        clean_acc: fraction classified correctly.
        robust_acc: per attack name, fraction clean-correct and still correct under that attack.
        worst_acc: fraction clean-correct and correct under every attack (the per-example worst case).
        warnings: gradient-masking and other diagnostics, as sentences.
        seconds: wall time of the evaluation (of this process; a resumed run counts only its own part).
        forward_passes: per attack name, examples sent through the model (a batch of 16 is 16 passes),
            and under "total" the sum with evaluate's own clean and checking passes.
        backward_passes: per attack name, input gradients taken, and their "total".
        attacks: per attack name, ``Attack.describe()``: name, norm, eps, steps or queries, restarts, version.
    """

    n: int
    clean_acc: float
    robust_acc: dict[str, float]
    worst_acc: float
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    forward_passes: dict[str, int] = field(default_factory=dict)
    backward_passes: dict[str, int] = field(default_factory=dict)
    attacks: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the fields."""
        return asdict(self)

    def to_robustbench(self, **model_info: Any) -> dict:
        """This result in RobustBench's model-info shape (accuracies in percent, as strings with 2 decimals).

        ``autoattack_acc`` is the worst case over the attacks evaluated (AutoAttack's accuracy when it ran
        alone); ``autoattack_version`` says which AutoAttack it was (None: no AutoAttack among the attacks).
        ``number_forward_passes`` is RobustBench's: the model's forward passes per prediction (1 unless
        ``model_info`` says otherwise); the attacks' own counts are ``attack_forward_passes`` and
        ``attack_backward_passes`` (per example evaluated). Any ``model_info`` key (``architecture``,
        ``dataset``, ``name``, ...) is added or overrides. ``threat_model`` is the norm, followed by the mask's
        name where the attacks have one (``"Linf:window(start=100,length=64)"``).

            record = evaluate(model, test, {"aa": AutoAttack(model, eps=0.3)}).to_robustbench(architecture="S4D")
        """
        norms = {a["norm"] for a in self.attacks.values()}
        radii = {a["eps"] for a in self.attacks.values()}
        masks = {a.get("threat_model") for a in self.attacks.values()}
        if len(norms) != 1 or len(radii) != 1 or len(masks) != 1:
            raise ValueError(f"a RobustBench record has one threat model and one eps; these attacks use norms "
                             f"{sorted(norms)}, eps {sorted(radii)} and masks {sorted(map(str, masks))}")
        mask = masks.pop()
        versions = [a["version"] for a in self.attacks.values() if a["attack"] == "AutoAttack"]
        record = {
            "link": None, "name": None, "authors": None, "additional_data": None, "number_forward_passes": 1,
            "dataset": None, "venue": None, "architecture": None, "eps": radii.pop(),
            # a masked threat model (advssm.adv_train.threat_models) is named after the norm: "Linf:prefix(k=16)"
            "threat_model": norms.pop() + (f":{mask}" if mask else ""),
            "n_examples": self.n, "clean_acc": f"{100 * self.clean_acc:.2f}", "reported": None,
            "autoattack_acc": f"{100 * self.worst_acc:.2f}",
            "autoattack_version": versions[0] if len(versions) == 1 else None,
            "attacks": self.attacks,
            "attack_forward_passes": self.forward_passes.get(TOTAL, 0) / self.n,
            "attack_backward_passes": self.backward_passes.get(TOTAL, 0) / self.n,
        }
        return record | model_info


# ---------------------------------------------------------------------------------------
# Data and arguments.
# ---------------------------------------------------------------------------------------
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
        if name == TOTAL:
            raise ValueError(f"{TOTAL!r} names the summed pass counts; give the attack another name")
    return named


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The model's own device; an explicit ``device`` must agree with it (the attacks run the model where it is)."""
    own = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
    if device is None:
        return own or torch.device("cpu")
    device = torch.device(device)
    if own is not None and (own.type != device.type or (device.index is not None and device.index != own.index)):
        raise ValueError(f"device={str(device)!r} but the model is on {own}: the attacks run the model where it is; "
                         f"move it first with model.to({str(device)!r}), or leave device=None")
    return own or device


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed determined by ``seed`` and ``keys`` alone (batch index, attack position, ...)."""
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _attack_tree(attack: Attack) -> list[Attack]:
    return [attack, *(a for sub in attack.sub_attacks() for a in _attack_tree(sub))]


def _reseed(attack: Attack, seed: int) -> None:
    """Seeds ``attack`` and, from the same seed, each of its sub-attacks."""
    attack.seed = seed
    for position, sub in enumerate(attack.sub_attacks()):
        _reseed(sub, derive_seed(seed, position))


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
                     "left on?): evaluate with AutoAttack(version='rand') (APGD-CE and APGD-DLR with an "
                     "expectation over 20 transformations per step); robust accuracy may be overestimated")
    if out.min() >= 0 and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4):
        found.append("the model's outputs are non-negative and sum to 1 (probabilities, not logits): the attacks' "
                     "losses expect logits; return the logits")
    return found


# ---------------------------------------------------------------------------------------
# One batch.
# ---------------------------------------------------------------------------------------
def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _evaluate_batch(model: nn.Module, named: dict[str, Attack], x: Tensor, y: Tensor, first_index: int,
                    batch: int, masking: bool, report: Callable[[str], None]) -> list[dict]:
    """Every example's record for one batch; the last record carries the batch's totals under "batch_done"."""
    warnings = masking_warnings(model, x, y) if masking else []
    forward = dict.fromkeys([*named, TOTAL], 0)
    backward = dict.fromkeys([*named, TOTAL], 0)
    with eval_mode(model), torch.no_grad():
        logits = model(x)
    forward[TOTAL] += x.shape[0]
    correct = logits.argmax(1) == y
    worst_margin = -margin_loss(logits, y)  # z_y - max_{j != y} z_j
    worst_pred = logits.argmax(1)
    report("clean")
    robust, broken_by_attack, broken_norm = {}, {}, {}
    idx = correct.nonzero().squeeze(1)
    for name, attack in named.items():
        robust[name] = correct.clone()
        broken_by_attack[name] = [None] * x.shape[0]
        broken_norm[name] = torch.full((x.shape[0],), float("nan"), dtype=torch.float64, device=x.device)
        if idx.numel():
            before = attack.passes()
            x_adv = attack(x[idx], y[idx])
            after = attack.passes()
            forward[name], backward[name] = after[0] - before[0], after[1] - before[1]
            with eval_mode(model), torch.no_grad():
                adv_logits = model(x_adv)
            forward[TOTAL] += idx.numel()
            still = adv_logits.argmax(1) == y[idx]
            robust[name][idx] = still
            margin = -margin_loss(adv_logits, y[idx])
            lower = margin < worst_margin[idx]
            worst_margin[idx[lower]] = margin[lower]
            worst_pred[idx[lower]] = adv_logits.argmax(1)[lower]
            broken_norm[name][idx] = per_example_norm(x_adv - x[idx], attack.norm).double()
            components = list(attack.attacks) if isinstance(attack, AutoAttack) else None
            by = attack.last_broken_by.tolist() if components and attack.last_broken_by is not None else None
            for k, (i, kept) in enumerate(zip(idx.tolist(), still.tolist())):
                if not kept:
                    broken_by_attack[name][i] = components[by[k]] if by and by[k] >= 0 else name
        report(name)
    for name in named:
        forward[TOTAL] += forward[name]
        backward[TOTAL] += backward[name]
    # examples only Square broke, among those every white-box attack missed
    square_only = 0
    for attack in named.values():
        if isinstance(attack, AutoAttack):
            square_only += sum(broken for key, broken in attack.last_broken.items()
                               if isinstance(attack.attacks[key], Square)) if idx.numel() else 0
    white_box = [robust[k] for k, a in named.items() if not isinstance(a, Square | AutoAttack)]
    for k, a in named.items():
        if isinstance(a, Square) and white_box:
            square_only += int((torch.stack(white_box).all(0) & ~robust[k]).sum())

    robust_rows = {name: r.tolist() for name, r in robust.items()}
    norms = {name: n.tolist() for name, n in broken_norm.items()}
    records = []
    for i, (label, ok, margin, pred) in enumerate(zip(y.tolist(), correct.tolist(), worst_margin.tolist(),
                                                      worst_pred.tolist())):
        first = next((name for name in named if not robust_rows[name][i] and ok), None)
        records.append({
            "index": first_index + i, "label": label, "clean_correct": ok,
            "broken_by": broken_by_attack[first][i] if first else None,
            "perturbation_norm": _finite(norms[first][i]) if first else None,
            "margin": _finite(margin), "pred": pred, "robust": {name: robust_rows[name][i] for name in named},
            "batch": batch,
        })
    records[-1]["batch_done"] = {"forward_passes": forward, "backward_passes": backward,
                                 "square_only": square_only, "warnings": warnings}
    return records


# ---------------------------------------------------------------------------------------
# The records file.
# ---------------------------------------------------------------------------------------
def _read_finished(path: Path, names: list[str]) -> list[list[dict]]:
    """The finished batches of a records file, in order (a batch is finished once its last record is written)."""
    batches, current = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut off by an interrupted write: that batch is not finished
        if not isinstance(record, dict) or record.get("batch") != len(batches) or "robust" not in record:
            raise ValueError(f"{path} is not a records file of evaluate() (line {record!r:.80}); delete it or "
                             "pass another records path")
        if sorted(record["robust"]) != sorted(names):
            raise ValueError(f"{path} records the attacks {sorted(record['robust'])}, this evaluation runs "
                             f"{sorted(names)}: resume with the same attacks, or delete the file to start over")
        current.append(record)
        if "batch_done" in record:
            batches.append(current)
            current = []
    return batches


def _write_lines(path: Path, records: list[dict], mode: str) -> None:
    with open(path, mode) as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _rewrite(path: Path, batches: list[list[dict]]) -> None:
    """The file holding exactly ``batches`` (drops a cut-off batch), replaced atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for b in batches for r in b).encode(),
                 when_full="evaluate again with the same records file (its finished batches are intact)")


def _dist_info() -> D.DistInfo:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return D.DistInfo(dist.get_rank(), dist.get_world_size())
    return D.DistInfo()


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------
def evaluate(model: nn.Module, data, attacks, n_examples: int | None = None, batch_size: int = 256,
             device: torch.device | str | None = None, progress: Callable[[dict], None] | bool | None = None,
             check_masking: bool = True, *, seed: int | None = None, records: str | os.PathLike | None = None,
             resume: bool = False) -> EvalResult:
    """Clean and robust accuracy of ``model`` under each attack, and their per-example worst case.

    Args:
        model: classifier mapping [0, 1] inputs to logits (the attacks must wrap this model).
        data: a Dataset, a DataLoader or an (x, y) tuple of tensors.
        attacks: dict name -> Attack, or a list of Attacks (named by class).
        n_examples: evaluate only the first n examples (all if None).
        batch_size: for Datasets and tensors (a DataLoader keeps its own).
        device: None runs on the model's own device (its first parameter or buffer; CPU if it has none);
            a device that differs from the model's is refused, never silently moved to.
        progress: called as ``progress({"stage": name, "done": k, "total": n})`` after each stage
            of each batch; True prints one line per stage and batch on stderr; None (or False)
            prints nothing.
        check_masking: run the gradient-masking checks (on the first batch) and the Square check.
        seed: re-seeds every attack (and AutoAttack's components) for each batch from
            ``(seed, global batch index, attack position)``, so the result depends on nothing that
            ran before; None keeps the attacks' own seeds.
        records: path of a JSONL file with one object per example, in data order, appended and
            flushed after each finished batch: ``index``, ``label``, ``clean_correct``, ``broken_by``
            (the first attack, in the order of ``attacks``, that broke it; AutoAttack's component name
            when AutoAttack broke it; null if none did or it was misclassified clean),
            ``perturbation_norm`` (of that attack's adversarial example, in its norm; null if not
            broken), ``margin`` (z_y - max_{j != y} z_j on the lowest-margin point found, clean or
            adversarial), ``pred`` (the class at that point), ``robust`` (per attack) and ``batch``;
            the last record of a batch also holds the batch's pass counts and warnings (``batch_done``).
            An existing non-empty file is refused unless ``resume=True``.
        resume: continue the evaluation recorded in ``records``: finished batches are read back, not
            recomputed, and a batch cut off by an interruption is run again. With ``seed`` (or attacks
            with fixed seeds) the result equals an uninterrupted run's.

    Each attack sees only the examples that are correct on clean inputs; a batch stops early once
    nothing is left to attack. Under torchrun (``torch.distributed`` initialised, world size > 1),
    rank r evaluates batches r, r + world_size, ...; the records are gathered after each round, rank
    0 alone writes the file, and every rank returns the same result.

        result = evaluate(model, (x, y), {"aa": AutoAttack(model, eps=0.3)}, seed=0, records="aa.jsonl")
    """
    start = time.perf_counter()
    named = _normalise_attacks(attacks)
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1):
        raise ValueError(f"n_examples must be a positive int or None, got {n_examples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if resume and records is None:
        raise ValueError("resume=True needs the records file of the evaluation to resume (records=PATH)")
    device = _model_device(model, device)
    info = _dist_info()
    total = _total(data, n_examples)
    report = _print_progress if progress is True else (progress or (lambda info: None))

    path = None if records is None else Path(records)
    finished: list[list[dict]] = []
    refused: Exception | None = None
    if path is not None and info.is_main:
        try:
            if path.is_file() and path.stat().st_size and not resume:
                raise FileExistsError(f"{path} already holds records of an evaluation; pass resume=True to continue "
                                      "it, or delete it to start over")
            if resume and path.is_file():
                finished = _read_finished(path, list(named))
            path.parent.mkdir(parents=True, exist_ok=True)
            _rewrite(path, finished)
        except (OSError, ValueError) as error:  # every rank raises it, rather than waiting for rank 0
            refused = error
    finished, refused = D.gather_objects((finished, refused), info)[0]  # rank 0's reading, on every rank
    if refused is not None:
        raise refused

    saved_seeds = [(a, a.seed) for attack in named.values() for a in _attack_tree(attack)]
    done: list[list[dict]] = list(finished)
    try:
        mine: list[list[dict]] = []
        seen, n_batches = 0, 0
        for b, (x, y) in enumerate(_limited(_batches(data, batch_size), n_examples)):
            n_batches = b + 1
            first, seen = seen, seen + x.shape[0]
            if b < len(finished):
                labels = [r["label"] for r in finished[b]]
                if labels != y.tolist():
                    raise ValueError(f"{path} does not match the data: batch {b} recorded labels "
                                     f"{labels[:8]}..., the data has {y.tolist()[:8]}...; resume with the same data, "
                                     "n_examples and batch size, or delete the file to start over")
                continue
            j = b - len(finished)
            if j % info.world_size == info.rank:
                if seed is not None:
                    for position, attack in enumerate(named.values()):
                        _reseed(attack, derive_seed(seed, b, position))
                x, y = x.to(device), y.to(device)
                def stage_report(stage: str, k: int = seen) -> None:
                    report({"stage": stage, "done": k, "total": total})

                mine.append(_evaluate_batch(model, named, x, y, first, b, check_masking and b == 0, stage_report))
            if (j + 1) % info.world_size == 0:
                done += _gather_round(mine, info, path)
                mine = []
        if (n_batches - len(finished)) % info.world_size:
            done += _gather_round(mine, info, path)
    finally:
        for attack, own_seed in saved_seeds:
            attack.seed = own_seed
    return _result(named, done, check_masking, time.perf_counter() - start)


def _gather_round(mine: list[list[dict]], info: D.DistInfo, path: Path | None) -> list[list[dict]]:
    """Every rank's batches of one round, in batch order; rank 0 appends them to the records file."""
    batches = [b for rank_batches in D.gather_objects(mine, info) for b in rank_batches]
    batches.sort(key=lambda records: records[0]["batch"])
    if path is not None and info.is_main:
        _write_lines(path, [r for b in batches for r in b], "a")
    return batches


def _result(named: dict[str, Attack], batches: list[list[dict]], check_masking: bool, seconds: float) -> EvalResult:
    rows = [r for b in batches for r in b]
    n = len(rows)
    if n == 0:
        raise ValueError("data holds no examples to evaluate")
    forward = dict.fromkeys([*named, TOTAL], 0)
    backward = dict.fromkeys([*named, TOTAL], 0)
    warnings: list[str] = []
    square_only = 0
    for b in batches:
        stats = b[-1]["batch_done"]
        for key in forward:
            forward[key] += stats["forward_passes"][key]
            backward[key] += stats["backward_passes"][key]
        square_only += stats["square_only"]
        warnings += stats["warnings"]
    if check_masking and square_only > SQUARE_SLACK * n:
        warnings.append(f"Square (black-box) broke {square_only} of {n} examples that the white-box attacks "
                        "missed: a sign of gradient masking; robust accuracy from gradients may be overestimated")
    clean = sum(r["clean_correct"] for r in rows)
    robust = {name: sum(r["robust"][name] for r in rows) / n for name in named}
    worst = sum(r["clean_correct"] and all(r["robust"].values()) for r in rows)
    return EvalResult(n=n, clean_acc=clean / n, robust_acc=robust, worst_acc=worst / n, warnings=warnings,
                      seconds=seconds, forward_passes=forward, backward_passes=backward,
                      attacks={name: attack.describe() for name, attack in named.items()})
