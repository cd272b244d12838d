"""A study: the paper's claims as checks over the results of a grid run with several seeds.

A study is a few sweeps (``Part``s: the layers under standard training and PGD-AT; AdS on S4 and DSS under
PGD-AT), each over the seeds as a grid axis, written into one folder. Once their cells are complete, every claim
(``CLAIMS``, a list of data: a statement and the paired comparisons that test it) is evaluated over the results
table (``Table``: one row per cell, with its Best / Last / Diff and the perturbation's change rate across the
sequence mixer, ``advssm analyze``'s number). Each comparison is paired over seeds (the same seed fixes the data
order, the initial weights and the attacks of both cells) and judged by a t-interval of the mean difference:

    holds           the interval lies entirely on the claimed side of 0
    does not hold   it lies entirely on the other side
    inconclusive    it contains 0 (or fewer than 2 seeds could be paired)

A claim holds when every one of its comparisons holds, does not hold when any of them does not hold, and is
inconclusive otherwise.

    >>> t_interval([0.02, 0.04, 0.03]).verdict("greater")
    'holds'
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from advssm.ads import propagation_analysis
from advssm.adv_train.attacks import PGD
from advssm.ssm_layers import LAYERS

from . import interrupts
from .data import DATASETS
from .errors import ConfigError
from .execution import submission, sweep
from .execution.inline import execute
from .experiment import cell_folder, jobs
from .experiment.data_check import check_data
from .experiment.run_folder import prepare_dir
from .experiment.seeds import aggregate, group_table, stats
from .experiment.spec import PRESETS, resolve_experiment
from .experiment.trained_model import load_for_eval
from .files import write_json, write_text

CONFIDENCE = 0.95
TEST_NAME = "paired t-interval over seeds"
FINDINGS_MD, FINDINGS_JSON, STUDY_FILE = "findings.md", "findings.json", "study.json"
ANALYSIS_DIR = "analysis"
VERDICTS = ("holds", "does not hold", "inconclusive")
# the kinds of layer the claims compare, from the layers' own flags (advssm.ssm_layers.layers.base)
FIXED = tuple(name for name, layer in LAYERS.items() if layer.is_lti)  # fixed-parameter (LTI) SSMs
SELECTIVE = tuple(name for name, layer in LAYERS.items() if layer.is_selective)
PURE_SSMS = tuple(name for name, layer in LAYERS.items() if not layer.uses_attention)  # not Mega, not attention
ADVERSARIAL = "pgd-at"
STANDARD = "standard"


# -- statistics --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval of a mean difference over ``n`` paired seeds."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    std: float | None
    confidence: float = CONFIDENCE

    def verdict(self, side: str) -> str:
        """holds / does not hold / inconclusive for the claim "the difference is ``side`` than 0" (greater, less)."""
        if self.n < 2 or self.low is None:
            return "inconclusive"
        positive, negative = self.low > 0, self.high < 0
        if side == "less":
            positive, negative = negative, positive
        return "holds" if positive else "does not hold" if negative else "inconclusive"


def t_quantile(p: float, df: int) -> float:
    """The p quantile of Student's t with ``df`` degrees of freedom (scipy, which scikit-learn brings).

    Example:
        >>> round(t_quantile(0.975, 2), 3)
        4.303
    """
    from scipy.stats import t

    return float(t.ppf(p, df))


def t_interval(differences, confidence: float = CONFIDENCE) -> Interval:
    """The t-interval ``mean ± t_{n-1} s / sqrt(n)`` of the paired differences (None values left out).

    Example:
        >>> iv = t_interval([0.1, 0.2, 0.3])
        >>> round(iv.low, 4), round(iv.high, 4)
        (-0.0484, 0.4484)
    """
    values = [float(d) for d in differences if d is not None and math.isfinite(d)]
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0, None, confidence)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, None, n, None, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std, confidence)


# -- the results table -------------------------------------------------------------------------------------------

@dataclass
class Table:
    """One row per cell of a study: ``dataset``, ``layer``, ``method``, ``ads``, ``seed``, ``cell`` (its folder,
    relative to the study), ``complete`` and, when complete, ``best`` / ``last`` / ``diff`` (clean_acc, pgd_acc,
    aa_acc) and ``mix_change_rate`` (None until analysed).

    Example:
        >>> t = Table([{"dataset": "d", "layer": "s4", "method": "pgd-at", "ads": "none", "seed": 0,
        ...             "best": {"pgd_acc": 0.5}}])
        >>> t.value("d", 0, ("best", "pgd_acc"), layer="s4", method="pgd-at", ads="none")
        0.5
    """

    rows: list[dict]

    def find(self, dataset: str, seed: int, **where) -> dict | None:
        for row in self.rows:
            if row["dataset"] == dataset and row["seed"] == seed and all(row.get(k) == v for k, v in where.items()):
                return row
        return None

    def value(self, dataset: str, seed: int, what: tuple[str, ...], **where) -> float | None:
        """The number at path ``what`` (e.g. ("best", "pgd_acc") or ("mix_change_rate",)) of the matching row."""
        node = self.find(dataset, seed, **where)
        for key in what:
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node if isinstance(node, (int, float)) else None

    def values(self, key: str) -> list:
        """The distinct values of column ``key``, in table order."""
        return list(dict.fromkeys(row[key] for row in self.rows))

    def has(self, dataset: str, **where) -> bool:
        return any(row["dataset"] == dataset and all(row.get(k) == v for k, v in where.items()) for row in self.rows)


# -- claims as data ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """A number per (data set, seed): a metric of one cell, or the difference of two terms.

    ``Term(("best", "pgd_acc"), layer="s4", method="pgd-at", ads="none")`` is S4's Best PGD accuracy under PGD-AT;
    ``a - b`` is a Term too (an AT gain: at - st)."""

    what: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()
    minus: tuple[Term, Term] | None = None

    @classmethod
    def of(cls, *what: str, **where) -> Term:
        return cls(tuple(what), tuple(sorted(where.items())))

    def __sub__(self, other: Term) -> Term:
        return Term(minus=(self, other))

    def __call__(self, table: Table, dataset: str, seed: int) -> float | None:
        if self.minus is not None:
            a, b = (t(table, dataset, seed) for t in self.minus)
            return None if a is None or b is None else a - b
        return table.value(dataset, seed, self.what, **dict(self.where))

    def available(self, table: Table, dataset: str) -> bool:
        if self.minus is not None:
            return all(t.available(table, dataset) for t in self.minus)
        return table.has(dataset, **dict(self.where))


@dataclass(frozen=True)
class Comparison:
    """One check of a claim: ``lhs - rhs`` is ``side`` (greater / less) than 0, paired over seeds, in %-points
    (``scale`` 100) or as a plain number (change rates: ``scale`` 1)."""

    label: str
    lhs: Term
    rhs: Term
    side: str
    scale: float = 100.0
    unit: str = "points"

    def evaluate(self, table: Table, dataset: str) -> dict:
        seeds = sorted({row["seed"] for row in table.rows if row["dataset"] == dataset})
        pairs = {seed: (self.lhs(table, dataset, seed), self.rhs(table, dataset, seed)) for seed in seeds}
        paired = {seed: (a, b) for seed, (a, b) in pairs.items() if a is not None and b is not None}
        interval = t_interval([a - b for a, b in paired.values()])
        mean_of = lambda values: math.fsum(values) / len(values) if values else None  # noqa: E731
        scaled = lambda v: None if v is None else v * self.scale  # noqa: E731
        reason = None if interval.n >= 2 else (
            f"only {interval.n} seed(s) with both numbers (a t-interval needs 2)" if seeds else "no results")
        return {"label": self.label, "dataset": dataset, "side": self.side, "unit": self.unit,
                "lhs": scaled(mean_of([a for a, _ in paired.values()])),
                "rhs": scaled(mean_of([b for _, b in paired.values()])),
                "difference": scaled(interval.mean), "low": scaled(interval.low), "high": scaled(interval.high),
                "std": scaled(interval.std), "n": interval.n, "seeds": sorted(paired),
                "per_seed": {str(seed): scaled(a - b) for seed, (a, b) in paired.items()},
                "verdict": interval.verdict(self.side), **({"reason": reason} if reason else {})}


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims: its statement and a function from the table and a data set to its comparisons
    (only those whose cells the study has)."""

    key: str
    statement: str
    comparisons: Callable[[Table, str], list[Comparison]]
    note: str = ""

    def evaluate(self, table: Table, dataset: str) -> dict:
        checks = [c.evaluate(table, dataset) for c in self.comparisons(table, dataset)
                  if c.lhs.available(table, dataset) and c.rhs.available(table, dataset)]
        return {"key": self.key, "statement": self.statement, "note": self.note, "dataset": dataset,
                "verdict": combine([c["verdict"] for c in checks]), "checks": checks}


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its checks: holds if all hold, does not hold if any does not, else inconclusive
    (and inconclusive with no checks: nothing in the study tests it)."""
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "inconclusive"


ACCURACIES = (("clean_acc", "clean"), ("pgd_acc", "PGD"), ("aa_acc", "AA"))


def _cell(*what: str, layer: str, method: str = ADVERSARIAL, ads: str = "none") -> Term:
    return Term.of(*what, layer=layer, method=method, ads=ads)


def _layers(table: Table, dataset: str, among=None) -> list[str]:
    found = [row["layer"] for row in table.rows if row["dataset"] == dataset]
    return [layer for layer in dict.fromkeys(found) if among is None or layer in among]


def _at_gains(table: Table, dataset: str) -> list[Comparison]:
    out = []
    for layer in _layers(table, dataset):
        for key, name in ACCURACIES[1:]:
            out.append(Comparison(f"{layer}: Best {name}, PGD-AT vs ST", _cell("best", key, layer=layer),
                                  _cell("best", key, layer=layer, method=STANDARD), "greater"))
    gain = lambda layer: _cell("best", "pgd_acc", layer=layer) - _cell(  # noqa: E731
        "best", "pgd_acc", layer=layer, method=STANDARD)
    for selective in _layers(table, dataset, SELECTIVE):
        for fixed in _layers(table, dataset, FIXED):
            out.append(Comparison(f"AT gain in Best PGD: {selective} vs {fixed}", gain(selective), gain(fixed),
                                  "greater"))
    return out


def _overfitting(table: Table, dataset: str) -> list[Comparison]:
    return [Comparison(f"Diff (Best - Last) PGD under PGD-AT: mega vs {layer}", _cell("diff", "pgd_acc", layer="mega"),
                       _cell("diff", "pgd_acc", layer=layer), "greater")
            for layer in _layers(table, dataset, PURE_SSMS)] if "mega" in _layers(table, dataset) else []


def _ads(table: Table, dataset: str) -> list[Comparison]:
    out = []
    activations = [a for a in table.values("ads") if a != "none"]
    for layer in _layers(table, dataset, ("s4", "dss")):
        for act in activations:
            for key, name in ACCURACIES:
                out.append(Comparison(f"{layer}: Best {name} under PGD-AT, AdS {act} vs none",
                                      _cell("best", key, layer=layer, ads=act), _cell("best", key, layer=layer),
                                      "greater"))
            out.append(Comparison(f"{layer}: Diff PGD under PGD-AT, AdS {act} vs none",
                                  _cell("diff", "pgd_acc", layer=layer, ads=act), _cell("diff", "pgd_acc", layer=layer),
                                  "less"))
    return out


def _propagation(table: Table, dataset: str) -> list[Comparison]:
    return [Comparison(f"change rate across the mixer (PGD-AT, Best): {selective} vs {fixed}",
                       _cell("mix_change_rate", layer=selective), _cell("mix_change_rate", layer=fixed), "greater",
                       scale=1.0, unit="")
            for selective in _layers(table, dataset, SELECTIVE) for fixed in _layers(table, dataset, FIXED)]


CLAIMS = [
    Claim("at-gain", "Adversarial training (PGD-AT) raises PGD and AutoAttack accuracy over standard training (ST) "
          "for every layer; the fixed-parameter SSMs gain less from it than S6 (their output error is bounded by "
          "their parameters, which limits what AT can change)", _at_gains,
          "Best checkpoints; the gain comparison is (S6 AT - S6 ST) - (LTI AT - LTI ST) in Best PGD accuracy, for "
          "each selective layer in the table (S6, and Mamba-2 where a study adds it) against each LTI one."),
    Claim("mega-overfitting", "The attention-augmented model (Mega) overfits more under PGD-AT than the pure SSMs: "
          "a larger Diff = Best - Last in PGD accuracy", _overfitting),
    Claim("ads", "AdS raises clean and robust accuracy of S4 and DSS under PGD-AT, with a smaller Diff", _ads),
    Claim("propagation", "A perturbation grows more across S6's mixer than across the LTI mixers (change rate "
          "(after - before) / before of the relative error, mean over blocks)", _propagation,
          "advssm analyze's error propagation on each PGD-AT cell's Best checkpoint, attacked by PGD with the "
          "cell's eval steps, eps and seed."),
]


def evaluate_claims(table: Table, claims=CLAIMS) -> list[dict]:
    """Every claim on every data set of the table."""
    return [claim.evaluate(table, dataset) for dataset in table.values("dataset") for claim in claims]


# -- the study's parts and scales --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scale:
    """What a study trains: per data set a grid of ``layers`` x (ST, PGD-AT) and AdS (``ads``) on ``ads_layers``
    under PGD-AT, each over ``seeds`` seeds, with ``settings`` (dotted, as ``--set``) over ``preset``."""

    name: str
    description: str
    datasets: tuple[str, ...]
    layers: tuple[str, ...]
    ads_layers: tuple[str, ...]
    seeds: int
    settings: dict = field(default_factory=dict)
    preset: str | None = None  # None: the CLI's defaults; "paper-{dataset}": the paper's preset of each data set
    ads: str = "relu"
    analysis_n: int = 128


PAPER_LAYERS = ("s4", "dss", "s5", "mega", "s6")
# the reduced AutoAttack of the demo, said so in every report: APGD-CE, APGD-DLR and Square
_REDUCED_AA = {"eval.aa_version": "custom", "eval.aa_attacks": ["apgd-ce", "apgd-dlr", "square"]}
SCALES = {
    "small": Scale(
        "small", "the bundled 8x8 digits as 2x2 patches (16 tokens: on 64 pixel tokens the models sit at chance for "
        "the first 5-10 epochs), d_model 32, d_state 16, 2 layers, 10 epochs (batch 32, lr 0.01), eps 0.1, PGD-AT "
        "with 3 steps of 0.04; Best chosen on the first 200 test examples, final evaluation on them with PGD-10 and "
        "a reduced AutoAttack (APGD-CE and APGD-DLR at 10 steps, Square at 500 queries)",
        ("digits",), PAPER_LAYERS, ("s4", "dss"), 3,
        {"model.patch_size": 2, "model.d_model": 32, "model.d_state": 16, "model.n_layers": 2, "train.epochs": 10,
         "train.batch_size": 32,
         "train.lr": 1e-2, "train.eps": 0.1, "train.alpha": 0.04, "train.attack_steps": 3, "train.eval_n": 200,
         "train.eval_pgd_steps": 10, "train.aa_every": 0, "eval.aa_n": 200, "eval.aa_steps": 10, "eval.train_n": 0,
         **_REDUCED_AA}, analysis_n=128),
    "paper": Scale(
        "paper", "the paper's presets (paper-mnist, paper-cifar10, paper-tinyimagenet: its models, epochs, eps, "
        "PGD-10 and standard AutoAttack on 2000 test examples), for a GPU cluster",
        ("mnist", "cifar10", "tinyimagenet"), PAPER_LAYERS, ("s4", "dss"), 3, {}, preset="paper", analysis_n=256),
    "tiny": Scale(
        "tiny", "a smoke test of the pipeline in seconds (S4 and S6, 1 epoch on 64 digits); its numbers mean nothing",
        ("digits",), ("s4", "s6"), ("s4",), 2,
        {"model.d_model": 8, "model.d_state": 4, "model.n_layers": 1, "train.epochs": 1, "train.batch_size": 32,
         "data.train_size": 64, "data.test_size": 16, "train.attack_steps": 1, "train.eval_pgd_steps": 2,
         "train.aa_every": 0, "eval.aa_n": 8, "eval.aa_steps": 1, "eval.train_n": 0, **_REDUCED_AA}, analysis_n=8),
}


@dataclass(frozen=True)
class Part:
    """One sweep of a study: its folder name under the study and its resolved ``ExperimentSpec``."""

    name: str
    dataset: str
    spec: object

    def cell_dir(self, root: Path, cell) -> Path:
        return Path(root) / self.name / cell.name


def plan(scale: Scale, datasets=None, seeds: int | None = None, overrides: dict | None = None) -> list[Part]:
    """The study's sweeps, resolved and validated (every cell is built once here, before anything trains).

    Example:
        >>> ", ".join(p.name for p in plan(SCALES["tiny"]))
        'digits-main, digits-ads'
    """

    datasets = tuple(datasets or scale.datasets)
    seeds = seeds if seeds is not None else scale.seeds
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1 (2 or more for a confidence interval)")
    parts = []
    for dataset in datasets:
        if dataset not in DATASETS:
            raise ConfigError(f"--dataset {dataset!r}: not a data set the CLI reads (choose from "
                              f"{', '.join(DATASETS)})")
        preset = None
        if scale.preset == "paper":
            preset = f"paper-{dataset}"
            if preset not in PRESETS:
                papers = [p.removeprefix("paper-") for p in PRESETS if p.startswith("paper-")]
                raise ConfigError(f"--scale paper --dataset {dataset}: the paper has no preset for it (it has "
                                  f"{', '.join(papers)}); use --scale small --dataset {dataset}")
        grids = {"main": {"layer": list(scale.layers), "method": [STANDARD, ADVERSARIAL]},
                 "ads": {"layer": list(scale.ads_layers), "method": [ADVERSARIAL], "ads": [scale.ads]}}
        for part, grid in grids.items():
            raw = {"name": f"study-{dataset}-{part}", "grid": {**grid, "seed": list(range(seeds))}}
            if preset:
                raw["preset"] = preset
            values = {**scale.settings, **({} if preset else {"data.dataset": dataset}), **(overrides or {})}
            parts.append(Part(f"{dataset}-{part}", dataset, resolve_experiment(raw, overrides=values)))
    return parts


# -- running it --------------------------------------------------------------------------------------------------

def study_record(scale: Scale, parts: list[Part], seeds: int, overrides: dict) -> dict:
    """What study.json records: the settings a rerun must repeat to resume the folder."""
    return {"study": "paper-findings", "scale": scale.name, "datasets": list(dict.fromkeys(p.dataset for p in parts)),
            "seeds": seeds, "overrides": {k: overrides[k] for k in sorted(overrides)},
            "parts": [p.name for p in parts]}


def prepare(root: Path, record: dict) -> None:
    """Write study.json into a new study folder, or check that an existing one records the same study."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / STUDY_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None
        if stored != record:
            raise ConfigError(f"{root} holds a different study ({path}: {json.dumps(stored)}); rerun it with the "
                              "same options to resume it, or choose another --out")
        return
    foreign = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    if foreign:
        raise ConfigError(f"--out {root} is an existing folder that is not a study folder (no {STUDY_FILE}; it holds "
                          f"{', '.join(sorted(foreign)[:3])}); choose a new or empty folder")
    write_json(path, record, end="\n")


