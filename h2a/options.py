"""Options declared once, on dataclass fields, and everything derived from them.

A training or preprocessing option used to be written five times (the dataclass field,
its check in ``validate``, the argparse definition, a hand mapping from args to the
config, the page form) and the copies drifted. Here a field carries its declaration
(help, choices, range, CLI flag, form hints) in ``dataclasses.field(metadata=...)``;
the CLI parser, the args -> config mapping, the per-field checks and the Streamlit form
(``h2a.app``) are all built from it. ``validate`` methods keep only cross-field rules.

Only the standard library: argparse already does parsing, choices and ``--help``;
dataclasses already do defaults. What is written here is the glue between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass
from functools import cache
from typing import Any

META_KEY = "h2a_option"


@dataclass(frozen=True)
class Option:
    """The declaration of one option (see ``option``)."""

    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    cli: str | bool = True  # True: --field-name; a string: that flag; False: not on the CLI
    negative: str | None = None  # bools: the flag that sets False (default --no-field-name)
    metavar: str | None = None
    group: str | None = None  # argparse group and form section
    label: str | None = None  # short words for the form and for error messages
    unit: str = ""
    form: Mapping[str, Any] | bool = True  # False: not on the form; a mapping: widget hints
    applies: str | None = None  # a ModelInfo attribute that must be true for this option to matter


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING,
           choices: Iterable | None = None, minimum: float | None = None, maximum: float | None = None,
           exclusive_min: bool = False, exclusive_max: bool = False, cli: str | bool = True,
           negative: str | None = None, metavar: str | None = None, group: str | None = None,
           label: str | None = None, unit: str = "", form: Mapping[str, Any] | bool = True,
           applies: str | None = None) -> Any:
    """A dataclass field that carries its own declaration, so parser, form and checks agree.

    ``form`` hints the page widget: ``{"widget": "slider" | "select_slider" | "selectbox",
    "values": [...], "step": ..., "format": "%.5f", "labels": {value: words}, "zero_is_none":
    True}``; the widget kind otherwise follows the type and choices.
    """
    opt = Option(help=help, choices=tuple(choices) if choices is not None else None, minimum=minimum,
                 maximum=maximum, exclusive_min=exclusive_min, exclusive_max=exclusive_max, cli=cli,
                 negative=negative, metavar=metavar, group=group, label=label, unit=unit, form=form,
                 applies=applies)
    kwargs: dict[str, Any] = {"metadata": {META_KEY: opt}}
    if default_factory is not MISSING:
        kwargs["default_factory"] = default_factory
    elif default is not MISSING:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


@dataclass(frozen=True)
class Declared:
    """One declared field with its resolved type: what builders need, in one place."""

    name: str
    type: type  # the base type: bool, int, float, str, dict, ...
    optional: bool  # ``X | None``
    default: Any  # MISSING for a required field
    opt: Option

    @property
    def label(self) -> str:
        return self.opt.label or self.name.replace("_", " ").capitalize()

    @property
    def flag(self) -> str | None:
        if self.opt.cli is False:
            return None
        return self.opt.cli if isinstance(self.opt.cli, str) else "--" + self.name.replace("_", "-")

    @property
    def negative_flag(self) -> str:
        return self.opt.negative or "--no-" + self.name.replace("_", "-")

    def range_words(self) -> str:
        """The allowed range in words ("from 16 to 2048", "> 0 and <= 1"), or ''."""
        lo, hi, o = self.opt.minimum, self.opt.maximum, self.opt
        if lo is not None and hi is not None and not o.exclusive_min and not o.exclusive_max:
            return f"from {lo:g} to {hi:g}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if o.exclusive_min else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if o.exclusive_max else '<='} {hi:g}")
        return " and ".join(parts)

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed for this option, or None when it is."""
        words = (self.opt.label or "").lower()
        who = f"{self.name} ({words})" if words and words != self.name.replace("_", " ") else self.name
        if value is None:
            return None if self.optional else f"{who} is required"
        if self.opt.choices is not None:
            if value not in self.opt.choices:
                return f"{who} must be one of {', '.join(map(str, self.opt.choices))}; got {value!r}"
            return None
        t = self.type
        if t is bool:
            return None if isinstance(value, bool) else f"{who} must be true or false, got {value!r}"
        if t in (int, float):
            is_int = isinstance(value, int) and not isinstance(value, bool)
            ok_type = is_int if t is int else (
                (is_int or isinstance(value, float)) and math.isfinite(value))
            in_range = ok_type and self._in_range(value)
            if not in_range:
                kind = "an integer" if t is int else "a number"
                rng = self.range_words()
                return f"{who} must be {kind}{' ' + rng if rng else ''}, got {value!r}"
            return None
        if t in (str, dict) and not isinstance(value, t):
            return f"{who} must be a {'text' if t is str else 'mapping'}, got {value!r}"
        return None

    def _in_range(self, v: float) -> bool:
        o = self.opt
        if o.minimum is not None and (v <= o.minimum if o.exclusive_min else v < o.minimum):
            return False
        if o.maximum is not None and (v >= o.maximum if o.exclusive_max else v > o.maximum):
            return False
        return True


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``dict`` -> (dict, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else object), len(args) < len(typing.get_args(tp))
    return (typing.get_origin(tp) or tp), False


