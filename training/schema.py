"""Type, range and choice rules for every config key, kept beside the key they govern.

A config field is declared with :func:`key`, which stores its rule in the dataclass field's
metadata, so adding a key is one line::

    device: str = key("auto", Choice("auto", "cpu", "cuda"))
    precision: str = key("float32", Choice("float32", "bfloat16"))

:func:`check_config` walks a built :class:`~inclust_plus.training.config.Config` (after the CLI
overrides too) and raises a one-line :class:`InclustError` naming the key, its value, what it
must be and an example, before any file is read or written. A field declared without a rule gets
one from its annotation (``int``, ``float``, ``str``, ``bool``, lists of them, ``| None``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

from inclust_plus.errors import InclustError

_MISSING = dataclasses.MISSING


class Rule:
    """``problem(value)``: what is wrong with ``value`` (to follow "must ..."), or None."""

    def problem(self, value: Any) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError


class Int(Rule):
    def __init__(self, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max

    def problem(self, v):
        if not isinstance(v, int) or isinstance(v, bool):
            return "an integer" + _range(self.min, self.max)
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            return "an integer" + _range(self.min, self.max)
        return None


class Float(Rule):
    """A finite number; ``gt``/``lt`` exclusive bounds, ``min``/``max`` inclusive."""

    def __init__(self, min: float | None = None, max: float | None = None, gt: float | None = None, lt: float | None = None):
        self.min, self.max, self.gt, self.lt = min, max, gt, lt

    def problem(self, v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (self.min is None or v >= self.min) and (self.max is None or v <= self.max)
        ok = ok and (self.gt is None or v > self.gt) and (self.lt is None or v < self.lt)
        if ok:
            return None
        bounds = [f">= {self.min:g}" if self.min is not None else "", f"> {self.gt:g}" if self.gt is not None else "",
                  f"<= {self.max:g}" if self.max is not None else "", f"< {self.lt:g}" if self.lt is not None else ""]
        bounds = [b for b in bounds if b]
        return "a number" + (f" {' and '.join(bounds)}" if bounds else "")


class Bool(Rule):
    def problem(self, v):
        return None if isinstance(v, bool) else "true or false"


class BoolOr(Rule):
    """true, false, or one of a few named conditions (a default that depends on another key)."""

    def __init__(self, *values: str):
        self.values = values

    def problem(self, v):
        return None if isinstance(v, bool) or (isinstance(v, str) and v in self.values) else f"true, false or {' or '.join(map(repr, self.values))}"


class Str(Rule):
    def problem(self, v):
        return None if isinstance(v, str) and v.strip() else "a non-empty string"


class Choice(Rule):
    def __init__(self, *values: str):
        self.values = values

    def problem(self, v):
        return None if isinstance(v, str) and v in self.values else f"one of {', '.join(map(repr, self.values))}"


class Optional(Rule):
    def __init__(self, rule: Rule):
        self.rule = rule

    def problem(self, v):
        if v is None:
            return None
        inner = self.rule.problem(v)
        return None if inner is None else f"{inner} (or left out)"


class ListOf(Rule):
    def __init__(self, rule: Rule, non_empty: bool = False):
        self.rule, self.non_empty = rule, non_empty

    def problem(self, v):
        what = f"a {'non-empty ' if self.non_empty else ''}list of {_plural(self.rule.problem(object()))}"
        if not isinstance(v, list) or (self.non_empty and not v):
            return what
        return what if any(self.rule.problem(item) for item in v) else None


class OneOrList(Rule):
    """A single value or a non-empty list of values, each passing ``rule``."""

    def __init__(self, rule: Rule):
        self.rule = rule

    def problem(self, v):
        inner = self.rule.problem(object())
        what = f"{inner}, or a non-empty list of them"
        if isinstance(v, list):
            return what if not v or any(self.rule.problem(x) for x in v) else None
        return what if self.rule.problem(v) else None


class Table(Rule):
    """A TOML table whose keys are names (modalities) and whose values follow ``fields``."""

    def __init__(self, fields: dict[str, Rule]):
        self.fields = fields

    def problem(self, v):
        return None if isinstance(v, dict) else "a table"


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    return f" <= {hi}" if hi is not None else ""


def _plural(text: str | None) -> str:
    text = text or "values"
    for article in ("an ", "a "):
        if text.startswith(article):
            return text[len(article):].replace("integer", "integers").replace("number", "numbers").replace("string", "strings")
    return text


def key(default: Any = _MISSING, rule: Rule | None = None, *, factory: Any = _MISSING, run: bool = False) -> Any:
    """A dataclass field with its validation ``rule`` (lists and dicts: pass ``factory``).

    ``run``: a run option (how to train here, e.g. the device), not part of what the model is, so
    the checkpoint does not record it (:meth:`~inclust_plus.training.config.Config.record`)."""
    meta = {"rule": rule} if rule is not None else {}
    if run:
        meta["run"] = True
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_SIMPLE = {int: Int(), float: Float(), str: Str(), bool: Bool()}


def rule_of(f: dataclasses.Field, hints: dict) -> Rule | None:
    """The field's declared rule, else one derived from its type annotation (None: unchecked)."""
    if "rule" in f.metadata:
        return f.metadata["rule"]
    return _from_annotation(hints.get(f.name))


def _from_annotation(tp) -> Rule | None:
    if tp in _SIMPLE:
        return _SIMPLE[tp]
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list and args and args[0] in _SIMPLE:
        return ListOf(_SIMPLE[args[0]])
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _from_annotation(rest[0]) if len(rest) == 1 else None
        return Optional(inner) if inner is not None else None
    return None


def _example(name: str, f: dataclasses.Field) -> str:
    default = f.default if f.default is not _MISSING else (f.default_factory() if f.default_factory is not _MISSING else None)
    if default is None:
        return "fix it or leave it out"
    return f"e.g. {name} = {json.dumps(default)}"


def _fail(where: str, value: Any, must: str, fix: str) -> InclustError:
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, list)) or value is None else repr(value)
    return InclustError(f"config key {where} = {shown[:80]} is invalid: it must be {must}", fix)


def check_dataclass(obj: Any, where: str) -> None:
    """Check every field of the config dataclass ``obj`` (prefix ``where``, e.g. ``"training."``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_dataclass(value, f"{where}{f.name}.")
            continue
        if isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                check_dataclass(item, f"{where}{f.name}[{i}].")
            continue
        rule = rule_of(f, hints)
        if rule is None:
            continue
        problem = rule.problem(value)
        if problem:
            raise _fail(f"{where}{f.name}", value, problem, _example(f.name, f))
        if isinstance(rule, Table):
            check_table(value, rule, f"{where}{f.name}.")


def check_table(value: dict, rule: Table, where: str) -> None:
    """Each entry of a name -> table mapping (``[preprocessing.rna]``): known keys, valid values."""
    for name, entry in value.items():
        if not isinstance(entry, dict):
            raise _fail(f"{where}{name}", entry, "a table", f"write it as [{where}{name}]")
        unknown = sorted(set(entry) - set(rule.fields))
        if unknown:
            raise InclustError(f"unknown config key {where}{name}.{unknown[0]}", f"valid keys: {', '.join(sorted(rule.fields))}")
        for k, r in rule.fields.items():
            if k in entry:
                problem = r.problem(entry[k])
                if problem:
                    raise _fail(f"{where}{name}.{k}", entry[k], problem, "fix it or leave it out")
