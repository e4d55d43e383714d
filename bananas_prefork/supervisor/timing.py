"""A small clock for the master's loop: things done at most once per interval
(waits that grow while something keeps failing are ``core.backoff.Backoff``)."""

from __future__ import annotations

import time


class Every:
    """Due once per ``interval`` (monotonic); due at once when new or after ``now()``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0

    def due(self) -> bool:
        """True if due, and if so the next time is one interval from now."""
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + self.interval
        return True

    def retry_in(self, seconds: float) -> None:
        """Come due again sooner (or later) than the interval, e.g. after a failure."""
        self.next_at = time.monotonic() + seconds

    def reset(self) -> None:
        self.next_at = 0.0
