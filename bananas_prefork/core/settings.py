"""How a setting is declared, and the small parsers that validate values.

A setting is a dataclass field whose metadata holds its parser, help text and
environment variable: declared once, read by the loaders (``config.py``), the
generated reference (``docs/configuration.md``) and ``check``. A parser takes
the raw value (from TOML or an environment string) and returns the typed one,
or raises ValueError saying what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from .durations import parse_duration
from .keys import PRIORITIES

Parser = Callable[[Any], Any]


def setting(default: Any = None, *, parse: Parser, help: str,
            env: str | tuple[str, ...] | None = None, required: bool = False,
            factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field carrying its parser, help text and environment variable(s)."""
    metadata = {"parse": parse, "help": help, "env": env, "required": required,
                "kind": getattr(parse, "kind", "")}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: type) -> list[dataclasses.Field[Any]]:
    """The user-settable fields of a config dataclass, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "parse" in f.metadata]


def _kind(name: str) -> Callable[[Parser], Parser]:
    def mark(parser: Parser) -> Parser:
        parser.kind = name  # type: ignore[attr-defined]
        return parser

    return mark


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


@_kind("string")
def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {_describe(value)}")
    return value.strip()


def optional_text(value: Any) -> str | None:
    return None if value in (None, "") else text(value)


optional_text.kind = "string"  # type: ignore[attr-defined]


@_kind("boolean")
def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"must be true or false (also 1/0, yes/no, on/off), got {_describe(value)}")


def whole(minimum: int, maximum: int | None = None) -> Parser:
    """A whole number in [minimum, maximum]; environment strings are accepted."""

    @_kind("integer")
    def parse(value: Any) -> int:
        number = value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            number = int(value.strip())
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"must be a whole number, got {_describe(value)}")
        if number < minimum or (maximum is not None and number > maximum):
            allowed = f"between {minimum} and {maximum}" if maximum is not None \
                else f">= {minimum}"
            raise ValueError(f"must be {allowed}, got {number}")
        return number

    return parse


def optional(parser: Parser) -> Parser:
    """None (or an empty/"none" string) or what ``parser`` accepts."""

    def parse(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return parser(value)

    parse.kind = getattr(parser, "kind", "")  # type: ignore[attr-defined]
    return parse


def positive_number(value: Any) -> float:
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if isinstance(number, bool) or not isinstance(number, int | float) or not number > 0 \
            or math.isinf(number):
        raise ValueError(f"must be a positive number, got {_describe(value)}")
    return float(number)


positive_number.kind = "number"  # type: ignore[attr-defined]


def duration(minimum: float = 0.0) -> Parser:
    """Seconds from a number or a string like "500ms", "1s", "5m", "1h"."""

    @_kind("duration")
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g}s, got {_describe(value)}")
        return seconds

    return parse


def one_of(*choices: str) -> Parser:
    @_kind("one of: " + ", ".join(choices))
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {_describe(value)}")
        return str(value)

    return parse


def _items(value: Any, example: str) -> list[Any]:
    """A TOML array (the environment's comma-separated strings are split before this)."""
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"must be a list, e.g. {example}; got {_describe(value)}")


def split_list(text: str) -> list[str]:
    """An environment variable's comma-separated list."""
    return [part.strip() for part in text.split(",") if part.strip()]


@_kind("list of priorities")
def priorities(value: Any) -> tuple[str, ...]:
    items = _items(value, '["high", "normal"]')
    if not items:
        raise ValueError(f"must name at least one priority of {', '.join(PRIORITIES)}")
    for item in items:
        if item not in PRIORITIES:
            raise ValueError(f"unknown priority {_describe(item)}: use {', '.join(PRIORITIES)}")
    if len(set(items)) != len(items):
        raise ValueError("lists a priority twice")
    return tuple(items)


@_kind("list of job types")
def job_types(value: Any) -> tuple[str, ...]:
    items = _items(value, '["send_email"]')
    if not items:
        raise ValueError('must name at least one job type, or "*" for every type')
    for item in items:
        if not isinstance(item, str) or not item or any(c in item for c in ", "):
            raise ValueError(f"{_describe(item)} is not a job type name")
    if "*" in items and len(items) > 1:
        raise ValueError('"*" already means every job type; list types or "*", not both')
    return tuple(items)


@_kind("list")
def json_list(value: Any) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list, got {_describe(value)}")
    return tuple(value)


@_kind("table")
def json_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a table, got {_describe(value)}")
    return dict(value)


_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


@_kind("string")
def url_prefix(value: Any) -> str:
    """A path such as "/bananas" (no trailing slash); "" or "/" for the root."""
    if not isinstance(value, str):
        raise ValueError(f"must be a path such as \"/bananas\", got {_describe(value)}")
    prefix = value.strip().rstrip("/")
    if not _PREFIX.match(prefix):
        raise ValueError(f"must be a path such as \"/bananas\" (letters, digits, "
                         f"'.', '_', '~', '-' between slashes), got {_describe(value)}")
    return prefix


@_kind("string")
def secret(value: Any) -> str:
    """A token of at least 16 characters; never echoed in an error."""
    if not isinstance(value, str) or len(value.strip()) < 16:
        raise ValueError("must be a string of at least 16 characters (not shown)")
    return value.strip()


@_kind("string")
def credentials(value: Any) -> str:
    """"user:password"; never echoed in an error."""
    if not isinstance(value, str) or ":" not in value.strip(":") or \
            any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError('must be "user:password" without spaces (not shown)')
    return value


def closest(word: str, choices: Sequence[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
