"""Durations as operators write them: ``"500ms"``, ``"1s"``, ``"5m"``, ``"1h"`` or seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object) -> float:
    """Return seconds; raise ValueError naming what is allowed."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a duration: use a number of seconds or a string "
                'like "500ms", "1s", "5m", "1h"'
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration: it must be a finite number of seconds, "
                         "not negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact string parse_duration reads back."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return "%d%s" % (seconds // size, unit)
    if seconds < 1:
        return _trimmed(seconds * 1000) + "ms"
    return _trimmed(seconds) + "s"


def format_age(seconds: float | None) -> str:
    """An age for people at a glance: "4.2s", "3.5m", "2.0h", "1.5d"; "-" for none."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _trimmed(number: float) -> str:
    return ("%.6f" % number).rstrip("0").rstrip(".")