@cache
def declarations(cls: type) -> tuple[Declared, ...]:
    """Every declared field of a dataclass, in field order (undeclared fields are skipped)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get(META_KEY)
        if opt is None:
            continue
        base, optional = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        out.append(Declared(f.name, base, optional, default, opt))
    return tuple(out)


def declaration(cls: type, name: str) -> Declared:
    for d in declarations(cls):
        if d.name == name:
            return d
    raise KeyError(f"{cls.__name__} declares no option {name!r}")


def problems(obj: Any) -> list[str]:
    """Every per-field problem of a config instance (type, choices, range), all at once."""
    out = []
    for d in declarations(type(obj)):
        msg = d.check(getattr(obj, d.name))
        if msg:
            out.append(msg)
    return out


# -- argparse -------------------------------------------------------------------------
def coerce_numbers(obj: Any) -> None:
    """Numpy and integral numbers given for declared fields become plain ``int`` / ``float`` /
    ``bool`` (in place, frozen dataclasses too), so equal settings compare, hash, serialise
    and key jobs equally whoever built them (a widget, argparse, a JSON file, numpy)."""
    for d in declarations(type(obj)):
        value = getattr(obj, d.name)
        if isinstance(value, bool):
            continue
        if getattr(value, "dtype", None) is not None and value.dtype.kind == "b":  # numpy's bool
            if d.type is bool:
                object.__setattr__(obj, d.name, bool(value))
        elif d.type is int and isinstance(value, numbers.Integral):
            object.__setattr__(obj, d.name, int(value))
        elif d.type is float and isinstance(value, numbers.Real):
            object.__setattr__(obj, d.name, float(value))


def declared_kwargs(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``cls`` in JSON-like data: keys it does not declare are
    ignored (old and new files both load) and an integral float (JSON's 256.0) is taken for an
    int field."""
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in known}
    for decl in declarations(cls):
        v = kwargs.get(decl.name)
        if decl.type is int and isinstance(v, float) and v.is_integer():
            kwargs[decl.name] = int(v)
    return kwargs


def _converter(d: Declared):
    """argparse ``type`` for a declared number/text: parses, then checks the range, so the
    error names the flag ("argument --lr: must be a number > 0, got -1")."""

    def convert(text: str) -> Any:
        if d.type is int:
            try:
                value: Any = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        elif d.type is float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        else:
            return text
        msg = d.check(value)
        if msg:
            raise argparse.ArgumentTypeError("must " + msg.split(" must ", 1)[1])
        return value

    convert.__name__ = d.type.__name__
    return convert


def _help(d: Declared, defaults: Mapping[str, Any]) -> str:
    text = d.opt.help.replace("%", "%%")
    default = defaults.get(d.name, d.default)
    if default is not MISSING and default is not None and d.type is not dict and "default" not in text:
        shown = default if d.type is not bool else ("on" if default else "off")
        text += f" (default: {shown})"
    return text


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *, groups: Iterable[str | None] | None = None,
                  skip: Iterable[str] = (), into: Any = None, defaults: Mapping[str, Any] | None = None) -> None:
    """Add a flag for each declared field of ``cls`` that is on the CLI.

    Every default is None so ``values_from_args`` can tell "given" from "not given" (the
    dataclass keeps the one default; callers layer their own, e.g. train's 128 px).
    ``groups`` limits to fields whose ``group`` is listed; fields with a group go in an
    argparse group of that name, unless ``into`` (a group the caller made) is given.
    ``defaults`` are the caller's own defaults, shown in --help (train's 128 px).
    """
    defaults = defaults or {}
    wanted = None if groups is None else set(groups)
    skip = set(skip)
    made: dict[str, Any] = {}
    for d in declarations(cls):
        if d.flag is None or d.name in skip or (wanted is not None and d.opt.group not in wanted):
            continue
        target = into if into is not None else parser
        if d.opt.group and into is None:
            if d.opt.group not in made:
                made[d.opt.group] = parser.add_argument_group(d.opt.group)
            target = made[d.opt.group]
        if d.type is bool:
            if d.default is True:
                if isinstance(d.opt.cli, str):  # an explicit positive flag as well
                    target.add_argument(d.opt.cli, dest=d.name, action="store_true", default=None,
                                        help=_help(d, defaults))
                    target.add_argument(d.negative_flag, dest=d.name, action="store_false", default=None,
                                        help=f"the opposite of {d.opt.cli}")
                else:
                    target.add_argument(d.negative_flag, dest=d.name, action="store_false", default=None,
                                        help=f"turn off (on by default): {d.opt.help}".replace("%", "%%"))
            else:
                target.add_argument(d.flag, dest=d.name, action="store_true", default=None, help=_help(d, defaults))
            continue
        kwargs: dict[str, Any] = {"dest": d.name, "default": None, "help": _help(d, defaults)}
        if d.opt.choices is not None:
            kwargs["choices"] = d.opt.choices
        else:
            kwargs["type"] = _converter(d)
        if d.opt.metavar:
            kwargs["metavar"] = d.opt.metavar
        target.add_argument(d.flag, **kwargs)


def values_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The declared fields of ``cls`` that were given on the command line, by field name."""
    out = {}
    for d in declarations(cls):
        value = getattr(args, d.name, None)
        if d.flag is not None and value is not None:
            out[d.name] = value
    return out
