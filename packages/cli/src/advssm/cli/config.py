"""RunConfig: everything one ``advssm run`` / ``advssm sweep`` needs, resolved and validated once.

Layers, lowest first: the built-in defaults (a small S4D on the bundled digits) or a preset
(``paper-mnist``, ``paper-cifar10``, ``paper-tinyimagenet``), then a TOML file, then flags.
The TOML has top-level ``name``, ``preset``, ``ads`` and the tables ``[grid]`` (lists of values;
each combination is one cell), ``[data]``, ``[model]`` (``ModelConfig`` fields) and ``[train]``
(``TrainConfig`` fields). TOML has no null, so optional settings are written as ``"none"``.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published for older Pythons
    import tomli as tomllib

from .data import DATASETS
from .errors import ConfigError

ADS_CHOICES = ("none", "relu", "sigmoid", "tanh")
# grid axis -> the setting it varies, in the order cell names list them
GRID_AXES = {"dataset": "data.dataset", "layer": "model.layer", "method": "train.method", "ads": "ads"}
FROM_DATA = ("d_input", "n_classes")  # ModelConfig fields the data set decides


@dataclass
class DataSettings:
    """Which data set and how much of it.

    Attributes:
        dataset: one of ``advssm.cli.data.DATASETS``.
        data_dir: folder with the data set's standard files.
        train_size, test_size: keep the first this many examples (None = all).
        download: fetch MNIST / CIFAR-10 with torchvision first.
        tiny_classes: Tiny-ImageNet classes kept (the paper: 50).
        augment: crop + flip during training; None = as the paper (CIFAR-10 and Tiny-ImageNet only).
    """

    dataset: str = "digits"
    data_dir: str = "data"
    train_size: int | None = None
    test_size: int | None = None
    download: bool = False
    tiny_classes: int = 50
    augment: bool | None = None


@dataclass
class EvalSettings:
    """The final AutoAttack of the best and last checkpoints, filling the AA accuracies the trainer left empty.

    Attributes:
        aa: run it (the paper reports AA for both checkpoints; the trainer runs AA only every k epochs).
        aa_n: attack the first this many test examples (the paper: 2000).
        aa_version: "standard" (APGD-CE, APGD-T, FAB-T, Square at their full budgets) or "custom".
        aa_attacks: for "custom", names among apgd-ce, apgd-dlr, apgd-t, fab-t, square, run in order.
        aa_steps: for "custom", iterations of APGD / FAB (Square gets 50x as many queries).
        train_n: after every epoch, clean and PGD accuracy of the first this many training examples
            (un-augmented, measured as the test set is) for the train curves of the plots; 0 = off.
    """

    aa: bool = True
    aa_n: int = 2000
    aa_version: str = "standard"
    aa_attacks: list[str] = field(default_factory=lambda: ["apgd-ce", "apgd-t", "fab-t", "square"])
    aa_steps: int = 100
    train_n: int = 256


def _train_config():
    from advssm.adv_train.config import TrainConfig

    return TrainConfig


def _model_config():
    from advssm.ssm_layers import ModelConfig

    return ModelConfig


# Defaults of the no-argument run: tuned so both cells finish in about a minute on 2 CPU cores (see README).
DEMO = {
    "model": {"layer": "s4d", "d_model": 32, "d_state": 16, "n_layers": 2},
    # 15 epochs of batch 32 at lr 1e-2: an S4D on 64 pixel tokens sits at chance for ~5 epochs of batch 64 at
    # 3e-3 before it learns; these settings get past that plateau (ST ~95 % clean) in about a minute on 2 cores
    "train": {"epochs": 15, "batch_size": 32, "lr": 1e-2, "eps": 0.1, "alpha": 0.025, "attack_steps": 5,
              "eval_pgd_steps": 10, "aa_every": 0, "aa_n": 200, "seed": 0},
    # a reduced AutoAttack (two APGD losses, 25 steps) so the demo stays within minutes; reported as such
    "eval": {"aa_n": 200, "aa_version": "custom", "aa_attacks": ["apgd-ce", "apgd-dlr"], "aa_steps": 25},
}
PAPER_D_STATE = "paper"  # [model] d_state of the paper presets: the paper's value for each cell's layer
PRESETS = {
    "paper-mnist": {"data": {"dataset": "mnist"}, "model_preset": "mnist", "train_dataset": "mnist"},
    "paper-cifar10": {"data": {"dataset": "cifar10"}, "model_preset": "cifar10", "train_dataset": "cifar10"},
    "paper-tinyimagenet": {"data": {"dataset": "tinyimagenet", "tiny_classes": 50}, "model_preset": "tinyimagenet",
                           "train_dataset": "tinyimagenet"},
}


@dataclass
class RunConfig:
    """A resolved experiment: the base settings and the grid of cells that vary them."""

    name: str = "run"
    preset: str = "none"
    ads: str = "none"
    grid: dict[str, list] = field(default_factory=lambda: {"method": ["standard", "pgd-at"]})
    data: DataSettings = field(default_factory=DataSettings)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "preset": self.preset, "ads": self.ads, "grid": dict(self.grid),
                "data": dataclasses.asdict(self.data), "model": dict(self.model), "train": dict(self.train),
                "eval": dataclasses.asdict(self.eval)}

    def to_toml(self) -> str:
        """TOML text that ``load_toml`` reads back to an equal config (None written as ``"none"``)."""
        def encode(section: str, values: dict) -> dict:
            return {k: ("none" if v is None and k in _optional(section) else v) for k, v in values.items()}

        data = self.to_dict()
        for section in ("data", "model", "train", "eval"):
            data[section] = encode(section, data[section])
        return tomli_w.dumps(data)

    def cells(self) -> list[tuple[str, RunConfig]]:
        """Every combination of the grid as (cell name, single-cell config), in a fixed order."""
        axes = [axis for axis in GRID_AXES if axis in self.grid]
        result = []
        for values in itertools.product(*(self.grid[axis] for axis in axes)):
            cell = resolve({}, base=self, overrides={GRID_AXES[a]: v for a, v in zip(axes, values)})
            cell.grid = {}
            result.append(("-".join(str(v) for v in values) or "cell", cell))
        return result

    def model_config(self, d_input: int, n_classes: int):
        """The ``ModelConfig`` of a single cell, completed by the data set's channels and classes."""
        return _model_config().from_dict({**self.model_values(), "d_input": d_input, "n_classes": n_classes})

    def model_values(self, layer: str | None = None) -> dict[str, Any]:
        """The [model] settings for ``layer`` (default: the configured one), with d_state = "paper" replaced by
        the paper's state size for that layer and data set (Mega 16 everywhere, S6 16 on CIFAR-10)."""
        values = {**self.model, "layer": layer or self.model.get("layer")}
        if values.get("d_state") == PAPER_D_STATE:
            if self.preset not in PRESETS:
                raise ConfigError(f'model.d_state = "{PAPER_D_STATE}" needs one of the paper presets '
                                  f"({', '.join(PRESETS)}); give a number instead")
            from advssm.ssm_layers import preset as model_preset

            values["d_state"] = model_preset(PRESETS[self.preset]["model_preset"], layer=values["layer"]).d_state
        return values

    def train_config(self):
        """The ``TrainConfig`` of a single cell."""
        return _train_config().from_dict(self.train)


