"""The consumer: runs jobs in the slots of one process, a thread each.

Each slot runs one job at a time. A slot only fetches when it is free, so a consumer
never holds more jobs than it runs (no prefetch to strand or reorder). After
a job, one ``step`` call settles it and fetches the next: one round trip per
job. An idle slot blocks on its wake-up lists, so a new job starts within
milliseconds; the blocking timeout is only a backstop.

The prefork child runs this same class; ``ConsumerHooks`` is how it reports
each job to its master. Standalone, a heartbeat thread keeps the owner alive
and recovers the jobs of owners that died.

No slot ever stops on its own. A Redis error, of any kind, is waited out and
the same call sent again (every step is idempotent); a refusal that only an
operator can fix is reported once and retried slowly. Anything else that
escapes a slot marks the consumer ``broken``: its process must end so that a
whole one replaces it, never a pool quietly short of a slot.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import redis

from . import job as jobs
from .app import App, Task
from .broker import (
    DEAD,
    LOST_OWNERSHIP,
    NOTHING_KEPT,
    RETRY,
    SUCCEEDED,
    Broker,
    Settlement,
    StepChannel,
)
from .errors import Trouble, describe
from .identity import OwnerId
from .job import Job, JobContext
from .keys import ANY_TYPE, PRIORITIES
from .retry import DEFAULT_POLICY

log = logging.getLogger(__name__)

MAX_TRACEBACK = 20_000
HEARTBEAT_JOIN_TIMEOUT = 5.0  # a heartbeat stuck in a Redis call is abandoned (daemon thread)


class ConsumerHooks:
    """No-op callbacks; the prefork child overrides them to report to its master."""

    def on_job_start(self, slot: int, job: Job, timeout: float | None) -> None:
        """A slot started a job (``timeout``: its hard limit, if any)."""

    def on_job_end(self, slot: int, job: Job, outcome: str, duration: float) -> None:
        """A slot finished a job: ``outcome`` is succeeded, retry or dead."""

    def on_redis_refusal(self, where: str, error: str | None) -> None:
        """Redis refuses the calls of one loop (``where``) for a reason only an operator
        can fix (``error``), or that loop's calls go through again (None)."""

    def on_alive(self, slot: int) -> None:
        """A slot runs no job and is not stuck: it waits for work or for Redis (called at
        least once per idle timeout, and on every retry)."""


