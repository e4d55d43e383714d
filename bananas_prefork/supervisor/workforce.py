"""The master's children: forking them, reading what they report, reaping them,
judging their health, and giving back what the dead held.

The master's state machine decides *when* (on a signal, on a tick, while
stopping); this module knows *how*. It owns every pool, including pools that
are draining after a reload and the scheduler's pool of one.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from ..core.app import App
from ..core.broker import Broker
from ..core.config import Deployment, PoolConfig
from ..core.consumer import owner_id
from ..core.job import Job
from ..core.retry import DEFAULT_POLICY
from . import child_main as child
from . import monitor
from .child_main import EXIT_BOOT_ERROR, EXIT_OK, MASTER_SIGNALS, ChildSpec
from .pool import QUICK_DEATH, Pool, Worker, close_worker_resources
from .scoreboard import Scoreboard
from .stats import merge as merge_stats

log = logging.getLogger(__name__)

KILL_GRACE = 1.0  # a child TERMed for a hard timeout gets this long before KILL


@dataclass
class Recovery:
    """Jobs of a dead child still to be given back (Redis was unreachable)."""

    owner: str
    lost_run: bool
    reason: str


class Workforce:
    """Every pool of one master and the children in them."""

    def __init__(self, deployment: Deployment, app: App, broker: Broker, master_pid: int,
                 selector: selectors.BaseSelector,
                 inherited_fds: Callable[[], list[int]]) -> None:
        self.deployment = deployment
        self.app = app
        self.broker = broker
        self.master_pid = master_pid
        self.selector = selector
        self.inherited_fds = inherited_fds  # the master's descriptors a child must close
        self.pools: list[Pool] = []
        self.generation = 0
        self.pending: list[Recovery] = []
        self.scheduler_state: dict[str, Any] = {}
        self.add_pools(deployment)

    def configure(self, deployment: Deployment, app: App, broker: Broker) -> None:
        """After a reload: new children get the new deployment, code and connection."""
        self.deployment, self.app, self.broker = deployment, app, broker

    # -- pools ------------------------------------------------------------------------------

    def add_pools(self, deployment: Deployment) -> None:
        for config in deployment.pools:
            if config.runs_jobs:
                self.new_pool(config.name, config)
        if scheduler_child_wanted(deployment):
            self.new_pool("scheduler", None)

    def new_pool(self, name: str, config: PoolConfig | None) -> Pool:
        self.generation += 1
        pool = Pool(name, config, self.generation, self.deployment.max_restart_backoff)
        self.pools.append(pool)
        return pool

    def current(self, name: str) -> Pool | None:
        """The newest pool of that name that is not draining."""
        live = [p for p in self.pools if p.name == name and not p.draining]
        return max(live, key=lambda p: p.generation) if live else None

    def replace(self, pool: Pool, config: PoolConfig | None) -> None:
        """Start a new generation; the old one drains once the new one is up."""
        new = self.new_pool(pool.name, config)
        if config == pool.config:
            new.desired = pool.desired
        predecessor = next((p for p in self.pools if p.successor is pool), None)
        if predecessor is not None:  # replaced again before it was up: skip it
            pool.draining = True
            predecessor.successor = new
        else:
            pool.successor = new
        log.info("pool %s: starting generation %d to replace %d", pool.name, new.generation,
                 pool.generation)

    def manage(self) -> None:
        now = time.monotonic()
        for pool in list(self.pools):
            if pool.successor is not None and pool.successor.is_up() and not pool.draining:
                log.info("pool %s: generation %d is up; draining generation %d", pool.name,
                         pool.successor.generation, pool.generation)
                pool.draining = True
            if pool.draining:
                for worker in pool.active():
                    self.stop(worker, "draining")
                if not pool.workers:
                    self.pools.remove(pool)
                    log.info("pool %s generation %d stopped", pool.name, pool.generation)
                continue
            extra = len(pool.active()) - pool.desired
            for worker in sorted(pool.active(), key=lambda w: w.spawned_at)[:max(0, extra)]:
                self.stop(worker, "scaling down")
            missing = pool.missing()
            if missing and pool.may_spawn(now):
                for _ in range(missing if pool.failures <= 1 else 1):
                    self.spawn(pool)

    def scale(self, delta: int) -> None:
        for pool in self.pools:
            if pool.draining or pool.config is None or pool.config.mode == "thin":
                continue
            pool.desired = max(1, pool.desired + delta)
            log.info("pool %s: %d process(es) wanted", pool.name, pool.desired)

    # -- children -----------------------------------------------------------------------------

    def spawn(self, pool: Pool) -> None:
        index = pool.free_index()
        scoreboard = Scoreboard(pool.threads)
        read_fd, write_fd = os.pipe()
        nonce = uuid.uuid4().hex[:8]
        spec = ChildSpec(
            kind=pool.kind, name=pool.name, index=index, deployment=self.deployment,
            app=self.app, master_pid=self.master_pid, owner="", scoreboard=scoreboard,
            report_fd=write_fd, pool=pool.config, max_jobs=pool.jobs_limit(),
            run_scheduler=pool.config is not None and thin_runs_scheduler(self.deployment),
            reimport_app=not self.deployment.preload_app,
            close_fds=(read_fd, *self.inherited_fds(), *self._report_fds()))
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            for fd in (read_fd, write_fd):
                os.close(fd)
            scoreboard.close()
            pool.next_spawn_at = time.monotonic() + 1.0
            log.error("pool %s: fork failed: %s", pool.name, exc)
            return
        if pid == 0:
            spec.owner = owner_id(self.master_pid, os.getpid(), nonce)
            child.run(spec)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = Worker(pid, pool, index, owner_id(self.master_pid, pid, nonce)
                        if pool.config is not None else None, scoreboard, read_fd)
        pool.workers[pid] = worker
        self.selector.register(read_fd, selectors.EVENT_READ, worker)
        log.info("spawned %s (pid %d)", worker.label, pid)

    def _report_fds(self) -> list[int]:
        return [w.report_fd for p in self.pools for w in p.workers.values()]

    def read_reports(self, worker: Worker) -> None:
        """Read what a child wrote: one JSON object per line."""
        while True:
            try:
                data = os.read(worker.report_fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            worker.report_buffer += data
        *lines, worker.report_buffer = worker.report_buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("ready") and worker.ready_at is None:
                worker.pool.child_ready(worker)
                log.info("%s (pid %d) is ready", worker.label, worker.pid)
            if message.get("boot_error"):
                worker.pool.last_error = str(message["boot_error"])
            if isinstance(message.get("stats"), dict):
                merge_stats(worker.pool.stats, message["stats"])
            if isinstance(message.get("scheduler"), dict):
                self.scheduler_state = message["scheduler"]

    def stop(self, worker: Worker, reason: str, lost_run: bool = False) -> None:
        """Ask a child to stop gracefully (finish its jobs, then exit)."""
        if worker.stopping:
            return
        worker.stop_reason, worker.stop_sent_at, worker.lost_run = reason, time.monotonic(), \
            lost_run
        log.info("stopping %s (pid %d): %s", worker.label, worker.pid, reason)
        _signal(worker.pid, signal.SIGTERM)

    def kill(self, worker: Worker, reason: str, lost_run: bool) -> None:
        if worker.killed:
            return
        if not worker.stopping:
            worker.stop_reason, worker.stop_sent_at = reason, time.monotonic()
        worker.killed, worker.lost_run = True, lost_run
        log.warning("killing %s (pid %d): %s", worker.label, worker.pid, reason)
        _signal(worker.pid, signal.SIGKILL)

    def workers(self) -> list[Worker]:
        return [w for p in self.pools for w in p.workers.values()]

    # -- reaping ------------------------------------------------------------------------------

    def child_exited(self, worker: Worker, status: int) -> None:
        self.read_reports(worker)
        self.selector.unregister(worker.report_fd)
        code = os.waitstatus_to_exitcode(status)
        how = describe_exit(code)
        expected = worker.stopping or code == EXIT_OK
        if worker.owner is not None:
            if worker.timed_out is not None:
                self._fail_timed_out(worker)
            lost = worker.lost_run if worker.stopping else code != EXIT_OK
            self.recover(worker.owner, lost_run=lost,
                          reason=f"worker lost: {worker.stop_reason or how}")
        error = worker.pool.last_error if code == EXIT_BOOT_ERROR else f"{worker.label} {how}"
        worker.pool.child_died(worker, expected, None if expected else error)
        close_worker_resources(worker)
        level = logging.INFO if expected else logging.WARNING
        log.log(level, "%s (pid %d) %s%s", worker.label, worker.pid, how,
                f" ({worker.stop_reason})" if worker.stop_reason else "")

    def recover(self, owner: str, lost_run: bool, reason: str) -> None:
        try:
            self.broker.recover(owner, known_dead=True, lost_run=lost_run, reason=reason)
        except redis.RedisError as exc:
            log.warning("cannot recover jobs of %s yet (%s); will retry", owner, exc)
            self.pending.append(Recovery(owner, lost_run, reason))

    def recover_pending(self) -> None:
        pending, self.pending = self.pending, []
        for item in pending:
            self.recover(item.owner, item.lost_run, item.reason)

    def _fail_timed_out(self, worker: Worker) -> None:
        """The job that ran past its hard limit fails by its retry policy."""
        slot = worker.timed_out
        assert slot is not None and worker.owner is not None
        try:
            info = self.broker.job_info(slot.job_id)
            if info is None or info.owner != worker.owner or info.attempts != slot.attempt:
                return
            job = Job(info.id, info.name, info.priority, "[]", "{}", json.dumps(info.options),
                      slot.attempt, info.enqueued_at)
            task = self.app.tasks.get(info.name)
            policy = task.retry if task else DEFAULT_POLICY
            settlement = policy.settle_failure(
                job, f"TimeoutError: ran longer than its {slot.timeout:g}s hard limit; "
                     "its child was killed")
            self.broker.step(worker.owner, slot.slot, settlement, False, (), ())
        except redis.RedisError as exc:
            log.warning("cannot fail timed-out job %s (%s); it will be returned", slot.job_id,
                        exc)

    # -- health -------------------------------------------------------------------------------

    def check_health(self) -> None:
        """Sample every child (psutil) and act on the verdicts; called once a second."""
        now, wall = time.monotonic(), time.time()
        for worker in self.workers():
            worker.last_busy = worker.scoreboard.busy_slots()
            worker.sample = monitor.sample(worker.process) if worker.process else None
            pool = worker.pool
            if pool.failures and worker.ready_at is not None and \
                    now - worker.ready_at > QUICK_DEATH:
                pool.child_settled()
            if worker.killed or pool.config is None or worker.sample is None:
                continue
            if worker.timed_out is not None and now - (worker.stop_sent_at or now) > KILL_GRACE:
                self.kill(worker, "still running past its job's hard limit",
                                  lost_run=False)
                continue
            verdict = monitor.judge(pool.config, worker.last_busy, worker.sample, wall,
                                    worker.stopping)
            if verdict is not None:
                self._carry_out(worker, verdict)

    def _carry_out(self, worker: Worker, verdict: monitor.Verdict) -> None:
        if verdict.action == monitor.KILL:
            self.kill(worker, verdict.reason, verdict.lost_run)
        elif verdict.timed_out is not None:
            if worker.timed_out is None:
                worker.timed_out = verdict.timed_out
                worker.stop_reason = None  # a timeout overrides a gentler stop
                self.stop(worker, verdict.reason)
        elif not any(w.stop_reason and w.stop_reason.startswith("recycling")
                     for w in worker.pool.workers.values()):
            self.stop(worker, verdict.reason)  # one recycle at a time per pool

    # -- the whole workforce -------------------------------------------------------------------

    def owners(self) -> list[str]:
        return [w.owner for w in self.workers() if w.owner is not None]

    def stop_all(self, reason: str) -> None:
        for worker in self.workers():
            self.stop(worker, reason)

    def kill_all(self, reason: str) -> None:
        for worker in self.workers():
            self.kill(worker, reason, lost_run=False)

    def all_up(self) -> bool:
        return all(p.is_up() for p in self.pools if not p.draining)

    def summary(self) -> str:
        return ", ".join(f"{p.name} {len(p.active())}/{p.desired}" for p in self.pools
                         if not p.draining)

    def figures(self, wall: float, busy_threshold: float) -> tuple[list[Any], int | None]:
        """Every job pool as status shows it, and the scheduler child's pid."""
        for pool in self.pools:
            pool.observe(wall, busy_threshold)
        scheduler = next((p for p in self.pools if p.config is None and not p.draining), None)
        scheduler_pid = next(iter(scheduler.workers), None) if scheduler else None
        described = [p.describe(wall) for p in self.pools if p.config is not None]
        described += [scheduler_only_view(config, scheduler, wall)
                      for config in self.deployment.pools if not config.runs_jobs]
        return described, scheduler_pid


