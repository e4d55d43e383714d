"""Groups of children as the master sees them: how many it wants, how they do, and
how soon to start another after a failure.

A group is either a **pool** (children that run jobs, one group per
``[pools.<name>]``) or the **scheduler group** (the one scheduler child). They
differ in what their children run and share everything else. A reload or a
code deploy starts a new *generation* of a group beside the old one; the old
one drains once the new one is up.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import psutil

from ..core.broker import Broker
from ..core.config import PoolConfig, SchedulerConfig
from ..core.identity import OwnerId
from ..core.nodes import PoolStatus, ProcessStatus
from .monitor import Sample
from .scoreboard import Scoreboard, SlotView
from .stats import TypeStats

QUICK_DEATH = 5.0  # a child dying this soon after ready, having run nothing, failed to start
FAILING_AFTER = 3  # consecutive quick deaths before the group shows as failing
RATE_WINDOW = 60.0  # processed/failed per minute are measured over this
FIRST_SPAWN_BACKOFF = 0.25


@dataclass(eq=False)
class Child:
    """A child process, as its master knows it."""

    pid: int
    group: Group
    index: int
    owner: OwnerId | None  # None: the scheduler child holds no jobs
    scoreboard: Scoreboard
    report_fd: int
    broker: Broker  # where its jobs live: a reload to another Redis leaves it on its own
    spawned_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    stop_reason: str | None = None
    stop_sent_at: float | None = None
    lost_run: bool = True  # until we stop it ourselves, a death is a crash
    timed_out: SlotView | None = None
    killed: bool = False
    sample: Sample | None = None
    last_busy: list[SlotView] = field(default_factory=list)
    report_buffer: bytes = b""
    process: psutil.Process | None = None
    crash: str | None = None  # why the child says it must go (a loop of it ended)
    refusals: dict[str, str] = field(default_factory=dict)  # loop -> what Redis refuses

    def __post_init__(self) -> None:
        try:
            self.process = psutil.Process(self.pid)
            self.process.cpu_percent(None)
        except psutil.Error:
            self.process = None

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    @property
    def label(self) -> str:
        return self.group.label(self.index)

    def state(self) -> str:
        """starting, idle, busy or stopping, as status shows it."""
        if self.stopping:
            return "stopping"
        if self.ready_at is None:
            return "starting"
        return "busy" if self.last_busy else "idle"

    def describe(self, now: float) -> ProcessStatus:
        """This child as ``status --json`` shows it (job type and age, never arguments).

        ``now`` is monotonic, the scoreboard's clock."""
        current = min(self.last_busy, key=lambda s: s.started_at) if self.last_busy else None
        return {
            "pid": self.pid,
            "index": self.index,
            "state": self.state(),
            "jobs_done": self.scoreboard.jobs_done,
            "jobs_failed": self.scoreboard.jobs_failed,
            "rss_mb": round(self.sample.rss_mb, 1) if self.sample else None,
            "cpu_percent": round(self.sample.cpu_percent, 1) if self.sample else None,
            "current_job": current.job_type if current else None,
            "current_job_id": current.job_id if current else None,
            "current_job_age": round(now - current.started_at, 3) if current else None,
            "busy_slots": len(self.last_busy),
            "stop_reason": self.stop_reason,
        }


