"""The experiment spec: one typed, frozen description of a run, resolved once into self-contained cells.

    spec = resolve_experiment(load_toml("exp.toml"), overrides={"train.epochs": 5})
    for cell in spec.cells():          # every cell validated already, before anything trains
        run_cell(cell, run_dir / cell.name)

Layers, lowest first: the built-in defaults (a small S4D on the bundled digits) or a preset
(``paper-mnist``, ``paper-cifar10``, ``paper-tinyimagenet``), then the TOML file, then dotted
overrides (flags, ``--set``). The TOML has top-level ``name``, ``preset``, ``ads`` and the tables
``[grid]`` (lists of values; each combination is one cell), ``[data]``, ``[model]`` (``ModelConfig``
fields), ``[train]`` (``TrainConfig`` fields and ``init_from``) and ``[eval]``. TOML has no null, so
optional settings are written as ``"none"``.

A ``CellSpec`` holds everything one cell needs (preset values, ``d_state = "paper"`` and the data set's
channels and classes already decided), so it can be written to JSON, handed to another process or machine
and read back equal.

One schema per setting: ``[model]`` is a ``ModelConfig`` and ``[train]`` a ``TrainConfig``, checked by the
libraries themselves (their ``from_dict``, types and ranges included), not by a copy of their fields; the
CLI's own tables (``[data]``, ``[eval]``, ``[track]``, ``[grid]``) are pydantic models. What neither sees,
the rules of a layer or an output transform, is checked by building the model once on the CPU when the
experiment is resolved.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import re
import sys
import typing
from functools import cache
from typing import Annotated, Any, Literal, NamedTuple

import tomli_w
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published for older Pythons
    import tomli as tomllib

import os
from pathlib import Path

import torch
from advssm.ads import ACTIVATIONS, attach_ads
from advssm.adv_train.attacks import ATTACK_NAMES
from advssm.adv_train.config import AA_VERSIONS, DATASET_DEFAULTS, TrainConfig, decide_select_by
from advssm.ssm_layers import LAYERS, ModelConfig, build_model
from advssm.ssm_layers import preset as model_preset
from advssm.ssm_layers.checkpoint import state_numel
from advssm.ssm_layers.model import PRESETS as MODEL_PRESETS
from advssm.ssm_layers.model import VISION_PRESETS

from ..data import DATASETS, PAPER_TINY_CLASSES, SHAPES, model_io
from ..errors import ConfigError
from .executor_spec import ExecutorSpec

ADS_CHOICES = ("none", *ACTIVATIONS)  # AdS off, or one of its activations
# grid axis -> (section, key) of the setting it varies, in the order cell names list them
GRID_AXES = {"dataset": ("data", "dataset"), "layer": ("model", "layer"), "patch_size": ("model", "patch_size"),
             "scan": ("model", "scan"), "method": ("train", "method"), "ads": ("", "ads"),
             "seed": ("train", "seed")}  # seed last: a cell's name ends in -seedN, its group is the name before it
FROM_DATA = ("d_input", "n_classes")  # ModelConfig fields the data set decides
CLI_TRAIN_KEYS = ("init_from",)  # [train] keys of the TOML the CLI keeps itself (the spec's init_from)
PAPER_D_STATE = "paper"  # [model] d_state of the paper presets: the paper's value for each cell's layer
SECTIONS = ("data", "model", "train", "eval")
# the TOML's top-level keys and tables, in the order config.toml writes them
TOML_KEYS = ("name", "preset", "ads", "data", "eval", "grid", "model", "train", "track", "executor")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# a run folder is named <15-character UTC stamp>-<name>[-<n>] and most file systems allow 255 bytes per name
MAX_NAME = 100

# Defaults of the no-argument run: tuned so both cells finish in a few minutes on 2 CPU cores (see README).
DEMO = {
    "model": {"layer": "s4d", "d_model": 32, "d_state": 16, "n_layers": 2},
    # 15 epochs of batch 32 at lr 1e-2: an S4D on 64 pixel tokens sits at chance for ~5 epochs of batch 64 at
    # 3e-3 before it learns; these settings get past that plateau (ST ~95 % clean) within the 15 epochs
    "train": {"epochs": 15, "batch_size": 32, "lr": 1e-2, "eps": 0.1, "alpha": 0.025, "attack_steps": 5,
              "eval_pgd_steps": 10, "aa_every": 0, "aa_n": 200, "seed": 0},
    # a reduced AutoAttack so the demo stays within minutes, reported as such: the two APGD losses at 25 steps
    # and the black-box Square at 50 x 25 = 1250 queries (gradient attacks alone overstate a PGD-AT model's AA)
    "eval": {"aa_n": 200, "aa_version": "custom", "aa_attacks": ["apgd-ce", "apgd-dlr", "square"], "aa_steps": 25},
}


class Preset(NamedTuple):
    """A CLI preset: an ssm-layers model preset under the paper's protocol for its data set (adv-train's
    ``TrainConfig.for_dataset``), on that data set with ``[data]``'s defaults."""

    model: str
    dataset: str