def run_inline(root: Path, parts: list[Part], progress: bool) -> None:
    """Every part's sweep in this process, one cell after another (complete cells skipped)."""

    for part in parts:
        execute(part.spec, root / part.name, progress=progress, callbacks=[interrupts.CHECK], command="advssm study")


def run_jobs(root: Path, parts: list[Part], settings, wait_for_end: bool, echo=print) -> bool:
    """Submit every cell of every part that is neither complete nor handled by a live job (local or Slurm);
    with ``wait_for_end`` follow them to the end. Returns whether every cell is complete."""

    n_cells = sum(len(p.spec.cells()) for p in parts)
    for part in parts:
        run_dir = root / part.name
        prepare_dir(part.spec, run_dir)
        cells = part.spec.cells()
        with jobs.sweep_lock(run_dir, f"advssm study --executor {settings.kind}"):
            rows = jobs.cell_statuses(run_dir, cells)
            todo = [cell for cell, row in zip(cells, rows) if row.state != "done" and not row.alive]
            if settings.kind == "local":
                check_data(todo)
            # one set of local slots for the whole study: --max-parallel counts every part's cells together
            ids = submission.submit(settings, run_dir, todo, part.spec.name, n_cells=n_cells, slot_dir=root)
            sweep.write_sweep_report(run_dir, part.spec)
        for name, job_id in ids.items():
            echo(f"  {part.name}/{name}: job {job_id}")

    def statuses():
        return [dataclasses.replace(row, cell=f"{part.name}/{row.cell}") for part in parts
                for row in jobs.cell_statuses(root / part.name, part.spec.cells())]

    if wait_for_end:
        names = [f"{p.name}/{c.name}" for p in parts for c in p.spec.cells()]
        submission.wait(root, names, statuses, echo=echo)
        for part in parts:
            sweep.write_sweep_report(root / part.name, part.spec)
    return all(row.state == "done" for row in statuses())


