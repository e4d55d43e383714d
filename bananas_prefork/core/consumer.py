"""The consumer: runs jobs in the slots of one process, a thread each.

Each slot runs one job at a time. A slot only fetches when it is free, so a consumer
never holds more jobs than it runs (no prefetch to strand or reorder). After
a job, one ``step`` call settles it and fetches the next: one round trip per
job. An idle slot blocks on its wake-up lists, so a new job starts within
milliseconds; the blocking timeout is only a backstop.

The prefork child runs this same class; ``ConsumerHooks`` is how it reports
each job to its master. Standalone, a heartbeat thread keeps the owner alive
and recovers the jobs of owners that died.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections.abc import Sequence

import redis

from . import job as jobs
from .app import App, Task
from .broker import DEAD, LOST_OWNERSHIP, RETRY, SUCCEEDED, Broker, Settlement, StepChannel
from .identity import OwnerId
from .job import Job, JobContext
from .keys import ANY_TYPE, PRIORITIES
from .retry import DEFAULT_POLICY

log = logging.getLogger(__name__)

MAX_TRACEBACK = 20_000
RECONNECT_BACKOFF_CAP = 5.0
HEARTBEAT_JOIN_TIMEOUT = 5.0  # a heartbeat stuck in a Redis call is abandoned (daemon thread)


class ConsumerHooks:
    """No-op callbacks; the prefork child overrides them to report to its master."""

    def on_job_start(self, slot: int, job: Job, timeout: float | None) -> None:
        """A slot started a job (``timeout``: its hard limit, if any)."""

    def on_job_end(self, slot: int, job: Job, outcome: str, duration: float) -> None:
        """A slot finished a job: ``outcome`` is succeeded, retry or dead."""

    def on_idle(self, slot: int) -> None:
        """A slot is waiting for work (called at least once per idle timeout)."""


class Consumer:
    """Fetch-run-settle loops for one owner, one per slot (thread)."""

    def __init__(
        self,
        app: App,
        *,
        priorities: Sequence[str] = PRIORITIES,
        job_types: Sequence[str] = (ANY_TYPE,),
        threads: int = 1,
        pool: str | None = None,
        owner: str | None = None,
        heartbeat: bool = True,
        max_jobs: int | None = None,
        job_timeout: float | None = None,
        idle_timeout: float = 2.0,
        hooks: ConsumerHooks | None = None,
        broker: Broker | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.app = app
        self.broker = broker or app.broker
        self.priorities = tuple(priorities)
        self.job_types = (ANY_TYPE,) if ANY_TYPE in job_types else tuple(job_types)
        self.threads = threads
        self.pool = pool
        self.owner = owner or str(OwnerId.new(master_pid=0))
        self.heartbeat = heartbeat
        self.max_jobs = max_jobs
        self.job_timeout = job_timeout
        self.idle_timeout = idle_timeout
        self.hooks = hooks or ConsumerHooks()
        self.jobs_done = 0
        self.jobs_failed = 0
        self._started_jobs = 0
        self._count_lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._slots: list[threading.Thread] = []
        self._heartbeat: threading.Thread | None = None
        self._wake_keys = [*self.broker.wake_keys(self.priorities, self.job_types),
                           self.broker.keys.control(self.owner)]

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.broker.renew_owners([self.owner])
        for slot in range(self.threads):
            thread = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                      name=f"bananas-slot-{slot}")
            thread.start()
            self._slots.append(thread)
        if self.heartbeat:
            self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                               name="bananas-heartbeat")
            self._heartbeat.start()
        log.info("consumer %s started: %d thread(s), priorities %s, job types %s", self.owner,
                 self.threads, ",".join(self.priorities), ",".join(self.job_types))

    def stop(self, timeout: float | None = None) -> bool:
        """Stop fetching, let running jobs finish (up to ``timeout``), release the rest.

        Returns True when every running job finished in time.
        """
        self.request_stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._slots:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        finished = not self.is_alive()
        self._finish()  # unfinished jobs go back unharmed: stopping is not their fault
        return finished

    def request_stop(self) -> None:
        """Stop fetching new jobs; safe to call from any thread, more than once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self.broker.wake_owner(self.owner, self.threads)
        except redis.RedisError:
            pass  # idle threads then notice within their idle timeout

    def release(self, lost_run: bool = False) -> None:
        """Give back whatever this owner still holds and drop its liveness key."""
        try:
            self.broker.recover(self.owner, known_dead=True, lost_run=lost_run,
                                reason="worker stopped before the job finished")
        except redis.RedisError as exc:
            log.warning("could not release jobs of %s (they return when its liveness "
                        "expires): %s", self.owner, exc)

    def run(self) -> None:
        """Start (unless started) and block until every thread has ended."""
        if not self._slots:
            self.start()
        for thread in self._slots:
            while thread.is_alive():
                thread.join(0.5)
        if not self._stopped.is_set():
            self._finish()

    def _finish(self) -> None:
        """End the heartbeat first, so that no renewal can revive the owner after the release."""
        self._stopped.set()
        if self._heartbeat is not None:
            self._heartbeat.join(HEARTBEAT_JOIN_TIMEOUT)
        self.release()

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self._slots)

    # -- one slot ------------------------------------------------------------

    def _work(self, slot: int) -> None:
        channel = self.broker.channel(self.owner, slot, self.priorities, self.job_types)
        try:
            self._loop(slot, channel)
        finally:
            channel.close()

    def _loop(self, slot: int, channel: StepChannel) -> None:
        settlement: Settlement | None = None
        while True:
            fetch = not self._stopping.is_set() and self._take_ticket()
            if settlement is None and not fetch:
                return
            status, job = self._step(channel, settlement, fetch)
            if settlement is not None:
                self._after_settle(settlement, status)
            if job is None and not fetch:
                return
            if job is None:
                settlement = None
                self._idle(slot)
                channel.woke = True
                continue
            settlement = self._run(slot, job)

    def _take_ticket(self) -> bool:
        """Count a job about to be fetched; False once max_jobs is reached."""
        with self._count_lock:
            exhausted = self.max_jobs is not None and self._started_jobs >= self.max_jobs
            if not exhausted:
                self._started_jobs += 1
        if exhausted:
            self.request_stop()
        return not exhausted

    def _return_ticket(self) -> None:
        with self._count_lock:
            self._started_jobs -= 1

    def _step(self, channel: StepChannel, settlement: Settlement | None,
              fetch: bool) -> tuple[int | None, Job | None]:
        """One step, retried across Redis outages (the step is idempotent)."""
        failures = 0
        while True:
            try:
                status, job = channel.step(settlement, fetch)
                if fetch and job is None:
                    self._return_ticket()
                return status, job
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failures += 1
                if self._stopping.is_set() and settlement is None:
                    if fetch:
                        self._return_ticket()
                    return None, None
                wait = min(RECONNECT_BACKOFF_CAP, 0.1 * 2 ** failures) * random.uniform(0.5, 1)
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, wait)
                time.sleep(wait)

    def _idle(self, slot: int) -> None:
        self.hooks.on_idle(slot)
        try:
            self.broker.wait_for_work(self._wake_keys, self.idle_timeout)
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(random.uniform(0.5, 1.0))

    def _after_settle(self, settlement: Settlement, status: int | None) -> None:
        if status == LOST_OWNERSHIP:
            log.warning("job %s (%s) attempt %d: result ignored, this consumer no longer "
                        "owns it (it was recovered and handed to another)",
                        settlement.job.id, settlement.job.name, settlement.job.attempt)

    # -- running a job -------------------------------------------------------

    def _run(self, slot: int, job: Job) -> Settlement:
        task = self.app.tasks.get(job.name)
        timeout = self._timeout_for(job, task)
        self.hooks.on_job_start(slot, job, timeout)
        started = time.monotonic()
        settlement = self._execute(job, task)
        duration = time.monotonic() - started
        with self._count_lock:
            if settlement.mode == SUCCEEDED:
                self.jobs_done += 1
            else:
                self.jobs_failed += 1
        self.hooks.on_job_end(slot, job, settlement.mode, duration)
        if settlement.mode != SUCCEEDED:
            log.warning("job %s (%s) attempt %d failed: %s -> %s", job.id, job.name,
                        job.attempt, settlement.payload,
                        "retry in %.1fs" % settlement.delay if settlement.mode == RETRY else "dead")
        return settlement

    def _timeout_for(self, job: Job, task: Task[..., object] | None) -> float | None:
        override = job.options().get("timeout")
        if isinstance(override, int | float) and override > 0:
            return float(override)
        if task is not None and task.timeout is not None:
            return task.timeout
        return self.job_timeout

    def _execute(self, job: Job, task: Task[..., object] | None) -> Settlement:
        if task is None:
            return Settlement(DEAD, job, f"unknown task {job.name!r}: no task of that name "
                                         "is registered in this worker's app")
        try:
            args, kwargs = job.decode_arguments()
        except ValueError as exc:
            return Settlement(DEAD, job, str(exc))
        token = jobs.set_current_job(JobContext.of(job, self.pool))
        try:
            result = task.fn(*args, **kwargs)
        except BaseException as exc:  # a job must never take its worker down
            return self._failure(job, task, exc)
        finally:
            jobs.reset_current_job(token)
        try:
            return Settlement(SUCCEEDED, job, jobs.dumps(result, f"result of task {job.name}"))
        except ValueError as exc:
            return Settlement(DEAD, job, str(exc))

    def _failure(self, job: Job, task: Task[..., object], exc: BaseException) -> Settlement:
        policy = task.retry if task else DEFAULT_POLICY
        return policy.settle_failure(job, f"{type(exc).__name__}: {exc}",
                                     traceback.format_exc()[-MAX_TRACEBACK:])

    # -- standalone liveness ---------------------------------------------------

    def _beat(self) -> None:
        """Keep this owner alive and recover the jobs of owners that died."""
        interval = max(0.05, self.broker.liveness / 3)
        next_scan = 0.0
        while not self._stopped.wait(interval):
            try:
                self.broker.renew_owners([self.owner])
                if time.monotonic() >= next_scan:
                    self.broker.recover_dead_owners()
                    next_scan = time.monotonic() + self.broker.owner_ttl
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