def _paper_presets() -> dict[str, Preset]:
    """The presets, named from the libraries' own tables, which hold their values: ``paper-<dataset>`` for each
    data set with both a paper model (``advssm.ssm_layers.model.PRESETS``) and a paper protocol
    (``advssm.adv_train.config.DATASET_DEFAULTS``), and each vision model (``VISION_PRESETS``,
    ``<family>-<dataset>``) under its data set's protocol. The data set's own facts (Tiny-ImageNet's 50 classes)
    are ``[data]``'s defaults."""
    parts = [(f"paper-{name}", name, name) for name in MODEL_PRESETS]
    parts += [(name, name, name.split("-", 1)[1]) for name in sorted(VISION_PRESETS)]
    return {name: Preset(model, dataset) for name, model, dataset in parts
            if dataset in DATASET_DEFAULTS and dataset in DATASETS}


PRESETS = _paper_presets()

def _one_of(what: str, choices):
    """A validator of a value that must be one of ``choices``: "invalid dataset 'mnsit'; did you mean 'mnist'?
    (choose one of ...)"."""
    def check(value):
        _choose(what, value, choices)
        return value

    return check


# names checked against their registries, a close match named
DatasetName = Annotated[str, AfterValidator(_one_of("dataset", DATASETS))]
AdsName = Annotated[str, AfterValidator(_one_of("ads", ADS_CHOICES))]
# checked before the Literal: "random" -> did you mean 'rand'?, with the choices
AAVersion = Annotated[Literal[AA_VERSIONS], BeforeValidator(_one_of("eval.aa_version", AA_VERSIONS))]
AttackName = Annotated[str, AfterValidator(_one_of("eval.aa_attacks entry", ATTACK_NAMES))]
TRACKERS = ("tensorboard", "mlflow", "wandb")
TrackerName = Annotated[str, AfterValidator(_one_of("track.trackers entry", TRACKERS))]

_FROZEN = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Frozen(BaseModel):
    model_config = _FROZEN


class DataSpec(_Frozen):
    """Which data set and how much of it.

    Attributes:
        dataset: one of ``advssm.cli.data.DATASETS``.
        data_dir: folder with the data set's standard files.
        train_size, test_size: keep the first this many examples (None = all).
        download: fetch MNIST / CIFAR-10 with torchvision first.
        tiny_classes: Tiny-ImageNet classes kept (the paper's 50 by default).
        augment: crop + flip during training; None = as the paper (CIFAR-10 and Tiny-ImageNet only).
    """

    dataset: DatasetName = "digits"
    data_dir: str = "data"
    train_size: int | None = Field(default=None, ge=1)
    test_size: int | None = Field(default=None, ge=1)
    download: bool = False
    tiny_classes: int = Field(default=PAPER_TINY_CLASSES, ge=2)
    augment: bool | None = None


