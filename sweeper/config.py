"""Validation helpers shared by every config dataclass and by search spaces."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable


def is_finite_number(value) -> bool:
    """Returns whether `value` is an int or float (not bool) that is neither NaN nor inf."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(where: str, field: str, value, lo: int, hi: int) -> None:
    """Raises ConfigError unless `value` is an int (not bool) in [lo, hi]."""
    from .errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(where, field, value, f"an integer in {lo}..{hi}")


def check_float(where: str, field: str, value, lo: float, hi: float, *, lo_open: bool = False) -> None:
    """Raises ConfigError unless `value` is a finite number in [lo, hi] (or (lo, hi] if lo_open)."""
    from .errors import ConfigError

    ok = is_finite_number(value)
    ok = ok and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        raise ConfigError(where, field, value, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")


def check_choice(where: str, field: str, value, choices: Iterable[Any]) -> None:
    """Raises ConfigError unless `value` is one of `choices`."""
    from .errors import ConfigError

    choices = list(choices)
    if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices if c == value):
        raise ConfigError(where, field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_bool(where: str, field: str, value) -> None:
    """Raises ConfigError unless `value` is a bool."""
    from .errors import ConfigError

    if not isinstance(value, bool):
        raise ConfigError(where, field, value, "true or false")


def field_names(config_cls) -> list[str]:
    """Returns the dataclass field names of `config_cls`."""
    return [f.name for f in dataclasses.fields(config_cls)]


def to_dict(config) -> dict[str, Any]:
    """Returns a JSON-friendly dict of a config dataclass, with its registered name under 'name'."""
    out = dataclasses.asdict(config)
    out["name"] = getattr(type(config), "registered_name", type(config).__name__)
    return out
