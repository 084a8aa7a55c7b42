"""Typed settings: values from the command line, YAML and JSON converted to a config field's type,
and numeric fields checked against their allowed range when the config is built.

A config dataclass states each numeric field's range in its annotation, so the rule lives beside
the field it guards and every way of setting it (``--set``, YAML, ``config.json``, the Python API)
is checked the same way::

    epochs: PositiveInt = 10            # a bad value: "train.epochs must be >= 1, got 0"
    lr: PositiveFloat = 1e-3
    grad_clip: PositiveFloat | None = None
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from dgm.errors import DgmError, unknown_name


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting: ``low`` (excluded when ``low_open``) up to ``high``
    (excluded when ``high_open``); ``None`` is unbounded on that side. Values must be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "finite"

    def check(self, value: Any, key: str) -> None:
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise DgmError(f"{key} must be {self.describe()}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


PositiveInt = Annotated[int, Range(1)]  # counts and sizes: epochs, batch size, dimensions, steps
NonNegativeInt = Annotated[int, Range(0)]  # counts where 0 means "off" or "none"
PositiveFloat = Annotated[float, Range(0, low_open=True)]  # rates and scales: learning rates, clip norms
NonNegativeFloat = Annotated[float, Range(0)]  # weights where 0 means "off"
Fraction = Annotated[float, Range(0, 1)]  # probabilities and shares
Decay = Annotated[float, Range(0, 1, high_open=True)]  # EMA decays, Adam betas: [0, 1)


def type_hints(cls: type) -> dict[str, Any]:
    """The field annotations of ``cls`` with their ranges (``Annotated`` kept)."""
    return typing.get_type_hints(cls, include_extras=True)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (often a string from the command line) to the type ``hint`` of ``key`` and
    check its range.

    Supports bool, int, float, str, ``Literal[...]``, ``X | None``, ``Annotated[X, Range(...)]``, and
    tuples/lists of those; anything else passes through. Errors name the key and what it accepts.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        typed = coerce(value, args[0], key)
        for rule in args[1:]:
            if isinstance(rule, Range):
                rule.check(typed, key)
        return typed
    if origin is typing.Union or origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except DgmError as e:
                errors.append(str(e))
        raise DgmError(errors[0] if errors else f"{key} cannot be {value!r}")
    if origin is typing.Literal:
        for a in args:  # "3" from the command line is the literal 3
            if value == a and type(value) is type(a) or isinstance(value, str) and str(a) == value.strip():
                return a
        raise unknown_name(f"value for {key}", str(value), [str(a) for a in args])
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) \
            else [value]
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        out = [coerce(v.strip() if isinstance(v, str) else v, args[min(i, len(args) - 1)] if fixed else
                      (args[0] if args else str), key) for i, v in enumerate(items) if v != ""]
        if fixed and len(out) != len(args):
            raise DgmError(f"{key} takes {len(args)} comma-separated values, got {value!r}")
        return tuple(out) if origin is tuple else out
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and any(c in value.lower() for c in "e."):
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if hint is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise DgmError(f"{key} must be {_type_name(hint)}, got {value!r}") from None
    return value


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "text"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def check(config: Any, section: str) -> Any:
    """Check every field of the dataclass instance ``config`` against its type and range (configs
    built in Python, not through :func:`coerce`); returns ``config``. Errors name ``section.field``."""
    if not dataclasses.is_dataclass(config):
        return config
    hints = type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        typed = coerce(value, hints[f.name], f"{section}.{f.name}")
        if type(typed) is not type(value) or typed != value:
            setattr(config, f.name, typed)  # an int given for a float field, a list for a tuple
    return config
