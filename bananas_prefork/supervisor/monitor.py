"""Health decisions about one child, from its scoreboard and a psutil sample.

Pure functions: the master samples, asks ``judge`` and carries out the
verdict, so every rule here is testable without processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from ..core.config import PoolConfig
from .scoreboard import SlotView

KILL, TERM = "kill", "term"


@dataclass(frozen=True)
class Sample:
    rss_mb: float
    cpu_percent: float


@dataclass(frozen=True)
class Verdict:
    action: str  # KILL or TERM
    reason: str
    lost_run: bool  # the child's unfinished jobs count as lost runs when recovered
    timed_out: SlotView | None = None


def sample(process: psutil.Process) -> Sample | None:
    """RSS and CPU of a child; None once it is gone."""
    try:
        with process.oneshot():
            return Sample(process.memory_info().rss / 1048576, process.cpu_percent(None))
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def judge(pool: PoolConfig, busy: list[SlotView], measured: Sample, now: float,
          stopping: bool) -> Verdict | None:
    """What to do with a child now, if anything.

    Order matters: a runaway allocation is killed before anything else; a job
    past its hard limit is stopped even if the child is already draining;
    memory recycling waits for the child to finish its current jobs.
    """
    hard = pool.max_memory_mb_hard
    if hard is not None and measured.rss_mb > hard:
        return Verdict(KILL, f"memory {measured.rss_mb:.0f} MB above the hard limit {hard} MB",
                       lost_run=True)
    for slot in busy:
        if slot.timeout is not None and now - slot.started_at > slot.timeout:
            return Verdict(TERM, f"job {slot.job_id} ({slot.job_type}) ran past its "
                                 f"{slot.timeout:g}s hard limit", lost_run=False, timed_out=slot)
    soft = pool.max_memory_mb
    if soft is not None and measured.rss_mb > soft and not stopping:
        return Verdict(TERM, f"recycling: memory {measured.rss_mb:.0f} MB above {soft} MB",
                       lost_run=False)
    return None
