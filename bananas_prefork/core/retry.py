"""The retry policy: how many runs a job gets, how long it waits between them,
and what a failed run settles as.

A task carries its policy; per-job options given at enqueue (``max_retries``)
win over it; a job whose task the running process does not know gets the
defaults. The consumer (a failed run) and the master (a run killed at its hard
limit) both settle failures through ``RetryPolicy.settle_failure``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .broker import DEAD, RETRY, Settlement
from .job import Job

DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF = 1.0
DEFAULT_BACKOFF_MAX = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: float = DEFAULT_BACKOFF  # the first retry's delay, about
    backoff_max: float = DEFAULT_BACKOFF_MAX

    def delay(self, attempt: int, rand: float) -> float:
        """Exponential backoff with equal jitter: the n-th retry waits between half and
        the whole of ``backoff * 2**(n-1)`` (capped), so a burst of failures does not
        come back as a burst, and no retry comes back at once. ``rand`` is in [0, 1).
        """
        step = min(self.backoff_max, self.backoff * math.pow(2.0, max(0, attempt - 1)))
        return step * (0.5 + rand / 2.0)

    def settle_failure(self, job: Job, error: str, trace: str = "") -> Settlement:
        """Retry with backoff while the job has retries left, else dead."""
        max_retries = job.options().get("max_retries", self.max_retries)
        if job.attempt > max_retries:
            return Settlement(DEAD, job, error, trace)
        return Settlement(RETRY, job, error, trace, self.delay(job.attempt, random.random()))


DEFAULT_POLICY = RetryPolicy()