def scheduler_only_view(config: PoolConfig, scheduler: Pool | None,
                        wall: float) -> dict[str, Any]:
    """A declared scheduler-only pool as status shows it: no job slots, the scheduler child."""
    processes = [w.describe(wall) for w in scheduler.workers.values()] if scheduler else []
    return {
        "name": config.name, "mode": config.mode, "priorities": [], "job_types": [],
        "concurrency": 0, "threads": 0, "processes_wanted": 1 if scheduler else 0,
        "generation": scheduler.generation if scheduler else 0,
        "state": "failing" if scheduler and scheduler.failing else "running",
        "busy": 0, "utilization": 0.0, "jobs_done": 0, "jobs_failed": 0,
        "processed_per_min": 0.0, "failed_per_min": 0.0,
        "restarts": scheduler.restarts if scheduler else 0,
        "last_error": scheduler.last_error if scheduler else None,
        "utilization_high_since": None, "no_live_child_since": None, "job_type_stats": {},
        "processes": processes,
    }


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name
    hint = " (perhaps out of memory)" if -code == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


def thin_runs_scheduler(deployment: Deployment) -> bool:
    """A lone thin pool is one small process for everything, the scheduler included."""
    job_pools = [p for p in deployment.pools if p.runs_jobs]
    return deployment.scheduler.enabled and len(job_pools) == 1 and job_pools[0].mode == "thin"


def scheduler_child_wanted(deployment: Deployment) -> bool:
    return deployment.scheduler.enabled and not thin_runs_scheduler(deployment)
