"""Logging: one line per event, naming the process; text for people, JSON for shippers."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .text import literal, one_line

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class ProcessFilter(logging.Filter):
    """Stamp every record with the process role (master, pool[n], scheduler)."""

    role = "master"

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return True


class TextFormatter(logging.Formatter):
    """One line per event: a message that carries a job's text (an error) cannot add a
    line of its own or send escapes to the terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s [%(role)s %(process)d] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return literal(super().formatException(ei))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + \
            ".%03d" % record.msecs


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "role": getattr(record, "role", None),
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in data and key != "role":
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


_filter = ProcessFilter()


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger for the master (children inherit it across fork)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_filter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def set_role(role: str) -> None:
    """Name this process in every later log line (called right after fork)."""
    _filter.role = role


def flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
