"""A study's space: fixed settings, then either a search space or named arms with seeds.

Setting names are the training options' own field names (``TrainConfig`` and
``PreprocessConfig``: ``lr``, ``use_sex``, ``freeze``, ``rotation``, ``aug_gamma``, ...; the
image size also as ``image_size``, its flag's name), so an option is declared once and
checked by its own declaration. The YAML format (``--space FILE.yaml``)::

    task: boneage                 # or sex (default boneage)
    description: one line for the report
    base:                         # fixed settings for every trial
      arch: efficientnet_lite0
      image_size: 128
      epochs: 14
    params:                       # a search (Optuna's sampler proposes values) ...
      lr: {type: float, low: 1e-4, high: 3e-3, log: true}
      freeze: {type: int, low: 0, high: 6, step: 2}
      batch_size: {type: categorical, choices: [16, 32, 64]}
    # ... or instead of params, a grid of arms (each arm x seed is one trial):
    arms:
      with-sex: {use_sex: true}
      without-sex: {use_sex: false}
    reference: with-sex           # the arm the others are compared with (default: the first)
    seeds: [0, 1]                 # default [0]
    holdout_tta_views: 0          # arm trials: augmented views added to the mirror on held-out
    pruning: {startup_trials: 2, warmup_epochs: 1}   # median pruning: finished trials before it
                                  # prunes, and epochs a trial runs before it can be pruned

An unknown key, a wrong type or a value outside an option's range is one ``SpaceError``
whose message names the key (``arms.with-sex.use_sex: ...``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from h2a import TASKS
from h2a.data.preprocess import PreprocessConfig
from h2a.engine.config import TrainConfig, TrainingError
from h2a.options import declarations
from h2a.settings import get_settings

TOP_KEYS = ("task", "description", "base", "params", "arms", "reference", "seeds", "holdout_tta_views", "pruning",
            "clusters")
PRUNING_KEYS = {"startup_trials": 2, "warmup_epochs": 1}  # median pruner: trials before it acts, epochs it waits
PARAM_TYPES = ("float", "int", "categorical")
ALIASES = {"image_size": "size"}  # the flag's name (--image-size) for PreprocessConfig.size
NOT_SETTINGS = ("data", "out", "preprocess", "task")  # given by the study, not by the space


class SpaceError(ValueError):
    """A space that cannot be used; the message names the key."""


@dataclass
class Param:
    """One searched setting: a float/int range (optionally log or stepped) or categorical choices."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    def suggest(self, trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Space:
    """A parsed space; ``kind`` is 'search', 'arms' or 'clusters'."""

    task: str = "boneage"
    description: str = ""
    base: dict = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    arms: dict[str, dict] = field(default_factory=dict)
    reference: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    holdout_tta_views: int = 0
    pruning: dict = field(default_factory=lambda: dict(PRUNING_KEYS))
    clusters: dict | None = None

    @property
    def kind(self) -> str:
        if self.clusters is not None:
            return "clusters"
        return "arms" if self.arms else "search"

    def grid(self) -> list[tuple[str, int]]:
        """Every (arm, seed) pair, arms in their declared order."""
        return [(arm, seed) for arm in self.arms for seed in self.seeds]

    def reference_arm(self) -> str | None:
        return self.reference or next(iter(self.arms), None)

    def to_raw(self) -> dict:
        """The YAML-shaped mapping ``parse_space`` reads back (kept in the study's storage)."""
        raw: dict = {"task": self.task, "description": self.description, "base": dict(self.base),
                     "seeds": list(self.seeds), "holdout_tta_views": self.holdout_tta_views,
                     "pruning": dict(self.pruning)}
        if self.clusters is not None:
            raw["clusters"] = dict(self.clusters)
        elif self.arms:
            raw["arms"] = {k: dict(v) for k, v in self.arms.items()}
            if self.reference:
                raw["reference"] = self.reference
        else:
            raw["params"] = {k: {kk: vv for kk, vv in asdict(p).items() if vv is not None and vv is not False}
                             for k, p in self.params.items()}
        return raw


# -- the settings a space may name ---------------------------------------------------------
def _declared() -> dict[str, tuple[str, Any]]:
    """setting name -> ('train' | 'preprocess', its Declared)."""
    out = {d.name: ("preprocess", d) for d in declarations(PreprocessConfig)}
    out.update({d.name: ("train", d) for d in declarations(TrainConfig) if d.name not in NOT_SETTINGS})
    return out


def setting_names() -> list[str]:
    return sorted(set(_declared()) | set(ALIASES))


def canonical(name: str, where: str) -> str:
    """The field name for ``name`` (an alias resolved), or a SpaceError naming ``where``."""
    name = ALIASES.get(name, name)
    if name not in _declared():
        raise SpaceError(f"{where}: unknown setting {name!r} (settings are the training options, e.g. lr, "
                         f"batch_size, use_sex, freeze, image_size, rotation; see `h2a train --help`)")
    return name


def check_value(name: str, value: Any, where: str) -> Any:
    """``value`` coerced to the option's type (YAML reads 1e-4 as text) and checked by its declaration."""
    _, decl = _declared()[name]
    if decl.type is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if decl.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    msg = decl.check(value)
    if msg:
        raise SpaceError(f"{where}: {msg}")
    return value


def check_settings(settings: Any, where: str) -> dict:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise SpaceError(f"{where}: must be a mapping of settings, got {settings!r}")
    out = {}
    for key, value in settings.items():
        name = canonical(str(key), f"{where}.{key}")
        out[name] = check_value(name, value, f"{where}.{key}")
    return out