def analysis_file(root: Path, part: Part, cell) -> Path:
    return Path(root) / ANALYSIS_DIR / part.name / f"{cell.name}.json"


def analyse(root: Path, parts: list[Part], n: int, device: str | None = None, echo=print) -> None:
    """The error propagation of every complete PGD-AT cell without AdS (its Best checkpoint, PGD with the cell's
    eps, step, eval steps and seed on its first ``n`` test examples), each written once to
    analysis/<part>/<cell>.json (a rerun skips those present)."""

    for part in parts:
        for cell in part.spec.cells():
            folder = part.cell_dir(root, cell)
            path = analysis_file(root, part, cell)
            if cell.train.method != ADVERSARIAL or cell.ads != "none" or path.is_file() \
                    or not cell_folder.is_complete(folder):
                continue
            echo(f"analysing {part.name}/{cell.name}")
            model, x, y, eps, _, _ = load_for_eval(cell_folder.checkpoint(folder, "best"), None, None, n, None, device)
            attack = PGD(model, eps=eps, alpha=float(cell.train.alpha), steps=cell.train.eval_pgd_steps,
                         random_start=True, seed=cell.train.seed)
            torch.manual_seed(cell.train.seed)
            report = propagation_analysis(model, x, y=y, attack=attack)
            rates = [r["change_rate"] for r in report.rows if r["component"] == "mix" and r["change_rate"] is not None]
            data = {"mix_change_rate": math.fsum(rates) / len(rates) if rates else None, "n": int(x.shape[0]),
                    "eps": eps, "steps": cell.train.eval_pgd_steps, "seed": cell.train.seed,
                    "report": report.to_dict()}
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, data, indent=1)


