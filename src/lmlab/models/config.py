"""Helpers shared by every family's frozen config dataclass: validation and dict round trips."""

from __future__ import annotations

import dataclasses
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
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


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
