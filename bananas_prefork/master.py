"""The master: supervises pools of children as a small, explicit state machine.

    STARTING --redis answers--> RUNNING --TERM/INT/QUIT--> STOPPING --children gone--> STOPPED

Every pass of the loop is the same: wait (at most a second) for a signal, a
child's report or a deadline; handle the queued signals by name; reap dead
children and give back their jobs at once; judge the health of the living;
bring every pool to its desired size; renew the liveness of the children's
jobs. Signal handlers do nothing but wake the loop (``signal.set_wakeup_fd``
writes the signal number to a pipe), so nothing runs inside a handler.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import random
import re
import selectors
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from setproctitle import setproctitle

from . import child, monitor, periodic, reloader
from .app import App
from .broker import Broker, connect
from .child import EXIT_BOOT_ERROR, EXIT_OK, MASTER_SIGNALS, ChildSpec, configure_app
from .config import ConfigError, Deployment, PoolConfig, load
from .consumer import failure_settlement, owner_id
from .embedded import EMBEDDED, EmbeddedRedis, RedisUnavailable, running_url, wants_embedded
from .job import Job
from .pidfile import Pidfile
from .pool import QUICK_DEATH, Pool, Worker, close_worker_resources
from .scheduler import leader_identity
from .scoreboard import Scoreboard
from .stats import merge as merge_stats
from .status import Publisher, node_id
from .systemd import Notifier

log = logging.getLogger(__name__)

TICK = 1.0
KILL_GRACE = 1.0  # a child TERMed for a hard timeout gets this long before KILL
READY_WAIT = 60.0  # tell systemd we are ready after this even if a pool keeps failing
PUBLISH_INTERVAL = 1.0
SIGNAL_NAMES = {signal.SIGHUP: "hup", signal.SIGTERM: "term", signal.SIGINT: "int",
                signal.SIGQUIT: "quit", signal.SIGUSR2: "usr2", signal.SIGTTIN: "ttin",
                signal.SIGTTOU: "ttou", signal.SIGCHLD: "chld"}


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class Recovery:
    """Jobs of a dead child still to be given back (Redis was unreachable)."""

    owner: str
    lost_run: bool
    reason: str


class Master:
    """One per machine (or per deployment file): forks, reaps, renews, reloads."""

    def __init__(self, deployment: Deployment, app: App, config_path: str | None = None,
                 notifier: Notifier | None = None) -> None:
        self.embedded: EmbeddedRedis | None = None
        self.embedded_url: str | None = None
        if wants_embedded(deployment.redis_url):
            # Another master already runs this data dir's server: share it, do not fork a
            # second server onto the same files.
            self.embedded_url = running_url(deployment.data_dir)
            if self.embedded_url is None:
                self.embedded = EmbeddedRedis(deployment.data_dir)
                self.embedded_url = self.embedded.url
        self._next_embedded_start = 0.0
        deployment = self._resolve(deployment)
        self.deployment = deployment
        self.app = app
        self.config_path = config_path
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.state = State.STARTING
        self.notifier = notifier or Notifier()
        self.pools: list[Pool] = []
        self.generation = 0
        self.started_at = time.time()
        self.stop_deadline: float | None = None
        self.reload_error: str | None = None
        self.rollout: list[str] = []
        self._rolling: Pool | None = None
        self.pending: list[Recovery] = []
        self.ready_notified = False
        configure_app(app, deployment)
        self.broker = self._make_broker(app)
        self._selector = selectors.DefaultSelector()
        self._wakeup_r = self._wakeup_w = -1
        self._connect_failures = 0
        self._next_connect = 0.0
        self._next_renewal = 0.0
        self._next_orphan_scan = 0.0
        self._periodic_pending = False
        self._redis_outages: set[str] = set()
        self._pidfile = Pidfile(deployment.pidfile) if deployment.pidfile else None
        self.publisher = Publisher(self.broker, node_id(self.host, self.pid), deployment.alerts,
                                   deployment.node_ttl)
        self.scheduler_state: dict[str, object] = {}
        self.last_snapshot: dict[str, Any] | None = None
        self._metrics_server: Any = None
        self._next_publish = 0.0
        self._add_pools(deployment)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 for every requested stop)."""
        self._install_signals()
        if self._pidfile is not None:
            self._pidfile.create(self.pid)
        setproctitle(f"bananas-prefork: master [{self.deployment.source}]")
        self._serve_metrics()
        log.info("master %d starting: %s", self.pid, "; ".join(
            f"{p.name} x{p.desired}" for p in self.pools))
        try:
            while self.state is not State.STOPPED:
                self._loop_once()
        finally:
            self._shut_down()
        log.info("master %d stopped", self.pid)
        return 0

    def _loop_once(self) -> None:
        for signum in self._wait(self._timeout()):
            self._dispatch(signum)
        self._reap()
        if self.state is State.STARTING:
            self._connect()
        elif self.state is State.RUNNING:
            if self._periodic_pending:
                self._register_periodic()
            self._check_health()
            self._advance_rollout()
            self._manage_pools()
            self._notify_ready()
        elif self.state is State.STOPPING:
            self._check_health()
            self._drive_stop()
        if self.state is not State.STARTING:
            self._supervise_embedded()
        self._renew_liveness()
        self._recover_pending()
        self._publish()
        self.notifier.watchdog()

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + TICK]
        deadlines += [p.next_spawn_at for p in self.pools if p.missing() and
                      self.state is State.RUNNING]
        if self.state is State.STARTING:
            deadlines.append(self._next_connect)
        return max(0.0, min(deadlines) - now)

    def _wait(self, timeout: float) -> list[int]:
        """Block until a signal, a child's report or the timeout; return queued signals."""
        signals: list[int] = []
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                signals += self._drain_wakeup()
            else:
                self._read_reports(key.data)
        return signals

    def _dispatch(self, signum: int) -> None:
        name = SIGNAL_NAMES.get(signal.Signals(signum))
        handler = getattr(self, f"handle_{name}", None) if name else None
        if handler is not None:
            handler()

    # -- signals ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe()
        for fd in (self._wakeup_r, self._wakeup_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in SIGNAL_NAMES:
            signal.signal(signum, _wake_only)

    def _drain_wakeup(self) -> list[int]:
        signals: list[int] = []
        while True:
            try:
                data = os.read(self._wakeup_r, 4096)
            except BlockingIOError:
                return signals
            if not data:
                return signals
            signals += list(data)

    def handle_term(self) -> None:
        self._begin_stop(graceful=self.state is not State.STOPPING)

    handle_int = handle_term

    def handle_quit(self) -> None:
        self._begin_stop(graceful=False)

    def handle_hup(self) -> None:
        if self.state is State.STOPPING:
            return
        self._reload_config()

    def handle_usr2(self) -> None:
        if self.state is State.STOPPING:
            return
        self._reload_code()

    def handle_ttin(self) -> None:
        self._scale(+1)

    def handle_ttou(self) -> None:
        self._scale(-1)

    def handle_chld(self) -> None:
        """Nothing to do here: every pass reaps."""

    # -- starting -----------------------------------------------------------------------

    def _resolve(self, deployment: Deployment) -> Deployment:
        """Point a deployment that wants the embedded server at ours."""
        if self.embedded_url is not None and deployment.redis_url in (None, EMBEDDED):
            return dataclasses.replace(deployment, redis_url=self.embedded_url)
        return deployment

    def _supervise_embedded(self) -> None:
        """Start the private redis-server, and start it again if it died."""
        server = self.embedded
        if server is None or server.pid is not None or time.monotonic() < \
                self._next_embedded_start:
            return
        try:
            server.start()
        except RedisUnavailable as exc:
            self._next_embedded_start = time.monotonic() + 5.0
            log.error("embedded Redis: %s", exc)
            return
        log.info("embedded Redis %s running at %s (pid %d, data in %s); commands run from "
                 "this directory find it, elsewhere pass --redis", server.server.binary,
                 _hide_password(server.url), server.pid, server.data_dir)

    @staticmethod
    def _make_broker(app: App) -> Broker:
        """The master's own connection, to the Redis and namespace its children use."""
        return Broker(connect(app.redis_url), app.namespace, result_ttl=int(app.result_ttl),
                      dead_ttl=int(app.dead_ttl), owner_ttl=app.owner_ttl,
                      max_redeliveries=app.max_redeliveries)

    def _connect(self) -> None:
        """Wait for Redis with backoff; children start once it answers."""
        self._supervise_embedded()
        if time.monotonic() < self._next_connect:
            return
        try:
            self.broker.ping()
            self.broker.load_scripts()
        except redis.RedisError as exc:
            self._connect_failures += 1
            delay = min(30.0, 0.5 * 2 ** (self._connect_failures - 1)) * random.uniform(0.8, 1.2)
            self._next_connect = time.monotonic() + delay
            log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
            return
        log.info("redis answered; starting children")
        self.state = State.RUNNING
        self._recover_orphans_of_this_host()
        self._register_periodic()

    def _recover_orphans_of_this_host(self) -> None:
        """Jobs of children of an earlier master on this host that died: give them back now.

        Without this they would wait for their liveness to expire (owner_ttl).
        """
        try:
            owners = self.broker.members(self.broker.keys.owners)
        except redis.RedisError:
            return
        for owner in owners:
            host, _, rest = owner.partition(":")
            master_pid = int(rest.split(":", 1)[0]) if rest[:1].isdigit() else 0
            if host == self.host and master_pid not in (0, self.pid) and \
                    not _pid_alive(master_pid):
                self._recover(owner, lost_run=True, reason="worker lost: its master died")

    def _register_periodic(self) -> None:
        """Declare this deployment's periodic entries in the shared schedule."""
        self._periodic_pending = True
        node = leader_identity(self.pid)
        try:
            for source in self.broker.fields(self.broker.keys.periodic_sources):
                other = source.rpartition("|")[2]
                host, _, pid = other.rpartition(":")
                if host == self.host and pid.isdigit() and int(pid) != self.pid and \
                        not _pid_alive(int(pid)):
                    periodic.forget_node(self.broker, other)
            periodic.register(self.broker, periodic.entries_for(self.deployment.periodic,
                                                                self.app), node)
            self._periodic_pending = False
        except redis.RedisError as exc:
            log.warning("cannot register periodic entries yet (%s); will retry", exc)

    # -- pools ------------------------------------------------------------------------------

    def _add_pools(self, deployment: Deployment) -> None:
        for config in deployment.pools:
            if config.runs_jobs:
                self._new_pool(config.name, config)
        if _scheduler_child_wanted(deployment):
            self._new_pool("scheduler", None)

    def _new_pool(self, name: str, config: PoolConfig | None) -> Pool:
        self.generation += 1
        pool = Pool(name, config, self.generation, self.deployment.max_restart_backoff)
        self.pools.append(pool)
        return pool

    def _current(self, name: str) -> Pool | None:
        """The newest pool of that name that is not draining."""
        live = [p for p in self.pools if p.name == name and not p.draining]
        return max(live, key=lambda p: p.generation) if live else None

    def _replace(self, pool: Pool, config: PoolConfig | None) -> None:
        """Start a new generation; the old one drains once the new one is up."""
        new = self._new_pool(pool.name, config)
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

    def _manage_pools(self) -> None:
        now = time.monotonic()
        for pool in list(self.pools):
            if pool.successor is not None and pool.successor.is_up() and not pool.draining:
                log.info("pool %s: generation %d is up; draining generation %d", pool.name,
                         pool.successor.generation, pool.generation)
                pool.draining = True
            if pool.draining:
                for worker in pool.active():
                    self._stop_worker(worker, "draining")
                if not pool.workers:
                    self.pools.remove(pool)
                    log.info("pool %s generation %d stopped", pool.name, pool.generation)
                continue
            extra = len(pool.active()) - pool.desired
            for worker in sorted(pool.active(), key=lambda w: w.spawned_at)[:max(0, extra)]:
                self._stop_worker(worker, "scaling down")
            missing = pool.missing()
            if missing and pool.may_spawn(now):
                for _ in range(missing if pool.failures <= 1 else 1):
                    self._spawn(pool)

    def _scale(self, delta: int) -> None:
        for pool in self.pools:
            if pool.draining or pool.config is None or pool.config.mode == "thin":
                continue
            pool.desired = max(1, pool.desired + delta)
            log.info("pool %s: %d process(es) wanted", pool.name, pool.desired)

    # -- children -----------------------------------------------------------------------------

    def _spawn(self, pool: Pool) -> None:
        index = pool.free_index()
        scoreboard = Scoreboard(pool.threads)
        read_fd, write_fd = os.pipe()
        nonce = uuid.uuid4().hex[:8]
        spec = ChildSpec(
            kind=pool.kind, name=pool.name, index=index, deployment=self.deployment,
            app=self.app, master_pid=self.pid, owner="", scoreboard=scoreboard,
            report_fd=write_fd, pool=pool.config, max_jobs=pool.jobs_limit(),
            run_scheduler=pool.config is not None and _thin_runs_scheduler(self.deployment),
            reimport_app=not self.deployment.preload_app,
            close_fds=(self._wakeup_r, self._wakeup_w, read_fd, self._selector_fd(),
                       *self._report_fds(), *self._metrics_fds()))
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
            spec.owner = owner_id(self.pid, os.getpid(), nonce)
            child.run(spec)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = Worker(pid, pool, index, owner_id(self.pid, pid, nonce)
                        if pool.config is not None else None, scoreboard, read_fd)
        pool.workers[pid] = worker
        self._selector.register(read_fd, selectors.EVENT_READ, worker)
        log.info("spawned %s (pid %d)", worker.label, pid)

    def _selector_fd(self) -> int:
        return self._selector.fileno() if hasattr(self._selector, "fileno") else -1

    def _metrics_fds(self) -> list[int]:
        server = self._metrics_server
        return [server.socket.fileno()] if server is not None else []

    def _report_fds(self) -> list[int]:
        return [w.report_fd for p in self.pools for w in p.workers.values()]

    def _read_reports(self, worker: Worker) -> None:
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

    def _stop_worker(self, worker: Worker, reason: str, lost_run: bool = False) -> None:
        """Ask a child to stop gracefully (finish its jobs, then exit)."""
        if worker.stopping:
            return
        worker.stop_reason, worker.stop_sent_at, worker.lost_run = reason, time.monotonic(), \
            lost_run
        log.info("stopping %s (pid %d): %s", worker.label, worker.pid, reason)
        _signal(worker.pid, signal.SIGTERM)

    def _kill_worker(self, worker: Worker, reason: str, lost_run: bool) -> None:
        if worker.killed:
            return
        if not worker.stopping:
            worker.stop_reason, worker.stop_sent_at = reason, time.monotonic()
        worker.killed, worker.lost_run = True, lost_run
        log.warning("killing %s (pid %d): %s", worker.label, worker.pid, reason)
        _signal(worker.pid, signal.SIGKILL)

    def _workers(self) -> list[Worker]:
        return [w for p in self.pools for w in p.workers.values()]

    # -- reaping ------------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self._workers() if w.pid == pid), None)
            if worker is not None:  # else not ours (we may be PID 1 in a container)
                self._child_exited(worker, status)
            elif self.embedded is not None and pid == self.embedded.pid:
                code = os.waitstatus_to_exitcode(status)
                self.embedded.exited(code)
                self._next_embedded_start = time.monotonic() + 1.0
                log.error("embedded Redis %s; restarting it", _describe_exit(code))

    def _child_exited(self, worker: Worker, status: int) -> None:
        self._read_reports(worker)
        self._selector.unregister(worker.report_fd)
        code = os.waitstatus_to_exitcode(status)
        how = _describe_exit(code)
        expected = worker.stopping or code == EXIT_OK
        if worker.owner is not None:
            if worker.timed_out is not None:
                self._fail_timed_out(worker)
            lost = worker.lost_run if worker.stopping else code != EXIT_OK
            self._recover(worker.owner, lost_run=lost,
                          reason=f"worker lost: {worker.stop_reason or how}")
        error = worker.pool.last_error if code == EXIT_BOOT_ERROR else f"{worker.label} {how}"
        worker.pool.child_died(worker, expected, None if expected else error)
        close_worker_resources(worker)
        level = logging.INFO if expected else logging.WARNING
        log.log(level, "%s (pid %d) %s%s", worker.label, worker.pid, how,
                f" ({worker.stop_reason})" if worker.stop_reason else "")

    def _recover(self, owner: str, lost_run: bool, reason: str) -> None:
        try:
            self.broker.recover(owner, known_dead=True, lost_run=lost_run, reason=reason)
        except redis.RedisError as exc:
            log.warning("cannot recover jobs of %s yet (%s); will retry", owner, exc)
            self.pending.append(Recovery(owner, lost_run, reason))

    def _recover_pending(self) -> None:
        pending, self.pending = self.pending, []
        for item in pending:
            self._recover(item.owner, item.lost_run, item.reason)

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
            settlement = failure_settlement(
                job, self.app.tasks.get(info.name),
                f"TimeoutError: ran longer than its {slot.timeout:g}s hard limit; "
                "its worker was killed")
            self.broker.step(worker.owner, slot.slot, settlement, False, (), ())
        except redis.RedisError as exc:
            log.warning("cannot fail timed-out job %s (%s); it will be returned", slot.job_id,
                        exc)

    # -- health -------------------------------------------------------------------------------

    def _check_health(self) -> None:
        now, wall = time.monotonic(), time.time()
        for worker in self._workers():
            worker.last_busy = worker.scoreboard.busy_slots()
            worker.sample = monitor.sample(worker.process) if worker.process else None
            pool = worker.pool
            if pool.failures and worker.ready_at is not None and \
                    now - worker.ready_at > QUICK_DEATH:
                pool.child_settled()
            if worker.killed or pool.config is None or worker.sample is None:
                continue
            if worker.timed_out is not None and now - (worker.stop_sent_at or now) > KILL_GRACE:
                self._kill_worker(worker, "still running past its job's hard limit",
                                  lost_run=False)
                continue
            verdict = monitor.judge(pool.config, worker.last_busy, worker.sample, wall,
                                    worker.stopping)
            if verdict is not None:
                self._carry_out(worker, verdict)

    def _carry_out(self, worker: Worker, verdict: monitor.Verdict) -> None:
        if verdict.action == monitor.KILL:
            self._kill_worker(worker, verdict.reason, verdict.lost_run)
        elif verdict.timed_out is not None:
            if worker.timed_out is None:
                worker.timed_out = verdict.timed_out
                worker.stop_reason = None  # a timeout overrides a gentler stop
                self._stop_worker(worker, verdict.reason)
        elif not any(w.stop_reason and w.stop_reason.startswith("recycling")
                     for w in worker.pool.workers.values()):
            self._stop_worker(worker, verdict.reason)  # one recycle at a time per pool

    # -- liveness ------------------------------------------------------------------------------

    def _renew_liveness(self) -> None:
        """Keep every child's jobs owned: one pipelined round trip for all children."""
        now = time.monotonic()
        if self.state is State.STARTING or now < self._next_renewal:
            return
        owners = [w.owner for w in self._workers() if w.owner is not None]
        try:
            if owners:
                self.broker.renew_owners(owners)
            if now >= self._next_orphan_scan:
                self.broker.recover_dead_owners()
                self._next_orphan_scan = now + self.deployment.owner_ttl
            self._next_renewal = now + self.deployment.owner_ttl / 3
            self._redis_ok("job liveness renewal")
        except redis.RedisError as exc:
            self._redis_failed("cannot renew job liveness; retrying every second", exc)
            self._next_renewal = now + 1.0

    def _redis_failed(self, what: str, exc: Exception) -> None:
        """Log a Redis outage once, not on every pass of the loop."""
        if what not in self._redis_outages:
            self._redis_outages.add(what)
            log.warning("%s: %s", what, exc)

    def _redis_ok(self, what: str) -> None:
        if self._redis_outages:
            self._redis_outages.clear()
            log.info("redis is back (%s works again)", what)

    # -- status ---------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Every second: this node's figures, for ``status`` on any machine."""
        now = time.monotonic()
        if self.state in (State.STARTING, State.STOPPED) or now < self._next_publish:
            return
        self._next_publish = now + PUBLISH_INTERVAL
        self.last_snapshot = self.snapshot()
        try:
            self.publisher.publish(self.last_snapshot)
            self._redis_ok("status publishing")
        except redis.RedisError as exc:
            self._redis_failed("cannot publish status", exc)

    def _serve_metrics(self) -> None:
        port = self.deployment.metrics_port
        if port is None:
            return
        from . import metrics

        try:
            self._metrics_server = metrics.serve(port, self.deployment.metrics_bind,
                                                 lambda: self.last_snapshot,
                                                 self._make_broker(self.app))
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", self.deployment.metrics_bind, port,
                      exc.strerror)
            return
        log.info("metrics on http://%s:%d/metrics", self.deployment.metrics_bind, port)

    def snapshot(self) -> dict[str, Any]:
        wall = time.time()
        for pool in self.pools:
            pool.observe(wall, self.deployment.alerts.utilization)
        scheduler = next((p for p in self.pools if p.config is None and not p.draining), None)
        scheduler_pid = next(iter(scheduler.workers), None) if scheduler else None
        return {
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "updated_at": wall,
            "config": self.deployment.source,
            "state": self.state.value,
            "reload_error": self.reload_error,
            "scheduler": {"enabled": self.deployment.scheduler.enabled, "pid": scheduler_pid,
                          "leading": bool(self.scheduler_state.get("leading"))},
            "pools": [p.describe(wall) for p in self.pools if p.config is not None],
        }

    # -- reloads -------------------------------------------------------------------------------

    def _reload_config(self) -> None:
        """HUP: validate the new file first; apply the difference only if it is valid."""
        self.notifier.reloading()
        try:
            new = self._resolve(load(self.config_path))
            app = reloader.reimport_app(new)
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.error("reload failed; the running configuration stays: %s", exc)
            self.notifier.ready(self._summary())
            return
        old, self.deployment, self.app, self.reload_error = self.deployment, new, app, None
        configure_app(app, new)
        connection_changed = (old.app, old.redis_url, old.namespace) != \
            (new.app, new.redis_url, new.namespace)
        if connection_changed:
            try:
                self.publisher.withdraw()
            except redis.RedisError:
                pass  # the old node key expires on its own
            self.broker = self._make_broker(app)
        self.publisher = Publisher(self.broker, node_id(self.host, self.pid), new.alerts,
                                   new.node_ttl)
        wanted: dict[str, PoolConfig | None] = {p.name: p for p in new.pools if p.runs_jobs}
        if _scheduler_child_wanted(new):
            wanted["scheduler"] = None
        scheduler_changed = old.scheduler != new.scheduler
        for name in {p.name for p in self.pools if not p.draining} | set(wanted):
            self._reconcile(name, wanted, connection_changed, scheduler_changed)
        self._register_periodic()
        log.info("reloaded %s", new.source)
        self.notifier.ready(self._summary())

    def _reconcile(self, name: str, wanted: dict[str, PoolConfig | None],
                   connection_changed: bool, scheduler_changed: bool) -> None:
        pool = self._current(name)
        if name not in wanted:
            if pool is not None:
                log.info("pool %s removed: draining", name)
                pool.draining = True
            return
        config = wanted[name]
        if pool is None:
            log.info("pool %s added", name)
            self._new_pool(name, config)
        elif connection_changed or config != pool.config or \
                (config is None and scheduler_changed):
            self._replace(pool, config)

    def _reload_code(self) -> None:
        """USR2: import fresh application code, then roll every pool onto it, one by one."""
        self.notifier.reloading()
        try:
            app = reloader.reimport_app(self.deployment)
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.error("code reload failed; the running code stays: %s", exc)
            self.notifier.ready(self._summary())
            return
        self.app, self.reload_error = app, None
        configure_app(app, self.deployment)
        self.rollout = [p.name for p in self.pools if not p.draining]
        self._rolling = None
        self._register_periodic()
        log.info("code reloaded; rolling pools %s", ", ".join(self.rollout))
        self.notifier.ready(self._summary())

    def _advance_rollout(self) -> None:
        while self.rollout:
            if self._rolling is not None:
                if self._rolling in self.pools:
                    return  # its successor is not up yet, or it is still draining
                self._rolling = None
                self.rollout.pop(0)
                continue
            pool = self._current(self.rollout[0])
            if pool is None:
                self.rollout.pop(0)
                continue
            self._rolling = pool
            self._replace(pool, pool.config)
            return

    # -- stopping --------------------------------------------------------------------------------

    def _begin_stop(self, graceful: bool) -> None:
        if self.state is State.STOPPED:
            return
        first = self.state is not State.STOPPING
        self.state = State.STOPPING
        if first:
            self.notifier.stopping()
        if graceful:
            self.stop_deadline = time.monotonic() + self.deployment.shutdown_timeout
            log.info("graceful stop: running jobs have %gs to finish",
                     self.deployment.shutdown_timeout)
            for worker in self._workers():
                self._stop_worker(worker, "shutdown")
        else:
            log.info("fast stop: killing children; their jobs return to their queues")
            for worker in self._workers():
                self._kill_worker(worker, "fast stop", lost_run=False)

    def _drive_stop(self) -> None:
        if not self._workers():
            self.state = State.STOPPED
            return
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            for worker in self._workers():
                self._kill_worker(worker, "shutdown timeout: its jobs return to their queues",
                                  lost_run=False)

    def _shut_down(self) -> None:
        for worker in self._workers():  # only after an unexpected error in the loop
            self._kill_worker(worker, "master exiting", lost_run=False)
        deadline = time.monotonic() + 5
        while self._workers() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for _ in range(3):
            self._recover_pending()
            if not self.pending:
                break
            time.sleep(0.5)
        try:
            self.publisher.withdraw()
        except redis.RedisError:
            pass  # the node key expires on its own
        if self.embedded is not None:  # last: the children needed it until now
            self.embedded.stop()
        if self._pidfile is not None:
            self._pidfile.remove()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        signal.set_wakeup_fd(-1)
        self.notifier.close()

    # -- systemd -----------------------------------------------------------------------------------

    def _notify_ready(self) -> None:
        if self.ready_notified:
            return
        waited = time.time() - self.started_at
        if all(p.is_up() for p in self.pools if not p.draining) or waited > READY_WAIT:
            self.ready_notified = True
            log.info("all pools up (%.2fs)", waited)
            self.notifier.ready(self._summary())

    def _summary(self) -> str:
        parts = [f"{p.name} {len(p.active())}/{p.desired}" for p in self.pools
                 if not p.draining]
        return ", ".join(parts) + (" (last reload failed)" if self.reload_error else "")


def _wake_only(signum: int, frame: object) -> None:
    """The wakeup fd already carries the signal to the loop; nothing else runs here."""


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name
    hint = " (perhaps out of memory)" if -code == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


def _hide_password(url: str) -> str:
    return re.sub(r"//:[^@]*@", "//:***@", url)


def _thin_runs_scheduler(deployment: Deployment) -> bool:
    """A lone thin pool is one small process for everything, the scheduler included."""
    job_pools = [p for p in deployment.pools if p.runs_jobs]
    return deployment.scheduler.enabled and len(job_pools) == 1 and job_pools[0].mode == "thin"


def _scheduler_child_wanted(deployment: Deployment) -> bool:
    return deployment.scheduler.enabled and not _thin_runs_scheduler(deployment)
