"""Exponential waits with jitter while something keeps failing: the clock of every
loop that retries Redis (the master's start, each consumer slot, a batch's parts)."""

from __future__ import annotations

import random


class Backoff:
    """``base``, ``2 * base``, ... up to ``cap``, each times a random factor in ``jitter``
    so that processes that failed together do not retry together."""

    def __init__(self, base: float, cap: float,
                 jitter: tuple[float, float] = (0.8, 1.2)) -> None:
        self.base, self.cap = base, cap
        self.jitter = jitter
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before trying again."""
        self.failures += 1
        return min(self.cap, self.base * 2 ** (self.failures - 1)) * random.uniform(*self.jitter)

    def succeeded(self) -> None:
        self.failures = 0