def collect(root: Path, parts: list[Part]) -> Table:
    """The results table of the study folder (complete cells with their numbers, the others marked)."""
    rows = []
    for part in parts:
        for cell in part.spec.cells():
            folder = part.cell_dir(root, cell)
            row = {"dataset": part.dataset, "layer": cell.model.layer, "method": cell.train.method, "ads": cell.ads,
                   "seed": cell.train.seed, "cell": f"{part.name}/{cell.name}",
                   "complete": cell_folder.is_complete(folder)}
            if row["complete"]:
                summary = cell_folder.read_summary(folder)
                row.update({stage: {k: summary.get(stage, {}).get(k) for k in cell_folder.KEYS}
                            for stage in ("best", "last", "diff")})
            path = analysis_file(root, part, cell)
            row["mix_change_rate"] = json.loads(path.read_text())["mix_change_rate"] if path.is_file() else None
            rows.append(row)
    return Table(rows)


# -- findings ----------------------------------------------------------------------------------------------------

def _num(value, unit: str = "points", signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return text if unit == "points" else f"{value:+.3g}" if signed else f"{value:.3g}"


def findings_markdown(results: list[dict], table: Table, scale: Scale, parts: list[Part], groups: dict) -> str:
    """findings.md: the protocol, a summary of verdicts, each claim's checks with their numbers, and the table of
    each group's mean ± std over its seeds."""
    complete = sum(row["complete"] for row in table.rows)
    seeds = sorted({row["seed"] for row in table.rows})
    lines = [f"# advssm study: the paper's findings (scale {scale.name})", "",
             f"Scale {scale.name}: {scale.description}. Data sets: {', '.join(table.values('dataset'))}; seeds "
             f"{', '.join(map(str, seeds))}; {complete} of {len(table.rows)} cells complete.", "",
             f"Test: a two-sided {TEST_NAME} at {int(100 * CONFIDENCE)} % (Student's t with n - 1 degrees of "
             "freedom) of the mean difference A - B; the two cells of a pair share the seed, so the data order, "
             "initial weights and attacks match. A check **holds** if the interval lies entirely on the claimed side "
             "of 0, **does not hold** if entirely on the other, and is **inconclusive** if it contains 0 or fewer "
             "than 2 seeds could be paired. A claim holds when all its checks hold and does not hold when any of "
             "them does not. No correction for the number of checks. Accuracies in %, differences in points.", "",
             "| data set | claim | verdict | checks: holds / does not hold / inconclusive |", "|---|---|---|---|"]
    for r in results:
        counts = " / ".join(str(sum(c["verdict"] == v for c in r["checks"])) for v in VERDICTS)
        lines.append(f"| {r['dataset']} | {r['key']} | **{r['verdict']}** | {counts} |")
    lines.append("")
    for r in results:
        lines += [f"## {r['dataset']}: {r['key']}", "", f"Claim: {r['statement']}.", ""]
        if r["note"]:
            lines += [r["note"], ""]
        lines.append(f"Verdict: **{r['verdict']}**" + ("" if r["checks"] else " (no cell of this study tests it)."))
        lines.append("")
        if not r["checks"]:
            continue
        lines += ["| check | claimed | A | B | A - B | 95 % CI | n | per seed | verdict |",
                  "|---|---|---:|---:|---:|---|---:|---|---|"]
        for c in r["checks"]:
            u = c["unit"]
            ci = "-" if c["low"] is None else f"[{_num(c['low'], u, True)}, {_num(c['high'], u, True)}]"
            per = ", ".join(_num(v, u, True) for v in c["per_seed"].values()) or "-"
            verdict = c["verdict"] + (f" ({c['reason']})" if c.get("reason") else "")
            lines.append(f"| {c['label']} | A - B {'>' if c['side'] == 'greater' else '<'} 0 | {_num(c['lhs'], u)} | "
                         f"{_num(c['rhs'], u)} | {_num(c['difference'], u, True)} | {ci} | {c['n']} | {per} | "
                         f"{verdict} |")
        lines.append("")
    lines += ["## Results: mean ± std over seeds", ""]
    for part in parts:
        if groups.get(part.name):
            lines += [f"### {part.name}", "", f"Protocol and per-cell rows: [{part.name}/report.md]({part.name}/"
                      "report.md).", "", group_table(groups[part.name]), ""]
    rates = [row for row in table.rows if row["mix_change_rate"] is not None]
    if rates:

        lines += ["### Change rate across the mixer (PGD-AT, Best checkpoint)", "",
                  "| data set | layer | mean | std | n |", "|---|---|---:|---:|---:|"]
        for dataset in table.values("dataset"):
            for layer in table.values("layer"):
                s = stats([row["mix_change_rate"] for row in rates if row["dataset"] == dataset
                           and row["layer"] == layer])
                if s["n"]:
                    lines.append(f"| {dataset} | {layer} | {s['mean']:+.3g} | "
                                 f"{'-' if s['std'] is None else format(s['std'], '.3g')} | {s['n']} |")
        lines.append("")
    return "\n".join(lines)


def write_findings(root: Path, scale: Scale, parts: list[Part], table: Table) -> tuple[Path, Path, list[dict]]:
    """Evaluate the claims over ``table`` and write findings.md and findings.json (atomically) into ``root``."""
    results = evaluate_claims(table)
    groups = {}
    for part in parts:
        done = [(cell.name, cell_folder.read_summary(part.cell_dir(root, cell))) for cell in part.spec.cells()
                if cell_folder.is_complete(part.cell_dir(root, cell))]
        groups[part.name] = aggregate(done) if done else []
    md = findings_markdown(results, table, scale, parts, groups)
    data = {"scale": scale.name, "description": scale.description, "test": TEST_NAME, "confidence": CONFIDENCE,
            "claims": results, "table": table.rows, "groups": {k: dict(v) for k, v in groups.items()}}
    write_text(root / FINDINGS_MD, md)
    write_json(root / FINDINGS_JSON, data, indent=1, end="\n")
    return root / FINDINGS_MD, root / FINDINGS_JSON, results