class EvalSpec(_Frozen):
    """The final evaluation of the best and last checkpoints: clean, PGD and AutoAttack on the same examples.

    Attributes:
        aa: run AutoAttack (the paper reports AA for both checkpoints; the trainer runs AA only every k epochs).
        aa_n: evaluate the first this many test examples (the paper: 2000).
        aa_version: "standard" (APGD-CE, APGD-T, FAB-T, Square at their full budgets), "rand" (APGD-CE and
            APGD-DLR, 100 steps each with an expectation over 20 samples per step (EOT), for models that are
            random at evaluation time) or "custom".
        aa_attacks: for "custom", names among apgd-ce, apgd-dlr, apgd-t, fab-t, square, run in order.
        aa_steps: for "custom", iterations of APGD / FAB (Square gets 50x as many queries). "standard" and
            "rand" fix their attacks and budgets; the report lists them.
        train_n: after every epoch, clean and PGD accuracy of the first this many training examples
            (un-augmented, measured as the test set is) for the train curves of the plots; 0 = off.
        batch_size: examples per batch of the final evaluation (Square's query loop runs once per batch,
            so small training batches would make it several times slower).
    """

    aa: bool = True
    aa_n: int = Field(default=2000, ge=1)
    aa_version: AAVersion = "standard"
    aa_attacks: list[AttackName] = Field(default_factory=lambda: ["apgd-ce", "apgd-t", "fab-t", "square"], min_length=1)
    aa_steps: int = Field(default=100, ge=1)
    train_n: int = Field(default=256, ge=0)
    batch_size: int = Field(default=256, ge=1)




class TrackSpec(_Frozen):
    """The ``[track]`` table: experiment trackers each cell logs to (``advssm.cli.experiment.trackers``); no part
    of what a cell computes.

    Attributes:
        trackers: any of tensorboard (event files in the cell folder), mlflow, wandb (offline, in the run folder).
        mlflow_uri: MLflow tracking URI; "" = a SQLite store in the run folder (``<run>/mlflow.db``).
        mlflow_experiment: MLflow experiment; "" = the run folder's name.
        wandb_project: W&B project of the offline runs.
    """

    trackers: list[TrackerName] = Field(default_factory=list)
    mlflow_uri: str = ""
    mlflow_experiment: str = ""
    wandb_project: str = "advssm"

    @field_validator("trackers")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"invalid track.trackers {value!r}: lists a tracker twice")
        return value


class GridSpec(_Frozen):
    """The axes of a sweep: each combination of the listed values is one cell (None = not varied)."""

    dataset: list[str] | None = Field(default=None, min_length=1)
    layer: list[str] | None = Field(default=None, min_length=1)
    patch_size: list[int | Literal["none"]] | None = Field(default=None, min_length=1)
    scan: list[str] | None = Field(default=None, min_length=1)
    method: list[str] | None = Field(default=None, min_length=1)
    ads: list[str] | None = Field(default=None, min_length=1)
    # train.seed of each cell (data order, initial weights, attacks): the report averages a group over its seeds
    seed: list[int] | None = Field(default=None, min_length=1)

    @field_validator("*")
    @classmethod
    def _no_repeats(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"lists a value twice: {value!r}")
        return value

    def axes(self) -> dict[str, list]:
        """The varied axes in cell-name order."""
        return {axis: getattr(self, axis) for axis in GRID_AXES if getattr(self, axis) is not None}


def axis_label(axis: str, value) -> str:
    """A grid value as its cell name writes it: patch_size 4 -> "patch4", "none" -> "pixels"; seed 1 -> "seed1";
    others as given."""
    if axis == "patch_size":
        return "pixels" if value == "none" else f"patch{value}"
    if axis == "seed":
        return f"seed{value}"
    return str(value)


