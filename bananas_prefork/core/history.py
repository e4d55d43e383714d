"""The cluster's recent past: jobs done, runs failed, pickup latency and queue depth,
per second for the last 10 minutes and per minute for the last 24 hours.

Key family (``keys.py``): ``history:second`` and ``history:minute``, each a hash
used as a ring of buckets (slot = bucket start / width mod slots), so their size
is fixed whatever the load, the uptime or the number of masters. Masters write:
once a second each, one script call (``lua/history_record.lua``) that adds
their deltas into the buckets Redis' clock names (spread over the seconds since
the master's previous write), so several masters sum up rather than overwrite.
The dashboard reads. This module is the only code on these keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict, cast

import redis

from .keys import PRIORITIES, Keys
from .nodes import PoolStatus
from .scripts import script_source

UNMEASURED = -1


@dataclass(frozen=True)
class Resolution:
    name: str
    width: int  # seconds per bucket
    slots: int  # buckets kept


SECOND = Resolution("second", 1, 600)
MINUTE = Resolution("minute", 60, 1440)
RESOLUTIONS = {r.name: r for r in (SECOND, MINUTE)}


@dataclass(frozen=True)
class Delta:
    """What one master's pools did since its last report."""

    done: int = 0
    failed: int = 0
    started: int = 0
    waited: float = 0.0  # seconds, summed over the started jobs


class Series(TypedDict):
    """One ring as charts want it: a column per figure, None where nobody reported."""

    resolution: str
    width: int
    t: list[int]  # bucket starts, epoch seconds, oldest first
    done: list[int | None]
    failed: list[int | None]
    latency_ms: list[float | None]  # mean pickup latency of the jobs started then
    depth: dict[str, list[int | None]]  # ready jobs per priority (a minute: its peak)


Figures = tuple[int, int, int, float]  # done, failed, started, waited


class Tally:
    """Turns the running totals a master publishes into per-report deltas.

    Pools are told apart by name and generation: a pool replaced on reload
    counts from zero. The first report only takes the baseline, so a master
    that starts (or reloads, with a new publisher) adds no spike of old totals.
    """

    def __init__(self) -> None:
        self.baseline: dict[tuple[str, int], Figures] | None = None

    @staticmethod
    def figures(pools: list[PoolStatus]) -> dict[tuple[str, int], Figures]:
        out: dict[tuple[str, int], Figures] = {}
        for pool in pools:
            stats = pool.get("job_type_stats", {}).values()
            out[(pool["name"], int(pool.get("generation", 0)))] = (
                int(pool.get("jobs_done", 0)), int(pool.get("jobs_failed", 0)),
                sum(int(s.get("started", 0)) for s in stats),
                sum(float(s.get("waited", 0.0)) for s in stats))
        return out

    def delta(self, pools: list[PoolStatus]) -> tuple[Delta | None, dict[tuple[str, int],
                                                                         Figures]]:
        """(what changed since the baseline, or None on the first report; the new
        baseline, to ``commit`` once the delta is stored)."""
        now = self.figures(pools)
        if self.baseline is None:
            return None, now
        sums = [0.0, 0.0, 0.0, 0.0]
        for pool, current in now.items():
            before = self.baseline.get(pool, (0, 0, 0, 0.0))
            for index in range(4):
                sums[index] += max(0.0, current[index] - before[index])
        done, failed, started, waited = sums
        return Delta(int(done), int(failed), int(started), waited), now

    def commit(self, baseline: dict[tuple[str, int], Figures]) -> None:
        self.baseline = baseline


class HistoryStore:
    """The two rings of one namespace. A master writes through its own store, which
    remembers the second it last wrote: the next write covers the seconds since."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.script = client.register_script(script_source("history_record"))
        self.last_second = 0

    def record(self, delta: Delta) -> bool:
        """Add a master's delta to the buckets since its last write (and measure the
        queues' depth if nobody has this second); True when this call measured them."""
        measured, self.last_second = self.script(
            keys=[self.keys.history(SECOND.name), self.keys.history(MINUTE.name),
                  self.keys.queues],
            args=[self.keys.prefix, delta.done, delta.failed, round(delta.waited * 1000),
                  delta.started, SECOND.slots, MINUTE.slots, self.last_second])
        return bool(measured)

    def read(self, resolution: Resolution) -> Series:
        """The whole ring, ending with the bucket that is filling now."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(self.keys.history(resolution.name))
            (sec, _), raw = pipe.execute()
        return series(resolution, int(sec), cast(dict[str, str], raw))


def series(resolution: Resolution, now: int, raw: dict[str, str]) -> Series:
    """Unpack a ring's hash into columns over the window ending at ``now``."""
    width = resolution.width
    last = now - now % width
    first = last - (resolution.slots - 1) * width
    buckets: dict[int, list[int]] = {}
    for text in raw.values():
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            continue
        if len(values) == 8 and first <= values[0] <= last:
            buckets[values[0]] = values
    out: Series = {"resolution": resolution.name, "width": width, "t": [], "done": [],
                   "failed": [], "latency_ms": [], "depth": {p: [] for p in PRIORITIES}}
    for start in range(first, last + 1, width):
        bucket = buckets.get(start)
        out["t"].append(start)
        if bucket is None:
            out["done"].append(None)
            out["failed"].append(None)
            out["latency_ms"].append(None)
            for priority in PRIORITIES:
                out["depth"][priority].append(None)
            continue
        _, done, failed, waited_ms, started, *depths = bucket
        out["done"].append(done)
        out["failed"].append(failed)
        out["latency_ms"].append(round(waited_ms / started, 1) if started else None)
        for priority, depth in zip(PRIORITIES, depths, strict=True):
            out["depth"][priority].append(None if depth == UNMEASURED else depth)
    return out
