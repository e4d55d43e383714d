"""Life right after fork: signals, title, death with the master, then the work.

A child either runs jobs for a pool (a ``Consumer`` with one slot per thread)
or is the scheduler child (a ``Scheduler``). It never returns: it leaves with
``os._exit`` and a code from ``exits.py``, so nothing the master registered
(atexit, pidfile) runs here.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from setproctitle import setproctitle

from ..core import logs
from ..core.app import App
from ..core.broker import SUCCEEDED
from ..core.config import Deployment, PoolConfig
from ..core.consumer import Consumer, ConsumerHooks
from ..core.identity import NodeId, OwnerId
from ..core.job import Job
from ..core.scheduler import Scheduler, build_scheduler
from .exits import EXIT_BOOT_ERROR, EXIT_CRASH, EXIT_OK, EXIT_ORPHANED
from .scoreboard import RUNNING, STOPPING, Scoreboard
from .stats import StatsRecorder

log = logging.getLogger(__name__)

MASTER_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                  signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
ORPHAN_GRACE = 2.0
STATS_INTERVAL = 1.0  # how often a child sends its per-type counts to the master
_PR_SET_PDEATHSIG = 1


@dataclass
class ChildSpec:
    """Everything a child needs, decided by the master before fork."""

    kind: str  # "pool" or "scheduler"
    label: str  # pool[index], or "scheduler"
    deployment: Deployment
    app: App
    node: NodeId  # the master's (its pid is the parent's): its scheduler leads in its name
    owner: OwnerId | None  # under which a pool child holds its jobs
    scoreboard: Scoreboard
    report_fd: int
    pool: PoolConfig | None = None
    max_jobs: int | None = None
    run_scheduler: bool = False  # thin mode: the one child also schedules
    reimport_app: bool = False  # preload_app = false: fresh code in every child
    close_fds: tuple[int, ...] = ()


def run(spec: ChildSpec) -> NoReturn:
    """Enter the child; leave the process with an exit code, never return."""
    code = EXIT_CRASH
    try:
        code = _Child(spec).main()
    except BaseException:  # report anything, then leave with an exit code
        log.exception("child %s crashed", spec.label)
    finally:
        logs.flush()
        os._exit(code)


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.stats = StatsRecorder()
        self.finished = threading.Event()  # the work has ended: stop sending stats
        self.stop_requested = False  # TERM or INT arrived (read from the wakeup pipe)
        self._wakeup = -1
        self.title = f"bananas-prefork: {spec.label}"

    def main(self) -> int:
        self._take_over_signals()
        if not self._die_with_master():
            return EXIT_ORPHANED
        logs.set_role(self.spec.label)
        setproctitle(f"{self.title} starting")
        random.seed()
        try:
            app = self._load_app()
        except Exception as exc:  # a boot failure is reported to the master, not raised
            self.report(boot_error=f"{type(exc).__name__}: {exc}")
            log.error("child %s cannot start: %s", self.spec.label, exc)
            return EXIT_BOOT_ERROR
        if self.spec.kind == "scheduler":
            return self._schedule(app)
        return self._consume(app)

    # -- setting up -------------------------------------------------------------

    def _take_over_signals(self) -> None:
        """Drop the master's handlers, install ours, then unblock (blocked across fork)."""
        for fd in self.spec.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for signum in MASTER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # A handler only wakes the main loop: the wakeup fd carries the signal number
        # (setting an Event in a handler could deadlock against a thread waiting on it).
        self._wakeup, write = os.pipe()
        for fd in (self._wakeup, write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, wake_only)
        signal.signal(signal.SIGQUIT, lambda *_: os._exit(EXIT_OK))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)

    def _signalled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a signal; True once TERM or INT has arrived."""
        if not self.stop_requested and select.select([self._wakeup], [], [], timeout)[0]:
            try:
                received = os.read(self._wakeup, 64)
            except BlockingIOError:
                received = b""
            self.stop_requested = bool({signal.SIGTERM, signal.SIGINT} & set(received))
        return self.stop_requested

    def _die_with_master(self) -> bool:
        """Ask the kernel for SIGTERM when the master dies; False if it already has."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: the parent check in the main loop still applies
        return os.getppid() == self.spec.node.pid

    def _load_app(self) -> App:
        app = self.spec.app
        if self.spec.reimport_app:
            from .loader import reimport_app

            app = reimport_app(self.spec.deployment)
        configure_app(app, self.spec.deployment)
        return app

    def report(self, **message: Any) -> None:
        """One JSON line to the master (small, so the pipe write is atomic)."""
        try:
            os.write(self.spec.report_fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass

    # -- running ---------------------------------------------------------------------

    def _consume(self, app: App) -> int:
        pool, owner = self.spec.pool, self.spec.owner
        assert pool is not None and owner is not None
        threads = self.spec.scoreboard.threads  # this child's share of the concurrency
        hooks = _ScoreboardHooks(self.spec.scoreboard, self.title, threads, self.stats,
                                 self.refused)
        consumer = Consumer(app, priorities=pool.priorities, job_types=pool.job_types,
                            threads=threads, pool=pool.name, owner=str(owner),
                            heartbeat=True, recovers_others=False, max_jobs=self.spec.max_jobs,
                            job_timeout=pool.job_timeout, hooks=hooks)
        scheduler = self._scheduler(app) if self.spec.run_scheduler else None
        try:
            consumer.start()
        except Exception as exc:  # e.g. Redis went away between the master's check and us
            self.report(boot_error=f"cannot start consuming: {exc}")
            return EXIT_BOOT_ERROR
        scheduling = _start(scheduler.run, "bananas-scheduler") if scheduler else None
        self.spec.scoreboard.set_state(RUNNING)
        hooks.refresh_title()
        self.report(ready=True, owner=str(owner))
        _start(lambda: self._send_stats(scheduler), "bananas-stats")

        def working() -> bool:
            return consumer.is_alive() and consumer.broken is None and \
                (scheduling is None or scheduling.is_alive())

        orphaned_at = self._wait(working, consumer.request_stop, hooks.refresh_title)
        self.finished.set()
        self.spec.scoreboard.set_state(STOPPING)
        if scheduler is not None:
            scheduler.stop()
        if orphaned_at is not None:
            consumer.stop(timeout=max(0.0, orphaned_at + ORPHAN_GRACE - time.monotonic()))
            return EXIT_ORPHANED
        consumer.stop()
        self._flush_stats()
        if self.stop_requested:
            return EXIT_OK
        if consumer.exhausted and consumer.broken is None:
            self.report(leaving="recycling: max_jobs_per_child reached")
            return EXIT_OK
        return self._broke(consumer.broken or "the scheduler thread ended")

    def _send_stats(self, scheduler: Any = None) -> None:
        """Once a second: what this child's jobs did since the last time, and whether
        its scheduler leads."""
        while not self.finished.wait(STATS_INTERVAL):
            self._flush_stats(scheduler)

    def _flush_stats(self, scheduler: Any = None) -> None:
        delta = self.stats.flush()
        if delta:
            self.report(stats=delta)
        if scheduler is not None:
            self.report(scheduler={"leading": scheduler.is_leader,
                                   "promoted": scheduler.promoted})

    def _schedule(self, app: App) -> int:
        scheduler = self._scheduler(app)
        thread = _start(scheduler.run, "bananas-scheduler")
        self.spec.scoreboard.set_state(RUNNING)
        setproctitle(f"{self.title} running")
        self.report(ready=True)
        _start(lambda: self._send_stats(scheduler), "bananas-stats")
        orphaned_at = self._wait(thread.is_alive, scheduler.stop)
        self.finished.set()
        scheduler.stop()
        thread.join(ORPHAN_GRACE if orphaned_at is not None else None)
        if orphaned_at is not None:
            return EXIT_ORPHANED
        return EXIT_OK if self.stop_requested else self._broke("the scheduler thread ended")

    def _broke(self, why: str) -> int:
        """A loop of this child ended on its own: leave, so that the master starts a whole
        child in its place (never a pool quietly short of a slot, or no scheduler)."""
        log.error("child %s cannot go on (%s); exiting to be replaced", self.spec.label, why)
        self.report(leaving=f"crashed: {why}", crashed=True)
        return EXIT_CRASH

    def _scheduler(self, app: App) -> Scheduler:
        """The scheduler, stamping the scoreboard's entry after the job slots' as it goes."""
        board = self.spec.scoreboard
        return build_scheduler(app, self.spec.deployment, self.spec.node,
                               heartbeat=lambda: board.slot_alive(board.threads),
                               on_redis_refusal=self.refused)

    def refused(self, where: str, error: str | None) -> None:
        """Tell the master a loop of ours is refused by Redis (for status), or no longer."""
        self.report(redis_refusal={"where": where, "error": error})

    def _wait(self, alive: Callable[[], bool], request_stop: Callable[[], None],
              tick: Callable[[], None] | None = None) -> float | None:
        """Run until the work ends; pass on stop signals; notice a dead master;
        ``tick`` on every pass (four times a second).

        Returns when the work has ended, or as soon as the master is found dead
        (then with the time it was noticed, so the caller can bound the rest).
        """
        stopping = False
        while alive():
            if self._signalled(0.25) and not stopping:
                stopping = True
                request_stop()
            if os.getppid() != self.spec.node.pid:
                log.warning("master %d is gone; stopping", self.spec.node.pid)
                request_stop()
                return time.monotonic()
            self.spec.scoreboard.beat()
            if tick is not None:
                tick()
        return None


def wake_only(signum: int, frame: object) -> None:
    """A handler for signals the wakeup fd (set_wakeup_fd) already carries to the main
    loop, a child's or the master's: nothing runs here."""


def _start(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True, name=name)
    thread.start()
    return thread


def configure_app(app: App, deployment: Deployment) -> None:
    """The deployment's connection and retention settings win over the App's own."""
    app.configure(redis_url=deployment.redis_url, namespace=deployment.namespace,
                  owner_ttl=deployment.owner_ttl, result_ttl=deployment.result_ttl,
                  done_ttl=deployment.done_ttl, dead_ttl=deployment.dead_ttl,
                  dead_max=deployment.dead_max, max_redeliveries=deployment.max_redeliveries,
                  min_replicas_ack=deployment.min_replicas_ack)


class _ScoreboardHooks(ConsumerHooks):
    """Reports every job to the master's scoreboard and the stats; the process title
    follows at the child's next heartbeat (``refresh_title``), not per job:
    setproctitle costs more than the rest of a short job's bookkeeping."""

    def __init__(self, scoreboard: Scoreboard, title: str, threads: int,
                 stats: StatsRecorder, refused: Callable[[str, str | None], None]) -> None:
        self.refused = refused
        self.scoreboard = scoreboard
        self.stats = stats
        self.title = title
        self.threads = threads
        self.busy = 0
        self.job_type: str | None = None  # of the last job started
        self.shown = ""
        self.lock = threading.Lock()

    def on_redis_refusal(self, where: str, error: str | None) -> None:
        self.refused(where, error)

    def on_job_start(self, slot: int, job: Job, timeout: float | None) -> None:
        self.scoreboard.job_started(slot, job.id, job.name, job.attempt, timeout)
        self.stats.record_start(job.name, time.time() - job.waiting_since)
        with self.lock:
            self.busy += 1
            self.job_type = job.name

    def on_job_end(self, slot: int, job: Job, outcome: str, duration: float) -> None:
        self.scoreboard.job_ended(slot, outcome == SUCCEEDED)
        self.stats.record(job.name, outcome, duration)
        with self.lock:
            self.busy -= 1

    def on_alive(self, slot: int) -> None:
        self.scoreboard.slot_alive(slot)

    def refresh_title(self) -> None:
        with self.lock:
            busy, job_type = self.busy, self.job_type
        if not busy:
            title = f"{self.title} idle"
        elif self.threads == 1:
            title = f"{self.title} busy {job_type}"
        else:
            title = f"{self.title} busy {busy}/{self.threads}"
        if title != self.shown:
            setproctitle(title)
            self.shown = title