def _library_section(section: str, cls):
    """The type of the ``[section]`` table: the library's own config ``cls`` (``ModelConfig``, ``TrainConfig``),
    built and checked by its ``from_dict`` (types, ranges, rules) and written as its ``to_dict()``. Unknown keys
    are named first, with a close match or the table they belong in."""
    def check(value):
        if isinstance(value, cls):
            value = value.to_dict()
        if not isinstance(value, dict):
            raise ValueError(f"invalid [{section}]: must be a table, got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [key for key in value if key not in known]
        if unknown:
            raise ValueError(_unknown_key(section, str(unknown[0])))
        try:
            return cls.from_dict(copy.deepcopy(value))  # the spec's config is its own: a caller's dict stays apart
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid setting: {_rename(str(exc))}") from None

    return Annotated[cls, PlainValidator(check), PlainSerializer(cls.to_dict, return_type=dict)]


ModelSection = _library_section("model", ModelConfig)
TrainSection = _library_section("train", TrainConfig)


def _section_keys(section: str) -> list[str]:
    """The keys a user may write in ``[section]``."""
    if section == "model":
        return [f.name for f in dataclasses.fields(ModelConfig) if f.name not in FROM_DATA]
    if section == "train":
        return [f.name for f in dataclasses.fields(TrainConfig)] + list(CLI_TRAIN_KEYS)
    return list({"data": DataSpec, "eval": EvalSpec}[section].model_fields)


def _unknown_key(section: str, key: str) -> str:
    """"unknown key 'train.epoch'; did you mean 'train.epochs'?", or the table it belongs in, or the known keys."""
    known = _section_keys(section)
    hint = (_suggest(key, known, f"{section}.") or _elsewhere(key, section)
            or f"; known keys: {', '.join(sorted(known))}")
    return f"unknown key '{section}.{key}'{hint}"


def _paper_d_state(preset: str, layer=None) -> int:
    """The paper's d_state of the preset's model for ``layer`` (the preset's own without a layer)."""
    return model_preset(PRESETS[preset].model, **({} if layer is None else {"layer": layer})).d_state


def _choose(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"invalid {what} {value!r}{_suggest(str(value), choices)} "
                         f"(choose one of {', '.join(choices)})")


def _suggest(key: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, [str(k) for k in known], n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


class _SpecBase(_Frozen):
    name: str = "run"
    preset: str = "none"
    ads: AdsName = "none"
    # a checkpoint whose weights start every cell ([train] init_from in the TOML: a CLI setting, not TrainConfig's)
    init_from: str | None = None
    data: DataSpec = DataSpec()
    model: ModelSection
    train: TrainSection
    eval: EvalSpec = EvalSpec()
    track: TrackSpec = TrackSpec()

    @model_validator(mode="before")
    @classmethod
    def _complete(cls, raw):
        return cls._prepare(dict(raw)) if isinstance(raw, dict) else raw

    @classmethod
    def _prepare(cls, raw: dict) -> dict:
        """What the tables leave to others: ``[train] init_from`` moves to ``init_from``, and the data set decides
        the model's ``d_input`` and ``n_classes`` where they are not given (a TOML, or a cell of an earlier version,
        whose cell.json and checkpoints lack them)."""
        train = raw.get("train")
        if isinstance(train, dict) and "init_from" in train:
            train = dict(train)
            raw.setdefault("init_from", train.pop("init_from"))
            raw["train"] = train
        model, data = raw.get("model"), raw.get("data", {})
        data = data.model_dump() if isinstance(data, DataSpec) else data
        if isinstance(model, dict) and isinstance(data, dict) and not set(FROM_DATA) <= set(model):
            dataset = data.get("dataset", DataSpec.model_fields["dataset"].default)
            tiny = data.get("tiny_classes", PAPER_TINY_CLASSES)
            if dataset in SHAPES and isinstance(tiny, int) and not isinstance(tiny, bool):  # else [data] is named
                raw["model"] = {**dict(zip(FROM_DATA, model_io(dataset, tiny))), **model}
        return raw

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        # the name becomes a folder name under the runs root: nothing that climbs out of it or hides
        if not _NAME.match(value) or ".." in value:
            raise ValueError(f"invalid name {value!r}: use letters, digits, '.', '_' and '-' (no '/', no '..'); "
                             "it names the run folder")
        if len(value) > MAX_NAME:
            raise ValueError(f"invalid name {value[:20]}... ({len(value)} characters): at most {MAX_NAME}, as it "
                             "names the run folder; choose a shorter --name")
        return value


class CellSpec(_SpecBase):
    """One cell: everything it trains and evaluates, presets applied. ``model`` is the whole ``ModelConfig`` the
    cell builds (before AdS; the data set's channels and classes included), ``train`` its ``TrainConfig``.

    Round trip: ``CellSpec.model_validate_json(cell.model_dump_json()) == cell``.
    """


class ExperimentSpec(_SpecBase):
    """A resolved experiment: the base settings and the grid of cells that vary them.

    ``model`` and ``train`` are the settings before the grid varies them (``model`` for ``data``'s data set).
    ``paper_d_state``: the TOML's ``d_state = "paper"``: each cell takes the paper's d_state for its layer
    (``model.d_state`` is then the preset's own). ``executor`` is the TOML's ``[executor]`` table: where a
    sweep's cells run (no part of any cell).
    """

    grid: GridSpec = GridSpec()
    paper_d_state: bool = False
    executor: ExecutorSpec = ExecutorSpec()
    _cells: list | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        """Equal settings: the cells a spec has cached once asked are not a setting (pydantic would compare them)."""
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # mutable, as pydantic models are

    @classmethod
    def _prepare(cls, raw: dict) -> dict:
        model = raw.get("model")
        if isinstance(model, dict) and model.get("d_state") == PAPER_D_STATE:
            preset = raw.get("preset", "none")
            if preset not in PRESETS:
                raise ValueError(f'invalid model.d_state "{PAPER_D_STATE}": it needs one of the paper presets '
                                 f"({', '.join(PRESETS)}); give a number instead")
            raw["model"], raw["paper_d_state"] = {**model, "d_state": _paper_d_state(preset)}, True
        return super()._prepare(raw)

    def cells(self) -> list:
        """Every combination of the grid as a validated ``CellSpec``, in a fixed order (cached)."""
        if self._cells is None:
            self._cells = [_make_cell(self, values) for values in self._combinations()]
            names = [c.name for c in self._cells]
            if len(set(names)) != len(names):
                raise ConfigError(f"two cells share a name: {names}")
        return list(self._cells)

    def _combinations(self) -> list[dict[str, str]]:
        axes = self.grid.axes()
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]

    def to_toml(self) -> str:
        """TOML text that ``resolve_experiment`` reads back to an equal spec (None written as ``"none"``).

        A setting a grid axis varies is written only in ``[grid]``."""
        data = self.model_dump()
        data["grid"] = {k: v for k, v in data["grid"].items() if v is not None}
        for axis in data["grid"]:
            section, key = GRID_AXES[axis]
            (data[section] if section else data).pop(key)
        for key in FROM_DATA:  # the data set's, not a setting
            data["model"].pop(key)
        if data.pop("paper_d_state"):
            data["model"]["d_state"] = PAPER_D_STATE
        data["train"]["init_from"] = data.pop("init_from")
        for section in SECTIONS:
            data[section] = {k: ("none" if v is None else v) for k, v in data[section].items()}
        track = self.track.model_dump(exclude_defaults=True)  # [track] only where it was given
        data.pop("track")
        if track:
            data["track"] = track
        executor = self.executor.model_dump(exclude_defaults=True)  # [executor] only where it was given
        data.pop("executor")
        if executor:
            data["executor"] = executor
        return tomli_w.dumps({key: data[key] for key in TOML_KEYS if key in data})

    def to_dict(self) -> dict[str, Any]:
        """The spec as TOML writes it (for ``--dry-run --json``)."""
        return tomllib.loads(self.to_toml())


def _make_cell(spec, values: dict[str, str]):
    """The cell of ``spec`` at the grid point ``values``, with d_state = "paper" and select_by = "auto" decided."""
    data = spec.data.model_dump()
    model = spec.model.to_dict()
    train = spec.train.to_dict()
    ads = spec.ads
    for axis, value in values.items():
        section, key = GRID_AXES[axis]
        if axis == "ads":
            ads = value
        else:  # a patch_size axis writes "none" (pixels as tokens), as TOML has no null
            value = None if axis == "patch_size" and value == "none" else value
            {"data": data, "model": model, "train": train}[section][key] = value
    name = "-".join(axis_label(axis, value) for axis, value in values.items()) or "cell"
    where = f" (cell {name})" if values else ""
    if spec.paper_d_state and model["layer"] in LAYERS:  # an unknown layer is named by the cell's ModelConfig
        model["d_state"] = _paper_d_state(spec.preset, model["layer"])
    model.update(zip(FROM_DATA, model_io(data["dataset"], data["tiny_classes"])))  # the cell's data set's
    train["select_by"] = decide_select_by(train["select_by"], train["method"])
    raw = {"name": name, "preset": spec.preset, "ads": ads, "init_from": spec.init_from, "data": data,
           "model": model, "train": train, "eval": spec.eval.model_dump(), "track": spec.track.model_dump()}
    cell = _validated(CellSpec, raw, where)
    _check_cell(cell, where)
    return cell


def _check_cell(cell, where: str) -> None:
    """What the configs cannot see alone: the rules of the layer and the output transform (by building the model),
    and the device."""
    _check_buildable(cell.model.to_json(), cell.ads)
    if cell.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {cell.train.device!r}{where} but CUDA is not available here; "
                          "use --device cpu (or auto)")


