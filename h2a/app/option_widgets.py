"""Streamlit widgets built from option declarations (``h2a.options``).

A page names the fields it lays out; the widget kind follows the declared type and
choices (or the declaration's ``form`` hints), and the label, help and range come from
the declaration, so a form cannot drift from the CLI and the config's checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING
from typing import Any

import streamlit as st

from h2a.options import Declared, declaration

# Where a newer ModelInfo lacks an attribute an option ``applies`` to, the older field
# that says the same thing (the registry is being rewritten alongside this module).
_FALLBACK_ATTRS = {"width_scalable": "supports_width_mult"}


def applies(d: Declared, info: Any) -> bool:
    """Whether option ``d`` matters for the architecture described by ``info`` (a ModelInfo)."""
    attr = d.opt.applies
    if attr is None:
        return True
    if hasattr(info, attr):
        return bool(getattr(info, attr))
    if attr in _FALLBACK_ATTRS and hasattr(info, _FALLBACK_ATTRS[attr]):
        return bool(getattr(info, _FALLBACK_ATTRS[attr]))
    if attr == "has_drop_path":  # older registries: only the EfficientNets take stochastic depth
        return str(getattr(info, "name", "")).startswith("efficientnet")
    return True


def weights_hint(info: Any, workspace: Any) -> str:
    """Where to put ImageNet weights for an architecture that has none on disk."""
    hint = getattr(info, "weights_hint", None)
    if hint:
        return str(hint)
    source = str(getattr(info, "pretrained_source", ""))  # older registries say it in words
    if source.startswith("none"):
        return "it has none; it trains from a random initialisation"
    return f"put {getattr(info, 'name', 'the architecture')}.pth (or .safetensors) in {workspace}/weights"


def label_of(d: Declared) -> str:
    return d.label + (f" ({d.opt.unit})" if d.opt.unit else "")


def _off(v: Any, labels: Mapping) -> str:
    if v is None:
        return labels.get(None, "off")
    return str(labels.get(v, v))


def option_widget(container: Any, cls: type, name: str, *, key: str, value: Any = MISSING,
                  disabled: bool = False, values: Sequence | None = None, widget: str | None = None,
                  labels: Mapping | None = None) -> Any:
    """One widget for the declared field ``cls.name`` in ``container`` (st, a column, the
    sidebar); returns the value in the config's terms (e.g. None for "off").

    ``value`` overrides the declared default; ``values`` the offered choices (e.g. the
    finished runs to warm-start from). A key already in session state keeps its value.
    """
    d = declaration(cls, name)
    hints: Mapping = d.opt.form if isinstance(d.opt.form, Mapping) else {}
    labels = {**hints.get("labels", {}), **(labels or {})}
    default = d.default if value is MISSING else value
    kind = widget or hints.get("widget")
    opts = list(values if values is not None else hints.get("values") or d.opt.choices or [])
    kw: dict[str, Any] = {"key": key, "help": d.opt.help, "disabled": disabled}
    preset = key in st.session_state  # Streamlit warns when a default fights session state
    label = label_of(d)

    if d.type is bool and not opts:
        return container.checkbox(label, **kw, **({} if preset else {"value": bool(default)}))
    if opts:
        fmt = (lambda v: _off(v, labels))
        if kind == "select_slider":
            start = default if default in opts else opts[0]
            return container.select_slider(label, opts, format_func=fmt, **kw,
                                           **({} if preset else {"value": start}))
        index = opts.index(default) if default in opts else 0
        if kind == "radio":
            return container.radio(label, opts, format_func=fmt, horizontal=True, **kw,
                                   **({} if preset else {"index": index}))
        return container.selectbox(label, opts, format_func=fmt, **kw, **({} if preset else {"index": index}))
    if d.type in (int, float):
        cast = d.type
        none_as_zero = bool(hints.get("zero_is_none"))
        lo = hints.get("min", None if d.opt.exclusive_min else d.opt.minimum)
        hi = hints.get("max", None if d.opt.exclusive_max else d.opt.maximum)
        if none_as_zero:
            lo = 0
        start = 0 if (default is None and none_as_zero) else default
        if start is None:
            start = lo if lo is not None else 0
        num = {"min_value": None if lo is None else cast(lo), "max_value": None if hi is None else cast(hi)}
        if "step" in hints:
            num["step"] = cast(hints["step"])
        if kind == "slider":
            got = container.slider(label, **num, **kw, **({} if preset else {"value": cast(start)}))
        else:
            if "format" in hints:
                num["format"] = hints["format"]
            got = container.number_input(label, **num, **kw, **({} if preset else {"value": cast(start)}))
        got = cast(got)
        return None if (none_as_zero and got == 0) else got
    text = container.text_input(label, **kw, **({} if preset else {"value": "" if default in (None, MISSING) else str(default)}))
    return text.strip() or (None if d.optional else "")
