"""Helpers shared by every family's frozen config dataclass: validation and dict round trips."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from lmlab.errors import ConfigError


def config_from_dict(cls, values: dict[str, Any], where: str = "config"):
    """Build `cls` from plain values; unknown keys are an error that names them and `where`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a JSON object of config fields, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown config key(s) {', '.join(unknown)}; "
                          f"known keys: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        # JSON has no tuples and Python counts True as an int: a wrong type would otherwise pass
        # __post_init__ and fail deep inside torch (or, for a bool field, silently count as true).
        if not _fits(hints[name], value):
            raise ConfigError(f"{where}: field {name} must be {_describe(hints[name])}, got {value!r}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


_KINDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"), type(None): ("null", "nulls"),
          dict: ("a JSON object", "JSON objects")}


def _fits(hint, value) -> bool:
    """Whether a JSON value fits a config field's annotation (int for float; lists for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in args)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(args[0], item) for item in value)
    if hint is float:  # NaN and Infinity are no setting (and would reach the JSON files lmlab writes)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in _KINDS:
        return isinstance(value, hint)
    return True  # a kind this check does not know: the dataclass's own validation decides


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is tuple:
        return f"a list of {_KINDS[args[0]][1]}" if args[0] in _KINDS else "a list"
    return _KINDS[hint][0] if hint in _KINDS else str(hint)


def config_to_dict(config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"config field {name} must be a positive integer, got {value!r}")


def check_probability(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        require(isinstance(value, (int, float)) and 0.0 <= value < 1.0,
                f"config field {name} must be in [0, 1), got {value!r}")