def validate_cell(raw, source: str):
    """A ``CellSpec`` read back from ``source`` (a checkpoint's metadata, a cell.json), checked as ``run`` checks
    its flags: types and unknown keys, value ranges, the method's and the model's rules (the device is not
    checked: a checkpoint trained on a GPU is evaluated anywhere). Raises ConfigError in one line naming
    ``source``: a file edited by hand or damaged is never trusted (a stored eps of 5 would be evaluated at 5).

    Example:
        >>> validate_cell({"train": {"eps": 5}}, "x.safetensors")  # doctest: +SKIP
        ConfigError: the cell spec stored in x.safetensors is invalid: invalid setting: train.eps must be in (0, 1] ...
    """
    where = f"the cell spec stored in {source}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not a table ({type(raw).__name__}); the file is damaged or not ours")
    try:
        return _validated(CellSpec, raw)
    except ConfigError as exc:
        raise ConfigError(f"{where} is invalid: {exc}; the file was edited or damaged") from None


# bytes per weight while training: the fp32 weight, its gradient and AdamW's two moments
TRAINING_BYTES_PER_WEIGHT = 16


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, where: str = "") -> None:
    """Refuse ``need`` bytes (for ``what``) that exceed this machine's memory, before anything is allocated."""
    memory = machine_memory()
    if memory is not None and need > memory:
        raise ConfigError(f"the model{where} needs at least {need / 2**30:.1f} GiB for {what}, more than this "
                          f"machine's {memory / 2**30:.1f} GiB: lower model.n_layers, model.d_model or model.d_state"
                          + (" (or train.batch_size)" if "activations" in what else ""))