def split_settings(settings: dict) -> tuple[dict, dict]:
    """(TrainConfig values, PreprocessConfig values) of canonical settings."""
    decl = _declared()
    train = {k: v for k, v in settings.items() if decl[k][0] == "train"}
    pre = {k: v for k, v in settings.items() if decl[k][0] == "preprocess"}
    return train, pre


# -- parsing -----------------------------------------------------------------------------
def _number(value: Any, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SpaceError(f"{where}: must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out):
        raise SpaceError(f"{where}: must be a number, got {value!r}")
    return out


def parse_param(name: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):  # shorthand: a list is categorical choices
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: must be a mapping like {{type: float, low: 1e-4, high: 1e-2}}, got {spec!r}")
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
        raise SpaceError(f"{where}.{min(unknown)}: unknown key (use type, low, high, log, step, choices)")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in PARAM_TYPES:
        raise SpaceError(f"{where}.type: must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}.choices: must be a non-empty list, got {choices!r}")
        return Param("categorical", choices=[check_value(name, c, f"{where}.choices") for c in choices])
    for key in ("low", "high"):
        if key not in spec:
            raise SpaceError(f"{where}.{key}: missing (a {kind} range needs low and high)")
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    if not low <= high:
        raise SpaceError(f"{where}: low ({low:g}) must not exceed high ({high:g})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}.log: must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}.low: a log range must start above 0, got {low:g}")
    step = _number(spec["step"], f"{where}.step") if spec.get("step") is not None else None
    if kind == "int":
        if low != int(low) or high != int(high):
            raise SpaceError(f"{where}: an int range needs whole numbers, got {low:g}..{high:g}")
        low, high = int(low), int(high)
    for bound, key in ((low, "low"), (high, "high")):
        check_value(name, bound, f"{where}.{key}")
    return Param(kind, low=low, high=high, log=log, step=step)


def parse_space(raw: Any, source: str = "space") -> Space:
    """A Space from a parsed YAML/dict; SpaceError naming the first bad key."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: must be a mapping with base and params or arms, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            raise SpaceError(f"{source}: unknown key {key!r} (allowed: {', '.join(TOP_KEYS)})")
    task = raw.get("task", "boneage")
    if task not in TASKS:
        raise SpaceError(f"{source}: task must be one of {', '.join(TASKS)}, got {task!r}")
    space = Space(task=task, description=str(raw.get("description", "") or ""),
                  base=check_settings(raw.get("base"), "base"))
    params, arms = raw.get("params"), raw.get("arms")
    if raw.get("clusters") is not None:
        if not isinstance(raw["clusters"], dict):
            raise SpaceError(f"{source}: clusters must be a mapping (e.g. {{k: 2}})")
        space.clusters = dict(raw["clusters"])
        return space
    if params and arms:
        raise SpaceError(f"{source}: give params (a search) or arms (a grid), not both")
    if not params and not arms:
        raise SpaceError(f"{source}: needs params (a search) or arms (a grid)")
    if params:
        if not isinstance(params, dict):
            raise SpaceError(f"params: must be a mapping of setting -> range, got {params!r}")
        for key, spec in params.items():
            name = canonical(str(key), f"params.{key}")
            space.params[name] = parse_param(name, spec, f"params.{key}")
    else:
        if not isinstance(arms, dict):
            raise SpaceError(f"arms: must be a mapping of arm name -> settings, got {arms!r}")
        space.arms = {str(a): check_settings(s, f"arms.{a}") for a, s in arms.items()}
        ref = raw.get("reference")
        if ref is not None and str(ref) not in space.arms:
            raise SpaceError(f"reference: {ref!r} is not one of the arms ({', '.join(space.arms)})")
        space.reference = str(ref) if ref is not None else None
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise SpaceError(f"seeds: must be a list of whole numbers >= 0, got {seeds!r}")
    space.seeds = list(dict.fromkeys(seeds))
    views = raw.get("holdout_tta_views", 0)
    if not isinstance(views, int) or isinstance(views, bool) or views < 0:
        raise SpaceError(f"holdout_tta_views: must be a whole number >= 0, got {views!r}")
    space.holdout_tta_views = views
    space.pruning = parse_pruning(raw.get("pruning"))
    return space


def parse_pruning(raw: Any) -> dict:
    out = dict(PRUNING_KEYS)
    if raw is None:
        return out
    if not isinstance(raw, dict):
        raise SpaceError(f"pruning: must be a mapping like {{startup_trials: 2, warmup_epochs: 1}}, got {raw!r}")
    for key, value in raw.items():
        if key not in PRUNING_KEYS:
            raise SpaceError(f"pruning.{key}: unknown key (use {', '.join(PRUNING_KEYS)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpaceError(f"pruning.{key}: must be a whole number >= 0, got {value!r}")
        out[key] = value
    return out


def load_space(path: str | Path) -> Space:
    """A space from a YAML file; SpaceError on a missing file, bad YAML or a bad key."""
    import yaml

    p = Path(path).expanduser()
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise SpaceError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise SpaceError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    try:
        return parse_space(raw, p.name)
    except SpaceError as exc:
        raise SpaceError(f"{p.name}: {exc}") from exc


# -- a trial's config --------------------------------------------------------------------
def build_config(settings: dict, *, data: str, out: str, task: str):
    """The TrainConfig of one trial: the declared defaults, the settings' device, then ``settings``."""
    train, pre = split_settings(settings)
    train.setdefault("device", get_settings().device)
    cfg = TrainConfig(data=data, out=out, task=task, **train)
    cfg.preprocess = PreprocessConfig.from_dict({**cfg.preprocess, **pre}).to_dict()
    try:
        cfg.validate()
    except TrainingError as exc:
        raise SpaceError(str(exc)) from exc
    return cfg
