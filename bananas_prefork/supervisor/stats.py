"""Per-job-type counts, durations and pickup waits, batched from children to their master.

A child counts in memory and sends the difference once a second over its
report pipe, so the master knows what every pool did per job type without a
Redis round trip (or a pipe write) per job. The master keeps running totals,
which ``status`` rates, Prometheus exposes and the history series add up.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any

# Prometheus' default buckets: a job queue's durations span the same range.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
OUTCOMES = ("succeeded", "retry", "dead")


@dataclass
class TypeStats:
    """Counts by outcome and a duration histogram for one job type, and how long its
    jobs waited in their queue before a child picked them up (``waited`` over ``started``)."""

    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    seconds: float = 0.0
    started: int = 0
    waited: float = 0.0

    def observe(self, outcome: str, duration: float) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.buckets[bisect.bisect_left(BUCKETS, duration)] += 1
        self.seconds += duration

    def add(self, other: dict[str, Any]) -> None:
        for outcome, count in other.get("outcomes", {}).items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + int(count)
        for index, count in enumerate(other.get("buckets", [])[:len(self.buckets)]):
            self.buckets[index] += int(count)
        self.seconds += float(other.get("seconds", 0.0))
        self.started += int(other.get("started", 0))
        self.waited += float(other.get("waited", 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "buckets": list(self.buckets),
                "seconds": self.seconds, "started": self.started, "waited": self.waited}

    @property
    def count(self) -> int:
        return sum(self.buckets)


class StatsRecorder:
    """The child's side: record each job, hand out what changed since the last flush."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, TypeStats] = {}

    def record(self, job_type: str, outcome: str, duration: float) -> None:
        with self._lock:
            stats = self._pending.get(job_type)
            if stats is None:  # not setdefault: a TypeStats per job costs more than the rest
                stats = self._pending[job_type] = TypeStats()
            stats.observe(outcome, duration)

    def record_start(self, job_type: str, waited: float) -> None:
        """A job was picked up ``waited`` seconds after it became ready to run."""
        with self._lock:
            stats = self._pending.setdefault(job_type, TypeStats())
            stats.started += 1
            stats.waited += max(0.0, waited)

    def flush(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return {job_type: stats.as_dict() for job_type, stats in pending.items()}


def merge(totals: dict[str, TypeStats], delta: dict[str, dict[str, Any]]) -> None:
    """The master's side: add a child's delta to a pool's running totals."""
    for job_type, stats in delta.items():
        totals.setdefault(str(job_type), TypeStats()).add(stats)