@cache
def _check_buildable(config_json: str, ads: str) -> None:
    """Size the model without allocating (parameters, gradients and AdamW state must fit this machine's memory),
    then build it once on the CPU (layer options, transform options, head counts ...), RNG untouched. Every block
    is built alike, so two blocks check what all of them would: 10000 layers validate as fast as 2."""
    try:
        config = ModelConfig.from_json(config_json)
        check_memory(state_numel(config) * TRAINING_BYTES_PER_WEIGHT, "its weights, gradients and AdamW state",
                     f" ({config.n_layers} layers of d_model {config.d_model}, d_state {config.d_state})")
        values = config.to_dict()
        if config.n_layers > 2:
            values["n_layers"] = 2
            if values.get("transform_layers") is not None:
                values["transform_layers"] = [i for i in values["transform_layers"] if int(i) < 2]
        with torch.random.fork_rng(devices=[]):
            model = build_model(ModelConfig.from_dict(values))
            if ads != "none":
                attach_ads(model, activation=ads)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"invalid model settings: {_rename(str(exc))}") from exc


def _rename(text: str) -> str:
    """Name a key as the TOML and --set write it (train.eps), not as the dataclass does (TrainConfig.eps)."""
    return " ".join(text.replace("TrainConfig.", "train.").replace("ModelConfig.", "model.").split())


_WORDS = {"bool": "true or false", "int": "an int", "float": "a number", "str": "a string", "list": "a list",
          "dict": "a table", "literal": "one of"}


def _validated(cls, raw: dict, where: str = ""):
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, cls, where) from None


def _known_keys(section: str, cls) -> list[str]:
    if section in SECTIONS:
        return _section_keys(section)
    field = cls.model_fields.get(section)
    if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
        return list(cls.model_fields)
    return list(field.annotation.model_fields)


