"""The master's children: forking them, reading what they report, reaping them,
judging their health, and giving back what the dead held.

The master's state machine decides *when* (on a signal, on a tick, while
stopping); this module knows *how*. It owns every group: the pools, the
scheduler group, and generations that drain after a reload.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from ..core.app import App
from ..core.broker import Broker
from ..core.config import Deployment, PoolConfig, SchedulerConfig
from ..core.identity import NodeId, OwnerId
from ..core.job import Job
from ..core.nodes import PoolStatus, RefusalStatus
from ..core.retry import DEFAULT_POLICY
from . import child_main, monitor
from .child_main import MASTER_SIGNALS, ChildSpec
from .exits import EXIT_BOOT_ERROR, describe_exit
from .pool import QUICK_DEATH, Child, Group, Pool, SchedulerGroup, close_child_resources
from .scoreboard import Scoreboard
from .stats import merge as merge_stats

log = logging.getLogger(__name__)

KILL_GRACE = 1.0  # a child TERMed for a hard timeout gets this long before KILL
FORK_RETRY = 1.0


@dataclass
class Recovery:
    """Jobs of a dead child still to be given back (Redis was unreachable)."""

    owner: OwnerId
    lost_run: bool
    reason: str
    broker: Broker


class Workforce:
    """Every group of one master and the children in them."""

    def __init__(self, deployment: Deployment, app: App, broker: Broker, node: NodeId,
                 selector: selectors.BaseSelector,
                 inherited_fds: Callable[[], list[int]]) -> None:
        self.deployment = deployment
        self.app = app
        self.broker = broker
        self.node = node
        self.selector = selector
        self.inherited_fds = inherited_fds  # the master's descriptors a child must close
        self.groups: list[Group] = []
        self.generation = 0
        self.pending: list[Recovery] = []
        self.scheduler_state: dict[str, Any] = {}
        for config in wanted_groups(deployment).values():
            self.new_group(config)

    def configure(self, deployment: Deployment, app: App, broker: Broker) -> None:
        """After a reload: new children get the new deployment, code and connection."""
        self.deployment, self.app, self.broker = deployment, app, broker

    # -- groups -------------------------------------------------------------------------

    def new_group(self, config: PoolConfig | SchedulerConfig) -> Group:
        self.generation += 1
        backoff = self.deployment.max_restart_backoff
        group: Group = Pool(config, self.generation, backoff) \
            if isinstance(config, PoolConfig) else \
            SchedulerGroup(config, self.generation, backoff)
        self.groups.append(group)
        return group

    def current(self, kind: str, name: str) -> Group | None:
        """The newest group of that kind and name that is not draining."""
        live = [g for g in self.groups if (g.kind, g.name) == (kind, name) and not g.draining]
        return max(live, key=lambda g: g.generation) if live else None

    def replace(self, group: Group, config: PoolConfig | SchedulerConfig) -> None:
        """Start a new generation; the old one drains once the new one is up."""
        new = self.new_group(config)
        if config == group.config:
            new.desired = group.desired
        predecessor = next((g for g in self.groups if g.successor is group), None)
        if predecessor is not None:  # replaced again before it was up: skip it
            group.draining = True
            predecessor.successor = new
        else:
            group.successor = new
        log.info("%s %s: starting generation %d to replace %d", group.kind, group.name,
                 new.generation, group.generation)

    def manage(self) -> None:
        now = time.monotonic()
        for group in list(self.groups):
            if group.successor is not None and group.successor.is_up() and not group.draining:
                log.info("%s %s: generation %d is up; draining generation %d", group.kind,
                         group.name, group.successor.generation, group.generation)
                group.draining = True
            if group.draining:
                for child in group.active():
                    self.stop(child, "draining")
                if not group.children:
                    self.groups.remove(group)
                    log.info("%s %s generation %d stopped", group.kind, group.name,
                             group.generation)
                continue
            extra = len(group.active()) - group.desired
            for child in sorted(group.active(), key=lambda c: c.spawned_at)[:max(0, extra)]:
                self.stop(child, "scaling down")
            missing = group.missing()
            if missing and group.may_spawn(now):
                for _ in range(missing if group.failures <= 1 else 1):
                    self.spawn(group)

    def scale(self, delta: int) -> None:
        for group in self.groups:
            if group.draining or not isinstance(group, Pool) or group.config.mode == "thin":
                continue
            group.desired = max(1, group.desired + delta)
            log.info("pool %s: %d process(es) wanted", group.name, group.desired)

    # -- children -----------------------------------------------------------------------------

    def spawn(self, group: Group) -> None:
        index = group.free_index()
        pool = group if isinstance(group, Pool) else None
        thin = pool is not None and thin_runs_scheduler(self.deployment)  # also schedules
        scoreboard = Scoreboard(group.threads_of(index), loops=1 if pool is None or thin else 0)
        read_fd, write_fd = os.pipe()
        owner = OwnerId.new(self.node.pid, 0) if pool is not None else None
        spec = ChildSpec(
            kind=group.kind, label=group.label(index), deployment=self.deployment,
            app=self.app, node=self.node, owner=owner,
            scoreboard=scoreboard,
            report_fd=write_fd, pool=pool.config if pool else None,
            max_jobs=pool.jobs_limit() if pool else None,
            run_scheduler=thin,
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
            group.next_spawn_at = time.monotonic() + FORK_RETRY
            log.error("%s %s: fork failed: %s", group.kind, group.name, exc)
            return
        if pid == 0:
            spec.owner = owner.for_pid(os.getpid()) if owner else None
            child_main.run(spec)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        child = Child(pid, group, index, owner.for_pid(pid) if owner else None, scoreboard,
                      read_fd, self.broker)
        group.children[pid] = child
        self.selector.register(read_fd, selectors.EVENT_READ, child)
        log.info("spawned %s (pid %d)", child.label, pid)

    def _report_fds(self) -> list[int]:
        return [c.report_fd for c in self.children()]

    def read_reports(self, child: Child) -> None:
        """Read what a child wrote: one JSON object per line."""
        while True:
            try:
                data = os.read(child.report_fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            child.report_buffer += data
        *lines, child.report_buffer = child.report_buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self._on_report(child, message)

    def _on_report(self, child: Child, message: dict[str, Any]) -> None:
        if message.get("ready") and child.ready_at is None:
            child.group.child_ready(child)
            log.info("%s (pid %d) is ready", child.label, child.pid)
        if message.get("boot_error"):
            child.group.last_error = str(message["boot_error"])
        if isinstance(message.get("stats"), dict):
            merge_stats(child.group.stats, message["stats"])
        if isinstance(message.get("scheduler"), dict):
            self.scheduler_state = message["scheduler"]
        if message.get("leaving"):
            self._leaving(child, str(message["leaving"]), bool(message.get("crashed")))
        if isinstance(message.get("redis_refusal"), dict):
            refusal = message["redis_refusal"]
            where, error = str(refusal.get("where")), refusal.get("error")
            if error:
                child.refusals[where] = str(error)
            else:
                child.refusals.pop(where, None)

    def _leaving(self, child: Child, why: str, crashed: bool) -> None:
        """The child is about to exit on its own: recycling after max_jobs_per_child (an
        expected exit), or because a loop of it ended (a crash, to be replaced)."""
        if crashed:
            child.crash = why
        elif not child.stopping:
            child.stop_reason, child.stop_sent_at, child.lost_run = why, time.monotonic(), \
                False

    def stop(self, child: Child, reason: str, lost_run: bool = False) -> None:
        """Ask a child to stop gracefully (finish its jobs, then exit)."""
        if child.stopping:
            return
        child.stop_reason, child.stop_sent_at, child.lost_run = reason, time.monotonic(), \
            lost_run
        log.info("stopping %s (pid %d): %s", child.label, child.pid, reason)
        _signal(child.pid, signal.SIGTERM)

    def kill(self, child: Child, reason: str, lost_run: bool) -> None:
        if child.killed:
            return
        if not child.stopping:
            child.stop_reason, child.stop_sent_at = reason, time.monotonic()
        child.killed, child.lost_run = True, lost_run
        log.warning("killing %s (pid %d): %s", child.label, child.pid, reason)
        _signal(child.pid, signal.SIGKILL)

    def children(self) -> list[Child]:
        return [c for g in self.groups for c in g.children.values()]

    def child_of(self, pid: int) -> Child | None:
        return next((c for c in self.children() if c.pid == pid), None)

    # -- reaping ------------------------------------------------------------------------------

    def child_exited(self, child: Child, status: int) -> None:
        self.read_reports(child)
        self.selector.unregister(child.report_fd)
        code = os.waitstatus_to_exitcode(status)
        how = describe_exit(code)
        # Only an exit we asked for (or one the child announced) is expected: a child that
        # leaves unasked while it holds jobs lost those runs, whatever its exit code.
        expected = child.stopping and child.crash is None
        if child.owner is not None:
            if child.timed_out is not None:
                self._fail_timed_out(child)
            self.recover(child.owner, lost_run=child.lost_run if expected else True,
                         reason=f"worker lost: {child.stop_reason or child.crash or how}",
                         broker=child.broker)
        if code == EXIT_BOOT_ERROR:
            error = child.group.last_error
        else:
            error = f"{child.label} {how}" + (f": {child.crash}" if child.crash else "")
        child.group.child_died(child, expected, None if expected else error)
        close_child_resources(child)
        level = logging.INFO if expected else logging.WARNING
        log.log(level, "%s (pid %d) %s%s", child.label, child.pid, how,
                f" ({child.stop_reason})" if child.stop_reason else "")

    def recover(self, owner: OwnerId, lost_run: bool, reason: str, broker: Broker) -> None:
        """Give back a dead child's jobs now, or as soon as Redis lets us."""
        item = Recovery(owner, lost_run, reason, broker)
        if not self._give_back(item):
            self.pending.append(item)

    def recover_pending(self) -> None:
        """Try the recoveries Redis refused before; stop at the first that fails again
        (the master's loop must not wait on a Redis that is down once per owner)."""
        while self.pending and self._give_back(self.pending[0]):
            self.pending.pop(0)

    def _give_back(self, item: Recovery) -> bool:
        try:
            item.broker.recover(str(item.owner), known_dead=True, lost_run=item.lost_run,
                                reason=item.reason)
        except redis.RedisError as exc:
            log.warning("cannot recover jobs of %s yet (%s); will retry", item.owner, exc)
            return False
        return True

    def _fail_timed_out(self, child: Child) -> None:
        """The job that ran past its hard limit fails by its retry policy."""
        slot = child.timed_out
        assert slot is not None and child.owner is not None
        owner, broker = str(child.owner), child.broker
        try:
            info = broker.job_info(slot.job_id)
            if info is None or info.owner != owner or info.attempts != slot.attempt:
                return
            job = Job(info.id, info.name, info.priority, "[]", "{}", json.dumps(info.options),
                      slot.attempt, info.enqueued_at)
            task = self.app.tasks.get(info.name)
            policy = task.retry if task else DEFAULT_POLICY
            settlement = policy.settle_failure(
                job, f"TimeoutError: ran longer than its {slot.timeout:g}s hard limit; "
                     "its child was killed")
            broker.step(owner, slot.slot, settlement, False, (), ())
        except redis.RedisError as exc:
            log.warning("cannot fail timed-out job %s (%s); it will be returned", slot.job_id,
                        exc)

    # -- health -------------------------------------------------------------------------------

    def check_health(self) -> None:
        """Sample every child (psutil) and act on the verdicts; called once a second."""
        now = time.monotonic()  # hard limits must not move with NTP steps of the wall clock
        for child in self.children():
            child.last_busy = child.scoreboard.busy_slots()
            child.sample = monitor.sample(child.process) if child.process else None
            group = child.group
            if group.failures and child.ready_at is not None and \
                    now - child.ready_at > QUICK_DEATH:
                group.child_settled()
            if child.killed or child.sample is None:
                continue
            silence = None
            if child.ready_at is not None and not child.stopping:
                silence = child.scoreboard.silence(now, self.deployment.hang_timeout,
                                                   child.last_busy)
            if silence is not None:
                self.kill(child, f"hung: {silence}", lost_run=True)
                continue
            if not isinstance(group, Pool):
                continue
            if child.timed_out is not None and now - (child.stop_sent_at or now) > KILL_GRACE:
                self.kill(child, "still running past its job's hard limit", lost_run=False)
                continue
            verdict = monitor.judge(group.config, child.last_busy, child.sample, now,
                                    child.stopping)
            if verdict is not None:
                self._carry_out(child, verdict)

    def _carry_out(self, child: Child, verdict: monitor.Verdict) -> None:
        if verdict.action == monitor.KILL:
            self.kill(child, verdict.reason, verdict.lost_run)
        elif verdict.timed_out is not None:
            if child.timed_out is None:
                child.timed_out = verdict.timed_out
                child.stop_reason = None  # a timeout overrides a gentler stop
                self.stop(child, verdict.reason)
        elif not any(c.stop_reason and c.stop_reason.startswith("recycling")
                     for c in child.group.children.values()):
            self.stop(child, verdict.reason)  # one recycle at a time per pool

    # -- the whole workforce -------------------------------------------------------------------

    def refusals(self) -> list[RefusalStatus]:
        """What Redis refuses each child's loops, for status."""
        return [{"child": c.label, "where": where, "error": error}
                for c in self.children() for where, error in sorted(c.refusals.items())]

    def owners(self) -> list[tuple[Broker, list[str]]]:
        """The owners of every child that holds jobs, by the Redis they hold them in."""
        by_broker: dict[int, tuple[Broker, list[str]]] = {}
        for child in self.children():
            if child.owner is not None:
                by_broker.setdefault(id(child.broker), (child.broker, []))[1].append(
                    str(child.owner))
        return list(by_broker.values())

    def stop_all(self, reason: str) -> None:
        for child in self.children():
            self.stop(child, reason)

    def kill_all(self, reason: str) -> None:
        for child in self.children():
            self.kill(child, reason, lost_run=False)

    def all_up(self) -> bool:
        return all(g.is_up() for g in self.groups if not g.draining)

    def summary(self) -> str:
        return ", ".join(f"{g.name} {len(g.active())}/{g.desired}" for g in self.groups
                         if not g.draining)

    def figures(self, wall: float, busy_threshold: float) -> tuple[list[PoolStatus], int | None]:
        """Every declared pool as status shows it, and the scheduler child's pid.

        A scheduler-only pool runs no jobs: it is shown with the scheduler child.
        """
        for group in self.groups:
            group.observe(wall, busy_threshold)
        scheduler = self.current("scheduler", "scheduler")
        scheduler_pid = next(iter(scheduler.children), None) if scheduler else None
        described = [g.describe(g.config) for g in self.groups if isinstance(g, Pool)]
        idle = SchedulerGroup(self.deployment.scheduler, 0, 0.0, desired=0)  # disabled
        described += [(scheduler or idle).describe(config)
                      for config in self.deployment.pools if not config.runs_jobs]
        return described, scheduler_pid


def wanted_groups(deployment: Deployment) -> dict[tuple[str, str], PoolConfig | SchedulerConfig]:
    """(kind, name) -> config of every group a deployment runs."""
    wanted: dict[tuple[str, str], PoolConfig | SchedulerConfig] = {
        ("pool", p.name): p for p in deployment.pools if p.runs_jobs}
    if deployment.scheduler.enabled and not thin_runs_scheduler(deployment):
        wanted[("scheduler", "scheduler")] = deployment.scheduler
    return wanted


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def thin_runs_scheduler(deployment: Deployment) -> bool:
    """A lone thin pool is one small process for everything, the scheduler included."""
    job_pools = [p for p in deployment.pools if p.runs_jobs]
    return deployment.scheduler.enabled and len(job_pools) == 1 and job_pools[0].mode == "thin"