class SoloGate:
    """Lets a job that may have killed its child run with no other job beside it.

    A job whose child died with it and other running jobs ``max_redeliveries``
    times (its options say ``solo``) waits, holding its slot, until every other
    slot has finished its job; meanwhile no slot fetches. Then it runs alone: if
    it kills the child again, it was the culprit and it alone ends dead.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holding = 0  # slots holding a job, running it or waiting to run it alone
        self._waiting = 0  # of those, slots waiting to run theirs alone
        self._alone = False

    def is_open(self) -> bool:
        """Whether a slot may fetch: no job is waiting to run alone, none is."""
        return not (self._waiting or self._alone)

    def wait_open(self, alive: Callable[[], None], stopping: threading.Event) -> None:
        with self._cond:
            while not self.is_open() and not stopping.is_set():
                alive()
                self._cond.wait(0.5)

    def took(self) -> None:
        with self._cond:
            self._holding += 1

    def released(self) -> None:
        with self._cond:
            self._holding -= 1
            self._cond.notify_all()

    def run_alone(self, alive: Callable[[], None]) -> None:
        with self._cond:
            self._waiting += 1
            while self._alone or self._holding - self._waiting > 0:
                alive()
                self._cond.wait(0.5)
            self._waiting -= 1
            self._alone = True

    def alone_done(self) -> None:
        with self._cond:
            self._alone = False
            self._cond.notify_all()


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
        recovers_others: bool = True,
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
        self.heartbeat = heartbeat  # renew our own liveness (a master renews it too)
        self.recovers_others = recovers_others  # and look for owners that died
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
        self._gate = SoloGate()
        self._heartbeat: threading.Thread | None = None
        self.broken: str | None = None  # why a slot died, if one did: end this process
        self.exhausted = False  # stopped itself after max_jobs
        self._wake_keys = self.broker.wake_keys(self.priorities, self.job_types, self.owner)

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
                                reason="worker lost: its consumer stopped before the job finished")
        except redis.RedisError as exc:
            log.warning("could not release jobs of %s (they return when its liveness "
                        "expires): %s", self.owner, exc)

    def run(self) -> None:
        """Start (unless started) and block until every slot has ended.

        Raises RuntimeError when a slot died of an unexpected error (after the others
        stopped), so that a process running this ends and is restarted whole.
        """
        if not self._slots:
            self.start()
        for thread in self._slots:
            while thread.is_alive():
                thread.join(0.5)
        if not self._stopped.is_set():
            self._finish()
        if self.broken is not None:
            raise RuntimeError(f"consumer {self.owner} broke: {self.broken}")

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
        trouble = Trouble(f"slot {slot} of {self.owner}", self.hooks.on_redis_refusal)
        try:
            self._loop(slot, channel, trouble)
        except BaseException as exc:  # a bug or a broken hook: the process must go
            self.broken = f"slot {slot}: {describe(exc)}"
            log.exception("slot %d of %s died; stopping the consumer", slot, self.owner)
            self.request_stop()
        finally:
            channel.close()

    def _loop(self, slot: int, channel: StepChannel, trouble: Trouble) -> None:
        settlement: Settlement | None = None
        while True:
            if settlement is None:  # holding nothing: the one place a slot may wait its turn
                self._gate.wait_open(lambda: self.hooks.on_alive(slot), self._stopping)
            fetch = not self._stopping.is_set() and self._gate.is_open() and \
                self._take_ticket()
            if settlement is None and not fetch:
                if self._stopping.is_set():
                    return
                continue
            status, job = self._step(slot, channel, trouble, settlement, fetch)
            if settlement is not None:
                self._after_settle(settlement, status)
                self._gate.released()
            if job is None:
                settlement = None
                if not fetch:
                    continue  # settled only: stopping, or a solo run waits for the slots
                self._idle(slot, trouble)
                channel.woke = True
                continue
            self._gate.took()
            settlement = self._run(slot, job)

    def _take_ticket(self) -> bool:
        """Count a job about to be fetched; False once max_jobs is reached."""
        with self._count_lock:
            exhausted = self.max_jobs is not None and self._started_jobs >= self.max_jobs
            if not exhausted:
                self._started_jobs += 1
        if exhausted:
            self.exhausted = True
            self.request_stop()
        return not exhausted

    def _return_ticket(self) -> None:
        with self._count_lock:
            self._started_jobs -= 1

    def _step(self, slot: int, channel: StepChannel, trouble: Trouble,
              settlement: Settlement | None, fetch: bool) -> tuple[int | None, Job | None]:
        """One step, sent again after any Redis error until it goes through (the step is
        idempotent); a stopping slot with nothing to settle gives up instead."""
        while True:
            try:
                status, job = channel.step(settlement, fetch)
            except redis.RedisError as exc:
                if self._stopping.is_set() and settlement is None:
                    if fetch:
                        self._return_ticket()
                    return None, None
                self.hooks.on_alive(slot)
                time.sleep(trouble.failed(exc))
                continue
            trouble.recovered()
            if fetch and job is None:
                self._return_ticket()
            return status, job

    def _idle(self, slot: int, trouble: Trouble) -> None:
        self.hooks.on_alive(slot)
        try:
            self.broker.wait_for_work(self._wake_keys, self.idle_timeout)
        except redis.RedisError as exc:
            time.sleep(trouble.failed(exc))

    def _after_settle(self, settlement: Settlement, status: int | None) -> None:
        if status == LOST_OWNERSHIP:
            log.warning("job %s (%s) attempt %d: result ignored, this consumer no longer "
                        "owns it (it was recovered and handed to another)",
                        settlement.job.id, settlement.job.name, settlement.job.attempt)

    # -- running a job -------------------------------------------------------

    def _run(self, slot: int, job: Job) -> Settlement:
        task = self.app.tasks.get(job.name)
        options = job.options()
        timeout = self._timeout_for(options, task)
        solo = bool(options.get("solo"))
        if solo:
            log.info("job %s (%s) runs alone: its child died with it and others %d times",
                     job.id, job.name, job.attempt - 1)
            self._gate.run_alone(lambda: self.hooks.on_alive(slot))
        self.hooks.on_job_start(slot, job, timeout)
        started = time.monotonic()
        try:
            settlement = self._execute(job, task)
        finally:
            if solo:
                self._gate.alone_done()
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

    def _timeout_for(self, options: dict[str, Any],
                     task: Task[..., object] | None) -> float | None:
        override = options.get("timeout")
        if isinstance(override, int | float) and override > 0:
            return float(override)
        if task is not None and task.timeout is not None:
            return task.timeout
        return self.job_timeout

    def _execute(self, job: Job, task: Task[..., object] | None) -> Settlement:
        if task is None:
            return Settlement(DEAD, job, f"unknown task {job.name!r}: no task of that name "
                                         "is registered in this process's app")
        try:
            args, kwargs = job.decode_arguments()
        except ValueError as exc:
            return Settlement(DEAD, job, str(exc))
        token = jobs.set_current_job(JobContext.of(job, self.pool))
        try:
            result = task.fn(*args, **kwargs)
        except BaseException as exc:  # a job must never take its slot down
            return self._failure(job, task, exc)
        finally:
            jobs.reset_current_job(token)
        if result is None or not task.store_result:
            return Settlement(SUCCEEDED, job, NOTHING_KEPT)
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
        trouble = Trouble(f"heartbeat of {self.owner}", self.hooks.on_redis_refusal)
        while not self._stopped.wait(interval):
            try:
                self.broker.renew_owners([self.owner])
                if self.recovers_others and time.monotonic() >= next_scan:
                    self.broker.recover_dead_owners()
                    next_scan = time.monotonic() + self.broker.owner_ttl
            except redis.RedisError as exc:
                trouble.failed(exc)  # the next beat is the retry
            else:
                trouble.recovered()