def _config_error(exc: ValidationError, cls, where: str) -> ConfigError:
    """pydantic's first error as one line that names the key as the TOML writes it, and the fix."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"] if not isinstance(part, int)]
    # a union reports each member ("int", "literal['paper']"): name the setting, not the member
    loc = [part for part in loc if not (part in _WORDS or part.startswith(("literal[", "list[", "function-")))]
    key = ".".join(loc)
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else ""
        known = _known_keys(section, cls) if section else list(cls.model_fields)
        hint = _suggest(loc[-1], known, f"{section}." if section else "")
        if not hint:
            hint = _elsewhere(loc[-1], section) or f"; known keys: {', '.join(sorted(known))}"
        return ConfigError(f"unknown key {key!r}{where}{hint}")
    if kind == "value_error":
        text = _rename(str(err["ctx"]["error"]))
        if text.startswith(("invalid ", "unknown ")):  # written by a check that names its key (a library config's)
            return ConfigError(text + where)
        return ConfigError(f"invalid {key}{where}: {text}")
    optional = _is_optional(cls, loc)
    if kind in ("greater_than_equal", "greater_than"):
        bound = err["ctx"].get("ge", err["ctx"].get("gt"))
        need = f"an int >= {bound}" if kind == "greater_than_equal" else f"> {bound}"
    elif kind == "too_short":
        need = "a non-empty list"
    elif kind == "literal_error":
        need = f"one of {err['ctx']['expected']}"
    else:
        need = next((words for name, words in _WORDS.items() if kind.startswith(name)), err["msg"])
    if optional and kind.endswith(("_type", "_parsing")):
        need += ' (or "none")'
    prefix = "invalid setting: " if loc and loc[0] in ("train", "model") else "invalid "
    if prefix == "invalid setting: ":
        return ConfigError(f"{prefix}{key}{where} must be {need}, got {value!r}")
    return ConfigError(f"{prefix}{key} {value!r}{where}: must be {need}")


def _is_optional(cls, loc: list[str]) -> bool:
    model = cls
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    field = model.model_fields.get(loc[-1]) if loc else None
    return field is not None and type(None) in typing.get_args(field.annotation)


def _elsewhere(key: str, section: str) -> str:
    """``[model] epochs`` -> "; it belongs in [train] (train.epochs)"."""
    for other in SECTIONS:
        if other != section and key in _section_keys(other):
            return f"; it belongs in [{other}] ({other}.{key})"
    return ""


# -- resolving ---------------------------------------------------------------------------------------

@cache
def _optional_fields(section: str) -> frozenset[str]:
    """Fields that may be None: the ones written as "none" in TOML (which has no null)."""
    if section in ("model", "train"):
        hints = typing.get_type_hints({"model": ModelConfig, "train": TrainConfig}[section])
        optional = {name for name, hint in hints.items() if type(None) in typing.get_args(hint)}
        return frozenset(optional | (set(CLI_TRAIN_KEYS) if section == "train" else set()))
    model = {"data": DataSpec, "eval": EvalSpec}[section]
    return frozenset(name for name, f in model.model_fields.items() if type(None) in typing.get_args(f.annotation))


def _preset_base(name: str) -> dict[str, Any]:
    """The plain dict the TOML layers onto: the demo's settings, or a paper preset's."""
    if name == "none":
        model = ModelConfig(**DEMO["model"]).to_dict()
        train = TrainConfig(**DEMO["train"]).to_dict()
        base = {"name": "run", "data": {}, "eval": dict(DEMO["eval"])}
    elif name in PRESETS:
        preset = PRESETS[name]
        model = model_preset(preset.model).to_dict()
        model["d_state"] = PAPER_D_STATE  # decided per cell, once the layer is known
        train = TrainConfig.for_dataset(preset.dataset).to_dict()
        base = {"name": name, "data": {"dataset": preset.dataset}, "eval": {}}
    else:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)} (choose one of {', '.join(PRESETS)})")
    for key in FROM_DATA:
        model.pop(key)
    return {**base, "preset": name, "ads": "none", "grid": {"method": ["standard", "pgd-at"]},
            "model": model, "train": {**train, "init_from": None}}


def resolve_experiment(raw: dict, overrides: dict[str, Any] | None = None):
    """The validated ``ExperimentSpec`` of the TOML-shaped ``raw`` over its preset, then dotted ``overrides``
    such as ``{"train.epochs": 5}``. Every cell is built and checked here, before anything trains.

    Raises:
        ConfigError: naming the first unknown key (with a close match) or invalid value, in one line.
    """
    raw, overrides = dict(raw), dict(overrides or {})
    preset = overrides.pop("preset", None) or raw.get("preset") or "none"
    merged = _preset_base(preset)
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key!r} must be a table ([{key}]), got {value!r}")
            if key == "model" and set(FROM_DATA) & set(value):
                raise ConfigError(f"model.{sorted(set(FROM_DATA) & set(value))[0]} is set by the data set; remove it")
            merged[key].update(_decode_none(key, value))
        elif key == "grid":
            if not isinstance(value, dict):
                raise ConfigError(f"'grid' must be a table ([grid]), got {value!r}")
            merged["grid"] = dict(value)
        elif key in TOML_KEYS:
            merged[key] = value
        else:
            raise ConfigError(f"unknown key {key!r}" + (_suggest(key, TOML_KEYS) or _elsewhere(key, "")
                                                         or f"; known keys: {', '.join(TOML_KEYS)}"))
    _settings_under_axes(raw, merged)
    for dotted, value in overrides.items():
        _apply(merged, dotted, value)
    spec = _validated(ExperimentSpec, merged)
    spec.cells()  # builds and validates every cell now, not an hour into the sweep
    return spec


def _settings_under_axes(raw: dict, merged: dict) -> None:
    """A setting that a grid axis also varies: from the file's [grid] it is an error (it would be ignored);
    against the preset's default grid, the setting replaces that axis."""
    for axis, (section, key) in GRID_AXES.items():
        given = (raw.get(section) or {}) if section else raw
        if not isinstance(given, dict) or key not in given:
            continue
        where = f"{section}.{key}" if section else key
        if axis in (raw.get("grid") or {}):
            raise ConfigError(f"{where} = {given[key]!r} would be ignored: [grid] {axis} = {raw['grid'][axis]!r} "
                              f"sets it for each cell; list the value there and remove {where}")
        if axis in merged["grid"]:
            merged["grid"][axis] = [given[key]]