def _suggest(key: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"


def _check_keys(values: dict, known, where: str) -> None:
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key {where + key!r}{_suggest(key, known, where)}")


def _decode_none(section: str, values: dict) -> dict:
    return {k: (None if v == "none" and k in _optional(section) else v) for k, v in values.items()}


def _optional(section: str) -> set[str]:
    """Fields that default to None: the ones written as "none" in TOML (which has no null)."""
    cls = {"data": DataSettings, "model": _model_config(), "train": _train_config(), "eval": EvalSettings}[section]
    return {f.name for f in dataclasses.fields(cls) if f.default is None}


def _preset_base(name: str) -> RunConfig:
    if name == "none":
        model = _model_config()(**DEMO["model"]).to_dict()
        for key in FROM_DATA:
            model.pop(key)
        train = _train_config()(**DEMO["train"]).to_dict()
        return RunConfig(model=model, train=train, eval=EvalSettings(**DEMO["eval"]))
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)} (choose one of {', '.join(PRESETS)})")
    spec = PRESETS[name]
    from advssm.ssm_layers import preset as model_preset

    model = model_preset(spec["model_preset"]).to_dict()
    model["d_state"] = PAPER_D_STATE  # decided per cell, once the layer is known
    for key in FROM_DATA:
        model.pop(key)
    train = _train_config().for_dataset(spec["train_dataset"]).to_dict()
    return RunConfig(name=name, preset=name, data=DataSettings(**spec["data"]), model=model, train=train)


