"""One pool's children as the master sees them: desired size, spawn backoff, failures."""

from __future__ import annotations

import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..core.config import PoolConfig
from .monitor import Sample
from .scoreboard import Scoreboard, SlotView
from .stats import TypeStats

QUICK_DEATH = 5.0  # a child dying this soon after ready, having run nothing, failed to start
FAILING_AFTER = 3  # consecutive quick deaths before the pool shows as failing
RATE_WINDOW = 60.0  # processed/failed per minute are measured over this


@dataclass(eq=False)
class Worker:
    """A child process of a pool."""

    pid: int
    pool: Pool
    index: int
    owner: str | None
    scoreboard: Scoreboard
    report_fd: int
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
        return self.pool.label(self.index)

    def state(self) -> str:
        """starting, idle, busy or stopping, as status shows it."""
        if self.stopping:
            return "stopping"
        if self.ready_at is None:
            return "starting"
        return "busy" if self.last_busy else "idle"

    def describe(self, now: float) -> dict[str, Any]:
        """This child as ``status --json`` shows it (job type and age, never arguments)."""
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


class Pool:
    """Desired vs actual children of one pool (or of the scheduler)."""

    def __init__(self, name: str, config: PoolConfig | None, generation: int,
                 max_backoff: float) -> None:
        self.name = name
        self.config = config  # None for the scheduler
        self.generation = generation
        self.desired = 1 if config is None else config.processes
        self.max_backoff = max_backoff
        self.workers: dict[int, Worker] = {}
        self.draining = False
        self.successor: Pool | None = None
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

    @property
    def kind(self) -> str:
        return "scheduler" if self.config is None else "pool"

    @property
    def threads(self) -> int:
        return 1 if self.config is None else self.config.threads

    def label(self, index: int) -> str:
        return self.name if self.config is None else f"{self.name}[{index}]"

    def active(self) -> list[Worker]:
        return [w for w in self.workers.values() if not w.stopping]

    def missing(self) -> int:
        return 0 if self.draining else max(0, self.desired - len(self.active()))

    def is_up(self) -> bool:
        """Every wanted child is running and ready."""
        ready = [w for w in self.active() if w.ready_at is not None]
        return len(ready) >= self.desired

    @property
    def failing(self) -> bool:
        return self.failures >= FAILING_AFTER

    def free_index(self) -> int:
        used = {w.index for w in self.workers.values()}
        return next(i for i in range(len(used) + 1) if i not in used)

    def may_spawn(self, now: float) -> bool:
        return now >= self.next_spawn_at

    def child_died(self, worker: Worker, expected: bool, error: str | None) -> None:
        """Book a death; quick unexpected deaths back off, exponentially, with jitter."""
        del self.workers[worker.pid]
        self.retired_done += worker.scoreboard.jobs_done
        self.retired_failed += worker.scoreboard.jobs_failed
        if expected:
            return
        self.restarts += 1
        if error:
            self.last_error = error
        if not _failed_to_start(worker):
            self.failures = 0
            return
        self.failures += 1
        if self.failures > 1:
            delay = min(self.max_backoff, 0.25 * 2 ** (self.failures - 1))
            self.next_spawn_at = time.monotonic() + delay * random.uniform(0.8, 1.2)

    def child_ready(self, worker: Worker) -> None:
        worker.ready_at = time.monotonic()

    def child_settled(self) -> None:
        """A child stayed up long enough: whatever failed before is over."""
        self.failures = 0
        self.last_error = None

    # -- figures for status -------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """Jobs done and failed by every child this pool ever had."""
        done = self.retired_done + sum(w.scoreboard.jobs_done for w in self.workers.values())
        failed = self.retired_failed + sum(w.scoreboard.jobs_failed
                                           for w in self.workers.values())
        return done, failed

    def slots(self) -> tuple[int, int]:
        """(busy, wanted) thread slots."""
        busy = sum(len(w.last_busy) for w in self.active())
        return busy, self.desired * self.threads

    def observe(self, now: float, busy_threshold: float) -> None:
        """Sample once per publish: rates and the 'since when' of alert conditions."""
        done, failed = self.totals()
        self.history.append((now, done, failed))
        while self.history and now - self.history[0][0] > RATE_WINDOW:
            self.history.popleft()
        busy, wanted = self.slots()
        saturated = wanted > 0 and busy / wanted > busy_threshold
        self.busy_since = (self.busy_since or now) if saturated else None
        live = any(w.ready_at is not None for w in self.active())
        self.empty_since = None if live or self.desired == 0 else (self.empty_since or now)

    def per_minute(self) -> tuple[float, float]:
        if len(self.history) < 2:
            return 0.0, 0.0
        (t0, d0, f0), (t1, d1, f1) = self.history[0], self.history[-1]
        span = max(t1 - t0, 1.0)
        return (d1 - d0) * 60 / span, (f1 - f0) * 60 / span

    def describe(self, now: float) -> dict[str, Any]:
        """This pool as ``status --json`` shows it."""
        assert self.config is not None
        done, failed = self.totals()
        busy, wanted = self.slots()
        processed, failing_rate = self.per_minute()
        if self.draining:
            state = "stopping"
        elif self.failing:
            state = "failing"
        else:
            state = "running" if self.is_up() else "starting"
        return {
            "name": self.name,
            "mode": self.config.mode,
            "priorities": list(self.config.priorities),
            "job_types": list(self.config.job_types),
            "concurrency": wanted,
            "threads": self.threads,
            "processes_wanted": self.desired,
            "generation": self.generation,
            "state": state,
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
            "processes": [w.describe(now) for w in sorted(self.workers.values(),
                                                         key=lambda w: w.index)],
        }

    def jobs_limit(self) -> int | None:
        """max_jobs_per_child with up to 10% jitter, so children recycle at different times."""
        limit = self.config.max_jobs_per_child if self.config else None
        if limit is None:
            return None
        return limit + random.randint(0, max(0, limit // 10))


def _failed_to_start(worker: Worker) -> bool:
    """A child that never got going, as opposed to a working child that died.

    It never reported ready, or it died soon after without running a job. A
    child that ran jobs is replaced at once however young it was: backing off
    would only slow recovery from crashes that are not about starting.
    """
    if worker.ready_at is None:
        return True
    ran_jobs = worker.scoreboard.jobs_done + worker.scoreboard.jobs_failed > 0
    return not ran_jobs and time.monotonic() - worker.ready_at < QUICK_DEATH


def close_worker_resources(worker: Worker) -> None:
    try:
        os.close(worker.report_fd)
    except OSError:
        pass
    worker.scoreboard.close()