class Group:
    """Wanted vs actual children of one kind, one generation."""

    kind: ClassVar[str]
    config: PoolConfig | SchedulerConfig

    def __init__(self, name: str, generation: int, desired: int, threads: int,
                 max_backoff: float) -> None:
        self.name = name
        self.generation = generation
        self.desired = desired
        self.threads = threads
        self.max_backoff = max_backoff
        self.children: dict[int, Child] = {}
        self.draining = False
        self.successor: Group | None = None
        self.failures = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.next_spawn_at = 0.0
        self.stats: dict[str, TypeStats] = {}
        self.retired_done = 0
        self.retired_failed = 0
        self.history: deque[tuple[float, int, int]] = deque()
        self.busy_since: float | None = None
        self.empty_since: float | None = time.time()

    def label(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def active(self) -> list[Child]:
        return [c for c in self.children.values() if not c.stopping]

    def missing(self) -> int:
        return 0 if self.draining else max(0, self.desired - len(self.active()))

    def is_up(self) -> bool:
        """Every wanted child is running and ready."""
        ready = [c for c in self.active() if c.ready_at is not None]
        return len(ready) >= self.desired

    @property
    def failing(self) -> bool:
        return self.failures >= FAILING_AFTER

    def free_index(self) -> int:
        used = {c.index for c in self.children.values()}
        return next(i for i in range(len(used) + 1) if i not in used)

    def may_spawn(self, now: float) -> bool:
        return now >= self.next_spawn_at

    def child_died(self, child: Child, expected: bool, error: str | None) -> None:
        """Book a death; quick unexpected deaths back off, exponentially, with jitter."""
        del self.children[child.pid]
        self.retired_done += child.scoreboard.jobs_done
        self.retired_failed += child.scoreboard.jobs_failed
        if expected:
            return
        self.restarts += 1
        if error:
            self.last_error = error
        if not _failed_to_start(child):
            self.failures = 0
            return
        self.failures += 1
        if self.failures > 1:
            delay = min(self.max_backoff, FIRST_SPAWN_BACKOFF * 2 ** (self.failures - 1))
            self.next_spawn_at = time.monotonic() + delay * random.uniform(0.8, 1.2)

    def child_ready(self, child: Child) -> None:
        child.ready_at = time.monotonic()

    def child_settled(self) -> None:
        """A child stayed up long enough: whatever failed before is over."""
        self.failures = 0
        self.last_error = None

    # -- figures for status -------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """Jobs done and failed by every child this group ever had."""
        done = self.retired_done + sum(c.scoreboard.jobs_done for c in self.children.values())
        failed = self.retired_failed + sum(c.scoreboard.jobs_failed
                                           for c in self.children.values())
        return done, failed

    def slots(self) -> tuple[int, int]:
        """(busy, wanted) job slots."""
        busy = sum(len(c.last_busy) for c in self.active())
        return busy, sum(self.threads_of(index) for index in range(self.desired))

    def threads_of(self, index: int) -> int:
        return self.threads

    def observe(self, now: float, busy_threshold: float) -> None:
        """Sample once per publish: rates and the 'since when' of alert conditions."""
        done, failed = self.totals()
        self.history.append((now, done, failed))
        while self.history and now - self.history[0][0] > RATE_WINDOW:
            self.history.popleft()
        busy, wanted = self.slots()
        saturated = wanted > 0 and busy / wanted > busy_threshold
        self.busy_since = (self.busy_since or now) if saturated else None
        live = any(c.ready_at is not None for c in self.active())
        self.empty_since = None if live or self.desired == 0 else (self.empty_since or now)

    def per_minute(self) -> tuple[float, float]:
        if len(self.history) < 2:
            return 0.0, 0.0
        (t0, d0, f0), (t1, d1, f1) = self.history[0], self.history[-1]
        span = max(t1 - t0, 1.0)
        return (d1 - d0) * 60 / span, (f1 - f0) * 60 / span

    def state(self) -> str:
        if self.draining:
            return "stopping"
        if self.failing:
            return "failing"
        return "running" if self.is_up() else "starting"

    def describe(self, config: PoolConfig) -> PoolStatus:
        """A declared pool as ``status --json`` shows it, with this group's children.

        The one builder of a pool's record: a job pool describes itself; a
        scheduler-only pool is shown with the scheduler group's child.
        """
        done, failed = self.totals()
        busy, wanted = self.slots()
        processed, failing_rate = self.per_minute()
        runs_jobs = config.runs_jobs
        now = time.monotonic()  # the scoreboard's clock, for the jobs' ages
        return {
            "name": config.name,
            "mode": config.mode,
            "priorities": list(config.priorities) if runs_jobs else [],
            "job_types": list(config.job_types) if runs_jobs else [],
            "concurrency": config.concurrency if runs_jobs else 0,
            "slots": wanted,
            "threads": self.threads if runs_jobs else 0,
            "processes_wanted": self.desired,
            "generation": self.generation,
            "state": self.state(),
            "busy": busy,
            "utilization": round(busy / wanted, 3) if wanted else 0.0,
            "jobs_done": done,
            "jobs_failed": failed,
            "processed_per_min": round(processed, 1),
            "failed_per_min": round(failing_rate, 1),
            "restarts": self.restarts,
            "last_error": self.last_error,
            "utilization_high_since": self.busy_since,
            "no_live_child_since": self.empty_since,
            "job_type_stats": {t: s.as_dict() for t, s in sorted(self.stats.items())},
            "processes": [c.describe(now)
                          for c in sorted(self.children.values(), key=lambda c: c.index)],
        }


class Pool(Group):
    """Children that run jobs: one generation of a ``[pools.<name>]``."""

    kind = "pool"
    config: PoolConfig

    def __init__(self, config: PoolConfig, generation: int, max_backoff: float) -> None:
        super().__init__(config.name, generation, config.processes, config.threads,
                         max_backoff)
        self.config = config

    def threads_of(self, index: int) -> int:
        return self.config.threads_of(index)

    def jobs_limit(self) -> int | None:
        """max_jobs_per_child with up to 10% jitter, so children recycle at different times."""
        limit = self.config.max_jobs_per_child
        if limit is None:
            return None
        return limit + random.randint(0, max(0, limit // 10))


class SchedulerGroup(Group):
    """The scheduler child (one per master): it contends for leadership and, leading,
    promotes due jobs and fires periodic ticks."""

    kind = "scheduler"
    config: SchedulerConfig

    def __init__(self, config: SchedulerConfig, generation: int, max_backoff: float,
                 desired: int = 1) -> None:
        super().__init__("scheduler", generation, desired, 0, max_backoff)
        self.config = config

    def label(self, index: int) -> str:
        return "scheduler"


def _failed_to_start(child: Child) -> bool:
    """A child that never got going, as opposed to a working child that died.

    It never reported ready, or it died soon after without running a job. A
    child that ran jobs is replaced at once however young it was: backing off
    would only slow recovery from crashes that are not about starting.
    """
    if child.ready_at is None:
        return True
    ran_jobs = child.scoreboard.jobs_done + child.scoreboard.jobs_failed > 0
    return not ran_jobs and time.monotonic() - child.ready_at < QUICK_DEATH


def close_child_resources(child: Child) -> None:
    try:
        os.close(child.report_fd)
    except OSError:
        pass
    child.scoreboard.close()
