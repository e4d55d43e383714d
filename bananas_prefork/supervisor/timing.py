"""Small clocks for the master's loop: things done at most once per interval, and
waits that grow while something keeps failing."""

from __future__ import annotations

import random
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


class Backoff:
    """Exponential delays with +-20% jitter while failures go on: base, 2*base, ... cap."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before trying again."""
        self.failures += 1
        return min(self.cap, self.base * 2 ** (self.failures - 1)) * random.uniform(0.8, 1.2)

    def succeeded(self) -> None:
        self.failures = 0
