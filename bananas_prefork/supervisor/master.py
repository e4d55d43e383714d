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
import logging
import os
import random
import selectors
import signal
import socket
import time
from typing import Any

import redis
from setproctitle import setproctitle

from ..core import periodic
from ..core.app import App
from ..core.broker import Broker
from ..core.config import ConfigError, Deployment, PoolConfig, load
from ..core.connection import EMBEDDED, connect, redact, resolve, wants_embedded
from ..core.embedded import EmbeddedRedis, RedisUnavailable, answers, running_url
from ..core.scheduler import leader_identity
from ..ops.status import Publisher, node_id
from . import loader
from .child_main import configure_app
from .pidfile import Pidfile
from .pool import Pool
from .systemd import Notifier
from .workforce import Workforce, describe_exit, scheduler_child_wanted

log = logging.getLogger(__name__)

TICK = 1.0
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


class Master:
    """One per machine (or per deployment file): forks, reaps, renews, reloads."""

    def __init__(self, deployment: Deployment, app: App, config_path: str | None = None,
                 notifier: Notifier | None = None) -> None:
        self.embedded: EmbeddedRedis | None = None  # ours, when we run it
        self.embedded_dir: str | None = None
        self.embedded_url: str | None = None
        if wants_embedded(deployment.redis_url):
            # Another process (a master, an App) already runs this data dir's server:
            # share it rather than fork a second server onto the same files, and take
            # its place on the same address if it goes away.
            self.embedded_dir = deployment.data_dir
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
        self.started_at = time.time()
        self.stop_deadline: float | None = None
        self.reload_error: str | None = None
        self.rollout: list[str] = []
        self._rolling: Pool | None = None
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
        self._next_health_check = 0.0
        self._pidfile = Pidfile(deployment.pidfile) if deployment.pidfile else None
        self.publisher = Publisher(self.broker, node_id(self.host, self.pid), deployment.alerts,
                                   deployment.node_ttl)
        self.last_snapshot: dict[str, Any] | None = None
        self._metrics_server: Any = None
        self._next_publish = 0.0
        self.workforce = Workforce(deployment, app, self.broker, self.pid, self._selector,
                                   self._inherited_fds)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 for every requested stop)."""
        self._install_signals()
        if self._pidfile is not None:
            self._pidfile.create(self.pid)
        setproctitle(f"bananas-prefork: master [{self.deployment.source}]")
        self._serve_metrics()
        log.info("master %d starting: %s", self.pid, "; ".join(
            f"{p.name} x{p.desired}" for p in self.workforce.pools))
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
            self.workforce.manage()
            self._notify_ready()
        elif self.state is State.STOPPING:
            self._check_health()
            self._drive_stop()
        if self.state is not State.STARTING:
            self._supervise_embedded()
        self._renew_liveness()
        self.workforce.recover_pending()
        self._publish()
        self.notifier.watchdog()

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + TICK]
        deadlines += [p.next_spawn_at for p in self.workforce.pools if p.missing() and
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
                self.workforce.read_reports(key.data)
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
        self.workforce.scale(+1)

    def handle_ttou(self) -> None:
        self.workforce.scale(-1)

    def handle_chld(self) -> None:
        """Nothing to do here: every pass reaps."""

    # -- starting -----------------------------------------------------------------------

    def _resolve(self, deployment: Deployment) -> Deployment:
        """Pin the Redis URL the master and every child use: ours if embedded, else the
        environment's or the conventional local one (never a server of the app's own)."""
        if self.embedded_url is not None and deployment.redis_url in (None, EMBEDDED):
            return dataclasses.replace(deployment, redis_url=self.embedded_url)
        if deployment.redis_url is None:
            return dataclasses.replace(deployment, redis_url=resolve())
        return deployment

    def _supervise_embedded(self) -> None:
        """Start the private redis-server, again if it died, and in place of a shared one
        that went away (on the address in the data dir, so the children reconnect)."""
        if self.embedded_dir is None or time.monotonic() < self._next_embedded_start:
            return
        server = self.embedded
        if server is None:
            assert self.embedded_url is not None
            if answers(self.embedded_url):
                self._next_embedded_start = time.monotonic() + 1.0
                return
            log.warning("the shared embedded Redis at %s went away; starting ours",
                        redact(self.embedded_url))
            server = self.embedded = EmbeddedRedis(self.embedded_dir)
        elif server.pid is not None:
            return
        try:
            server.start()
        except RedisUnavailable as exc:
            self._next_embedded_start = time.monotonic() + 5.0
            log.error("embedded Redis: %s", exc)
            return
        log.info("embedded Redis %s running at %s (pid %d, data in %s); commands run from "
                 "this directory find it, elsewhere pass --redis", server.server.binary,
                 redact(server.url), server.pid, server.data_dir)

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
        for owner in owners:  # host:master-pid:pid:nonce
            host, _, rest = owner.partition(":")
            if self._dead_master_here(host, rest.split(":", 1)[0]):
                self.workforce.recover(owner, lost_run=True,
                                       reason="worker lost: its master died")

    def _dead_master_here(self, host: str, pid: str = "") -> bool:
        """An earlier master on this machine whose process is gone."""
        return host == self.host and pid.isdigit() and int(pid) not in (0, self.pid) and \
            not _pid_alive(int(pid))

    def _register_periodic(self) -> None:
        """Declare this deployment's periodic entries in the shared schedule."""
        self._periodic_pending = True
        node = leader_identity(self.pid)
        try:
            for source in self.broker.fields(self.broker.keys.periodic_sources):
                other = source.rpartition("|")[2]  # host:pid
                if self._dead_master_here(*other.rsplit(":", 1)):
                    periodic.forget_node(self.broker, other)
            periodic.register(self.broker, periodic.entries_for(self.deployment.periodic,
                                                                self.app), node)
            self._periodic_pending = False
        except redis.RedisError as exc:
            log.warning("cannot register periodic entries yet (%s); will retry", exc)

    # -- children ---------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workforce.workers() if w.pid == pid), None)
            if worker is not None:  # else not ours (we may be PID 1 in a container)
                self.workforce.child_exited(worker, status)
            elif self.embedded is not None and pid == self.embedded.pid:
                code = os.waitstatus_to_exitcode(status)
                self.embedded.exited(code)
                self._next_embedded_start = time.monotonic() + 1.0
                log.error("embedded Redis %s; restarting it", describe_exit(code))

    def _check_health(self) -> None:
        """Once a second, not on every wake-up: busy children report several times a
        second each, and sampling all of them per report would cost the square."""
        now = time.monotonic()
        if now >= self._next_health_check:
            self._next_health_check = now + TICK
            self.workforce.check_health()

    def _inherited_fds(self) -> list[int]:
        """The master's own descriptors, which a forked child closes."""
        fds = [self._wakeup_r, self._wakeup_w, self._selector.fileno()]
        if self._metrics_server is not None:
            fds.append(self._metrics_server.socket.fileno())
        return fds

    # -- liveness ------------------------------------------------------------------------------

    def _renew_liveness(self) -> None:
        """Keep every child's jobs owned: one pipelined round trip for all children."""
        now = time.monotonic()
        if self.state is State.STARTING or now < self._next_renewal:
            return
        owners = self.workforce.owners()
        try:
            if owners:
                self.broker.renew_owners(owners)
            if now >= self._next_orphan_scan:
                self.broker.recover_dead_owners()
                self._next_orphan_scan = now + self.deployment.owner_ttl
            self._next_renewal = now + self.broker.liveness / 3
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
        from ..ops import metrics

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
        pools, scheduler_pid = self.workforce.figures(wall, self.deployment.alerts.utilization)
        return {
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "updated_at": wall,
            "config": self.deployment.source,
            "state": self.state.value,
            "reload_error": self.reload_error,
            "scheduler": {"enabled": self.deployment.scheduler.enabled, "pid": scheduler_pid,
                          "leading": bool(self.workforce.scheduler_state.get("leading"))},
            "pools": pools,
            "alerts": dataclasses.asdict(self.deployment.alerts),
        }

    # -- reloads -------------------------------------------------------------------------------

    def _reload_config(self) -> None:
        """HUP: validate the new file first; apply the difference only if it is valid."""
        self.notifier.reloading()
        try:
            new = self._resolve(load(self.config_path))
            app = loader.reimport_app(new)
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
        self.workforce.configure(new, app, self.broker)
        wanted: dict[str, PoolConfig | None] = {p.name: p for p in new.pools if p.runs_jobs}
        if scheduler_child_wanted(new):
            wanted["scheduler"] = None
        scheduler_changed = old.scheduler != new.scheduler
        for name in {p.name for p in self.workforce.pools if not p.draining} | set(wanted):
            self._reconcile(name, wanted, connection_changed, scheduler_changed)
        self._register_periodic()
        log.info("reloaded %s", new.source)
        self.notifier.ready(self._summary())

    def _reconcile(self, name: str, wanted: dict[str, PoolConfig | None],
                   connection_changed: bool, scheduler_changed: bool) -> None:
        pool = self.workforce.current(name)
        if name not in wanted:
            if pool is not None:
                log.info("pool %s removed: draining", name)
                pool.draining = True
            return
        config = wanted[name]
        if pool is None:
            log.info("pool %s added", name)
            self.workforce.new_pool(name, config)
        elif connection_changed or config != pool.config or \
                (config is None and scheduler_changed):
            self.workforce.replace(pool, config)

    def _reload_code(self) -> None:
        """USR2: import fresh application code, then roll every pool onto it, one by one."""
        self.notifier.reloading()
        try:
            app = loader.reimport_app(self.deployment)
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.error("code reload failed; the running code stays: %s", exc)
            self.notifier.ready(self._summary())
            return
        self.app, self.reload_error = app, None
        configure_app(app, self.deployment)
        self.workforce.configure(self.deployment, app, self.broker)
        self.rollout = [p.name for p in self.workforce.pools if not p.draining]
        self._rolling = None
        self._register_periodic()
        log.info("code reloaded; rolling pools %s", ", ".join(self.rollout))
        self.notifier.ready(self._summary())

    def _advance_rollout(self) -> None:
        while self.rollout:
            if self._rolling is not None:
                if self._rolling in self.workforce.pools:
                    return  # its successor is not up yet, or it is still draining
                self._rolling = None
                self.rollout.pop(0)
                continue
            pool = self.workforce.current(self.rollout[0])
            if pool is None:
                self.rollout.pop(0)
                continue
            self._rolling = pool
            self.workforce.replace(pool, pool.config)
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
            self.workforce.stop_all("shutdown")
        else:
            log.info("fast stop: killing children; their jobs return to their queues")
            self.workforce.kill_all("fast stop")

    def _drive_stop(self) -> None:
        if not self.workforce.workers():
            self.state = State.STOPPED
            return
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            self.workforce.kill_all("shutdown timeout: its jobs return to their queues")

    def _shut_down(self) -> None:
        self.workforce.kill_all("master exiting")  # only after an unexpected error in the loop
        deadline = time.monotonic() + 5
        while self.workforce.workers() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
        for _ in range(3):
            self.workforce.recover_pending()
            if not self.workforce.pending:
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
        if self.workforce.all_up() or waited > READY_WAIT:
            self.ready_notified = True
            log.info("all pools up (%.2fs)", waited)
            self.notifier.ready(self._summary())

    def _summary(self) -> str:
        summary = self.workforce.summary()
        return summary + (" (last reload failed)" if self.reload_error else "")


def _wake_only(signum: int, frame: object) -> None:
    """The wakeup fd already carries the signal to the loop; nothing else runs here."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