def _decode_none(section: str, values: dict) -> dict:
    optional = _optional_fields(section)
    return {k: (None if v == "none" and k in optional else v) for k, v in values.items()}


def _apply(merged: dict, dotted: str, value) -> None:
    section, _, key = dotted.rpartition(".")
    axis_of = {setting: axis for axis, setting in GRID_AXES.items()}
    if (section, key) in axis_of and axis_of[(section, key)] in merged["grid"]:
        # a flag such as --model s6 must win over the file's [grid] layer list, not be hidden by it
        merged["grid"][axis_of[(section, key)]] = [value]
    if section in SECTIONS:
        if section == "model" and key in FROM_DATA:
            raise ConfigError(f"model.{key} is set by the data set; remove it")
        merged[section][key] = None if value == "none" and key in _optional_fields(section) else value
    elif section == "grid":
        merged["grid"][key] = value
    elif section == "" and key in ("name", "ads"):
        merged[key] = value
    elif section == "track":  # validated with the spec (TrackSpec)
        merged["track"] = {**(merged.get("track") or {}), key: value}
    else:
        known = ["name", "ads"] + [f"{s}.{k}" for s in SECTIONS for k in merged[s]] + [f"grid.{a}" for a in GRID_AXES]
        raise ConfigError(f"unknown setting {dotted!r}{_suggest(dotted, known)}")


def load_toml(path) -> dict:
    """Read a TOML file into a dict; a syntax error becomes a ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # a binary file, or text in another encoding
        raise ConfigError(f"{path} is not a TOML file: byte {exc.start} is not UTF-8 text (a binary file?); "
                          "give the experiment's .toml file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``--set train.aa_n=8`` -> ("train.aa_n", 8): the value is read as TOML (strings may be bare)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=5), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


__all__ = ["ExperimentSpec", "CellSpec", "Preset", "DataSpec", "EvalSpec", "GridSpec", "TrackSpec", "TRACKERS",
           "resolve_experiment", "load_toml",
           "parse_assignment", "validate_cell", "DEMO", "PRESETS", "ADS_CHOICES", "GRID_AXES"]
