"""One pool's children as the master sees them: desired size, spawn backoff, failures."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

import psutil

from .config import PoolConfig
from .monitor import Sample
from .scoreboard import Scoreboard, SlotView

QUICK_DEATH = 5.0  # a child dying sooner than this after spawn counts as failing to start
FAILING_AFTER = 3  # consecutive quick deaths before the pool shows as failing


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
        self.created_at = time.monotonic()

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
        if expected:
            return
        self.restarts += 1
        if error:
            self.last_error = error
        quick = time.monotonic() - worker.spawned_at < QUICK_DEATH or worker.ready_at is None
        if not quick:
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

    def jobs_limit(self) -> int | None:
        """max_jobs_per_child with up to 10% jitter, so children recycle at different times."""
        limit = self.config.max_jobs_per_child if self.config else None
        if limit is None:
            return None
        return limit + random.randint(0, max(0, limit // 10))


def close_worker_resources(worker: Worker) -> None:
    try:
        os.close(worker.report_fd)
    except OSError:
        pass
    worker.scoreboard.close()