def resolve(values: dict, base: RunConfig | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build a validated RunConfig: ``base`` (else the preset named in ``values`` or the defaults), then the
    nested TOML-shaped ``values``, then dotted ``overrides`` such as ``{"train.epochs": 5}``.

    Raises:
        ConfigError: naming the first unknown key (with a close match) or invalid value.
    """
    values = dict(values)
    overrides = dict(overrides or {})
    preset_name = overrides.pop("preset", None) or values.get("preset") or (base.preset if base else "none")
    if base is None or preset_name != base.preset:
        base = _preset_base(preset_name)
    top_known = {"name", "preset", "ads", "grid", "data", "model", "train", "eval"}
    _check_keys(values, top_known, "")
    merged = base.to_dict()
    merged["preset"] = preset_name
    for key in ("name", "ads"):
        merged[key] = values.get(key, merged[key])
    if "grid" in values:
        merged["grid"] = dict(values["grid"])
    sections = {"data": {f.name for f in dataclasses.fields(DataSettings)},
                "model": {f.name for f in dataclasses.fields(_model_config())} - set(FROM_DATA),
                "train": {f.name for f in dataclasses.fields(_train_config())},
                "eval": {f.name for f in dataclasses.fields(EvalSettings)}}
    for section, known in sections.items():
        given = values.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{section!r} must be a table ([{section}]), got {given!r}")
        if section == "model" and set(FROM_DATA) & set(given):
            raise ConfigError(f"model.{sorted(set(FROM_DATA) & set(given))[0]} is set by the data set; remove it")
        _check_keys(given, known, f"{section}.")
        merged[section].update(_decode_none(section, given))
    axis_of = {setting: axis for axis, setting in GRID_AXES.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.rpartition(".")
        if dotted in axis_of and axis_of[dotted] in merged["grid"]:
            # a flag such as --model s6 must win over the file's [grid] layer list, not be hidden by it
            merged["grid"][axis_of[dotted]] = [value]
        if section in sections:
            _check_keys({key: value}, sections[section], f"{section}.")
            merged[section][key] = value
        elif section == "grid":
            merged["grid"][key] = value
        elif section == "" and key in ("name", "ads"):
            merged[key] = value
        else:
            raise ConfigError(f"unknown setting {dotted!r}{_suggest(dotted, _all_keys(sections))}")
    return _validate(merged)


def _all_keys(sections: dict) -> list[str]:
    return ["name", "ads"] + [f"{s}.{k}" for s, keys in sections.items() for k in keys] + \
        [f"grid.{a}" for a in GRID_AXES]


def _validate(merged: dict) -> RunConfig:
    if merged["ads"] not in ADS_CHOICES:
        raise ConfigError(f"invalid ads {merged['ads']!r}; choose one of {', '.join(ADS_CHOICES)}")
    grid = merged["grid"]
    _check_keys(grid, GRID_AXES, "grid.")
    for axis, options in grid.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"grid.{axis} must be a non-empty list, got {options!r}")
        if len(set(map(str, options))) != len(options):
            raise ConfigError(f"grid.{axis} lists a value twice: {options!r}")
    _check_types("data", merged["data"], DATA_TYPES)
    _check_types("eval", merged["eval"], EVAL_TYPES)
    data, final = DataSettings(**merged["data"]), EvalSettings(**merged["eval"])
    if final.aa_version not in ("standard", "custom"):
        raise ConfigError(f"invalid eval.aa_version {final.aa_version!r}; choose 'standard' or 'custom'")
    from advssm.adv_train.attacks import ATTACK_NAMES

    bad = [a for a in final.aa_attacks if a not in ATTACK_NAMES] if isinstance(final.aa_attacks, list) else [None]
    if bad or not final.aa_attacks:
        raise ConfigError(f"invalid eval.aa_attacks {final.aa_attacks!r}: a non-empty list of "
                          f"{', '.join(ATTACK_NAMES)}")
    for section, name, low in (("eval", "aa_n", 1), ("eval", "aa_steps", 1), ("eval", "train_n", 0),
                               ("data", "tiny_classes", 1)):
        value = getattr(final if section == "eval" else data, name)
        if value < low:
            raise ConfigError(f"invalid {section}.{name} {value!r}: must be an int >= {low}")
    for axis, choices in (("dataset", DATASETS), ("ads", ADS_CHOICES)):
        for option in grid.get(axis, []) + ([data.dataset] if axis == "dataset" else [merged["ads"]]):
            if option not in choices:
                raise ConfigError(f"invalid {axis} {option!r}{_suggest(str(option), choices)} "
                                  f"(choose one of {', '.join(choices)})")
    for name in ("train_size", "test_size"):
        size = getattr(data, name)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ConfigError(f"invalid data.{name} {size!r}: must be a positive int (or \"none\" for all)")
    config = RunConfig(name=str(merged["name"]), preset=merged["preset"], ads=merged["ads"], grid=grid, data=data,
                       model=merged["model"], train=merged["train"], eval=final)
    # validate every cell's model and training settings now, not an hour into the run
    try:
        checks = [config.model_values(layer) for layer in grid.get("layer", [config.model.get("layer")])]
        for model in checks:
            _model_config().from_dict({**model, "d_input": 1, "n_classes": 10})
        for method in grid.get("method", [config.train.get("method")]):
            _train_config().from_dict({**config.train, "method": method})
    except (ValueError, TypeError) as exc:
        # name the key as the TOML and --set write it (train.eps), not as the dataclass does (TrainConfig.eps)
        text = str(exc).replace("TrainConfig.", "train.").replace("ModelConfig.", "model.")
        raise ConfigError(f"invalid setting: {text}") from exc
    return config


# the types of the CLI's own settings ("optional" ones may also be None); dataset and the aa_* names have
# their own checks with the list of choices
DATA_TYPES = {"data_dir": str, "train_size": "optional int", "test_size": "optional int", "download": bool,
              "tiny_classes": int, "augment": "optional bool"}
EVAL_TYPES = {"aa": bool, "aa_n": int, "aa_steps": int, "train_n": int}
_TYPE_WORDS = {int: "an int", bool: "true or false", str: "a string"}


def _check_types(section: str, values: dict, types: dict) -> None:
    for key, kind in types.items():
        value = values[key]
        optional = isinstance(kind, str)
        expected = {"optional int": int, "optional bool": bool}.get(kind, kind)
        if optional and value is None:
            continue
        # bool is an int subclass in Python: true must not pass for a size
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            words = _TYPE_WORDS[expected] + (' (or "none")' if optional else "")
            raise ConfigError(f"invalid {section}.{key} {value!r}: must be {words}")


def load_toml(path: str | Path) -> dict:
    """Read a TOML file into a dict; a syntax error becomes a ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


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
