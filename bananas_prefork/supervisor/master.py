"""The master: supervises groups of children as a small, explicit state machine.

    STARTING --redis answers--> RUNNING --TERM/INT/QUIT--> STOPPING --children gone--> STOPPED

Every pass of the loop is the same: wait (at most a second) for a signal, a
child's report or a deadline; handle the queued signals by name; reap dead
children and give back their jobs at once; judge the health of the living;
bring every group to its wanted size; renew the liveness of the children's
jobs. Signal handlers do nothing but wake the loop (``signal.set_wakeup_fd``
writes the signal number to a pipe), so nothing runs inside a handler.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import selectors
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import redis
from setproctitle import setproctitle

from ..core import periodic
from ..core.app import App
from ..core.backoff import Backoff
from ..core.broker import Broker
from ..core.config import (
    ConfigError,
    Deployment,
    PoolConfig,
    SchedulerConfig,
    error_at,
    load,
)
from ..core.connection import EMBEDDED, FIRST_RUN, embedded_reason, redact, resolve
from ..core.errors import RedisRefused, Trouble, describe, is_transient
from ..core.identity import NodeId
from ..core.nodes import NodeStatus, RefusalStatus
from . import loader
from .child_main import configure_app, wake_only
from .embedded_keeper import EmbeddedKeeper
from .pidfile import Pidfile
from .pool import Group
from .publisher import Publisher
from .systemd import Notifier
from .timing import Every
from .workforce import Workforce, wanted_groups

log = logging.getLogger(__name__)

TICK = 1.0
# The master's own Redis calls give up fast, so that a Redis that hangs never holds
# its loop (reaping, health, the systemd watchdog) for long: one retry of 2 s.
REDIS_TIMEOUT = 2.0
REDIS_RETRIES = 1
RENEWAL_INTERVAL = 1.0  # a whole-machine pause shorter than owner_ttl - 2 s loses nothing
READY_WAIT = 60.0  # tell systemd we are ready after this even if a pool keeps failing
PUBLISH_INTERVAL = 1.0
EVICTION_CHECK_INTERVAL = 60.0
PERIODIC_REFRESH_INTERVAL = 60.0
REDIS_RETRY = 1.0  # a failed renewal is tried again this soon
SIGNAL_NAMES = {signal.SIGHUP: "hup", signal.SIGTERM: "term", signal.SIGINT: "int",
                signal.SIGQUIT: "quit", signal.SIGUSR2: "usr2", signal.SIGTTIN: "ttin",
                signal.SIGTTOU: "ttou", signal.SIGCHLD: "chld", signal.SIGUSR1: "usr1"}


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Service(Protocol):
    """Something the master runs beside its children: the metrics server, say.

    The operator layer hands services in, so the master never imports it.
    """

    def start(self, master: Master) -> None: ...

    def fileno(self) -> int | None:
        """A descriptor every forked child must close, if any."""

    def stop(self) -> None: ...


class Master:
    """One per machine (or per deployment file): forks, reaps, renews, reloads."""

    def __init__(self, deployment: Deployment, app: App, config_path: str | None = None,
                 notifier: Notifier | None = None, services: Sequence[Service] = ()) -> None:
        reason = embedded_reason(deployment.redis_url)
        self.embedded = _embedded_keeper(deployment) if reason else None
        self.embedded_fallback = reason == FIRST_RUN
        if self.embedded_fallback:
            log.warning("NO REDIS CONFIGURED: redis_url is set nowhere (file, BANANAS_REDIS_URL, "
                        "BANANAS_REDIS_URL_FILE, REDIS_URL) and nothing listens on "
                        "127.0.0.1:6379, so this master runs a PRIVATE embedded Redis (data in "
                        "%s). Producers using any other Redis are not served. Fine for a first "
                        "run; in production set redis_url (never done under systemd).",
                        deployment.data_dir)
        deployment = self._resolve(deployment)
        self.deployment = deployment
        self.app = app
        self.config_path = config_path
        self.pid = os.getpid()
        self.node = NodeId.new()
        self.state = State.STARTING
        self.notifier = notifier or Notifier()
        self.services = list(services)
        self.started_at = time.time()
        self.stop_deadline: float | None = None
        self.reload_error: str | None = None
        self.rollout: list[tuple[str, str]] = []  # (kind, name) of groups still to roll
        self._rolling: Group | None = None
        self.ready_notified = False
        configure_app(app, deployment)
        self.broker = self.new_broker()
        self._selector = selectors.DefaultSelector()
        self._wakeup_r = self._wakeup_w = -1
        self._connect_backoff = Backoff(0.5, 30.0)
        self._next_connect = 0.0
        self._renewal = Every(min(RENEWAL_INTERVAL, self.broker.liveness / 3))
        self._orphan_scan = Every(deployment.owner_ttl)
        self._health_check = Every(TICK)
        self._publishing = Every(PUBLISH_INTERVAL)
        self._eviction_check = Every(EVICTION_CHECK_INTERVAL)
        self._eviction_policy: str | None = "noeviction"
        self._periodic_refresh = Every(PERIODIC_REFRESH_INTERVAL)
        self.refusals: dict[str, str] = {}  # what Redis refuses the master itself
        self._renewal_trouble = Trouble("master: job liveness renewal", self._refused)
        self._publish_trouble = Trouble("master: status publishing", self._refused)
        self._periodic_trouble = Trouble("master: periodic registration", self._refused)
        self._pidfile = Pidfile(deployment.pidfile) if deployment.pidfile else None
        self.publisher = Publisher(self.broker, self.node, deployment.alerts,
                                   deployment.node_ttl)
        self.last_snapshot: NodeStatus | None = None
        self.workforce = Workforce(deployment, app, self.broker, self.node, self._selector,
                                   self._inherited_fds)

    # -- the loop ------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code (0 for every requested stop)."""
        self._install_signals()
        if self._pidfile is not None:
            self._pidfile.create(self.pid)
        setproctitle(f"bananas-prefork: master [{self.deployment.source}]")
        for service in self.services:
            service.start(self)
        log.info("master %d starting: %s", self.pid, "; ".join(
            f"{g.name} x{g.desired}" for g in self.workforce.groups))
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
            if self._periodic_refresh.due():
                self._register_periodic()
            self._check_health()
            self._advance_rollout()
            self.workforce.manage()
            self._notify_ready()
        elif self.state is State.STOPPING:
            self._check_health()
            self._drive_stop()
        if self.state is not State.STARTING and self.embedded is not None:
            self.embedded.tick()
        # Each step below may wait on Redis for a few seconds at most; the watchdog is
        # petted between them (it sends only when half its interval has passed).
        for step in (self._renew_liveness, self._check_eviction,
                     self.workforce.recover_pending, self._publish):
            step()
            self.notifier.watchdog()

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + TICK]
        if self.state is State.RUNNING:
            deadlines += [g.next_spawn_at for g in self.workforce.groups if g.missing()]
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
            signal.signal(signum, wake_only)

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

    def handle_usr1(self) -> None:
        """Log rotation's signal elsewhere: our logs go to stderr (the journal under
        systemd), so there is nothing to reopen; never a reason to stop."""
        log.info("USR1: nothing to reopen (logs go to stderr); ignored")

    # -- starting -----------------------------------------------------------------------

    def _resolve(self, deployment: Deployment) -> Deployment:
        """Pin the Redis URL the master and every child use: the embedded one if we keep
        it, else the environment's or the conventional local one (never a server of the
        app's own)."""
        if self.embedded is not None and deployment.redis_url in (None, EMBEDDED):
            return dataclasses.replace(deployment, redis_url=self.embedded.url)
        if deployment.redis_url is None:
            return dataclasses.replace(deployment, redis_url=resolve())
        return deployment

    def new_broker(self) -> Broker:
        """A connection of the master's own, to the Redis and namespace its children use."""
        return self.app.new_broker(socket_timeout=REDIS_TIMEOUT, retries=REDIS_RETRIES)

    def _connect(self) -> None:
        """Wait for Redis with backoff; children start once it answers.

        RedisRefused when it answers but will not serve this deployment as configured
        (a wrong CA or password, a missing ACL permission): nothing runs yet, so the
        master exits with that one line rather than retry what cannot succeed.
        """
        if self.embedded is not None:
            self.embedded.tick()
        if time.monotonic() < self._next_connect:
            return
        try:
            self.broker.ping()
            self.broker.load_scripts()
        except redis.RedisError as exc:
            if not is_transient(exc):  # a person must act: say so once and stop here
                raise RedisRefused(f"cannot use Redis at {redact(self.app.redis_url)}: "
                                   f"{describe(exc)}") from None
            delay = self._connect_backoff.failed()
            self._next_connect = time.monotonic() + delay
            log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
            return
        log.info("redis answered; starting children")
        self.state = State.RUNNING
        # Jobs of an earlier master's children come back when their liveness expires,
        # never sooner: only that key can tell a dead owner from a live one elsewhere.
        self._publish()  # running, for status and for the periodic schedule
        self._register_periodic()

    def _register_periodic(self) -> None:
        """Declare this deployment's periodic entries in the shared schedule (and forget
        what masters that are gone declared). Also once a minute: a master cut off from
        Redis for longer than node_ttl was taken for gone, and declares its entries again."""
        try:
            periodic.register(self.broker, periodic.entries_for(self.deployment.periodic,
                                                                self.app), str(self.node))
            self._periodic_trouble.recovered()
            self._periodic_refresh.retry_in(PERIODIC_REFRESH_INTERVAL)
        except redis.RedisError as exc:
            self._periodic_refresh.retry_in(self._periodic_trouble.failed(exc))

    # -- children ---------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.workforce.child_of(pid)
            if child is not None:
                self.workforce.child_exited(child, status)
            elif self.embedded is not None:
                self.embedded.reaped(pid, status)
            # else not ours (we may be PID 1 in a container)

    def _check_health(self) -> None:
        """Once a second, not on every wake-up: busy children report several times a
        second each, and sampling all of them per report would cost the square."""
        if self._health_check.due():
            self.workforce.check_health()

    def _inherited_fds(self) -> list[int]:
        """The master's own descriptors, which a forked child closes."""
        fds = [self._wakeup_r, self._wakeup_w, self._selector.fileno()]
        if self._pidfile is not None and self._pidfile.fd is not None:
            fds.append(self._pidfile.fd)  # the lock must end with the master, not a child
        return fds + [fd for s in self.services if (fd := s.fileno()) is not None]

    # -- liveness ------------------------------------------------------------------------------

    def _renew_liveness(self) -> None:
        """Keep every child's jobs owned: one pipelined round trip for all children."""
        if self.state is State.STARTING or not self._renewal.due():
            return
        try:
            for broker, owners in self.workforce.owners():
                broker.renew_owners(owners)
            if self._orphan_scan.due():
                self.broker.recover_dead_owners()
            self._renewal_trouble.recovered()
        except redis.RedisError as exc:
            self._renewal.retry_in(min(REDIS_RETRY, self._renewal_trouble.failed(exc)))

    def _check_eviction(self) -> None:
        """Warn, at start and whenever it changes, when Redis may evict our keys."""
        if self.state is State.STARTING or not self._eviction_check.due():
            return
        try:
            policy = self.broker.eviction_policy()
        except redis.RedisError:
            return  # the renewal and publishing report outages
        if policy != self._eviction_policy and policy not in (None, "noeviction"):
            log.error("redis maxmemory-policy is %s: under memory pressure Redis will evict "
                      "keys, and with them jobs, owner keys and locks; set it to noeviction",
                      policy)
        self._eviction_policy = policy

    def _refused(self, where: str, error: str | None) -> None:
        if error is None:
            self.refusals.pop(where, None)
        else:
            self.refusals[where] = error

    # -- status ---------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Every second: this node's figures, for ``status`` on any machine."""
        if self.state in (State.STARTING, State.STOPPED) or not self._publishing.due():
            return
        self.last_snapshot = self.snapshot()
        try:
            self.publisher.publish(self.last_snapshot)
            self._publish_trouble.recovered()
        except redis.RedisError as exc:
            self._publish_trouble.failed(exc)  # the next second is the retry

    def snapshot(self) -> NodeStatus:
        wall = time.time()
        pools, scheduler_pid = self.workforce.figures(wall, self.deployment.alerts.utilization)
        return {
            "host": self.node.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "updated_at": wall,
            "config": self.deployment.source,
            "state": self.state.value,
            "reload_error": self.reload_error,
            "embedded_fallback": self.embedded_fallback,
            "scheduler": {"enabled": self.deployment.scheduler.enabled, "pid": scheduler_pid,
                          "leading": bool(self.workforce.scheduler_state.get("leading"))},
            "pools": pools,
            "alerts": dataclasses.asdict(self.deployment.alerts),
            "retention": {"result_ttl": self.deployment.result_ttl,
                          "done_ttl": self.deployment.done_ttl,
                          "dead_ttl": self.deployment.dead_ttl,
                          "dead_max": self.deployment.dead_max},
            "redis_refusals": self._refusals(),
        }

    def _refusals(self) -> list[RefusalStatus]:
        own: list[RefusalStatus] = [{"child": "master", "where": where, "error": error}
                                    for where, error in sorted(self.refusals.items())]
        return own + self.workforce.refusals()

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
            self.broker = self.new_broker()
        self.publisher = Publisher(self.broker, self.node, new.alerts, new.node_ttl)
        self.workforce.configure(new, app, self.broker)
        wanted = wanted_groups(new)
        running = {(g.kind, g.name) for g in self.workforce.groups if not g.draining}
        for key in sorted(running | set(wanted)):
            self._reconcile(key, wanted.get(key), connection_changed)
        self._register_periodic()
        log.info("reloaded %s", new.source)
        self.notifier.ready(self._summary())

    def _reconcile(self, key: tuple[str, str], config: PoolConfig | SchedulerConfig | None,
                   connection_changed: bool) -> None:
        """Bring one group in line with the reloaded file: add, drain, replace or keep."""
        kind, name = key
        group = self.workforce.current(kind, name)
        if config is None:
            if group is not None:
                log.info("%s %s removed: draining", kind, name)
                group.draining = True
        elif group is None:
            log.info("%s %s added", kind, name)
            self.workforce.new_group(config)
        elif connection_changed or config != group.config:
            self.workforce.replace(group, config)

    def _reload_code(self) -> None:
        """USR2: import fresh application code, then roll every group onto it, one by one."""
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
        self.rollout = [(g.kind, g.name) for g in self.workforce.groups if not g.draining]
        self._rolling = None
        self._register_periodic()
        log.info("code reloaded; rolling %s", ", ".join(name for _, name in self.rollout))
        self.notifier.ready(self._summary())

    def _advance_rollout(self) -> None:
        while self.rollout:
            if self._rolling is not None:
                if self._rolling in self.workforce.groups:
                    return  # its successor is not up yet, or it is still draining
                self._rolling = None
                self.rollout.pop(0)
                continue
            group = self.workforce.current(*self.rollout[0])
            if group is None:
                self.rollout.pop(0)
                continue
            self._rolling = group
            self.workforce.replace(group, group.config)
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
        if not self.workforce.children():
            self.state = State.STOPPED
            return
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            self.workforce.kill_all("shutdown timeout: its jobs return to their queues")

    def _shut_down(self) -> None:
        self.workforce.kill_all("master exiting")  # only after an unexpected error in the loop
        deadline = time.monotonic() + 5
        while self.workforce.children() and time.monotonic() < deadline:
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
        for service in self.services:
            service.stop()
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


def _embedded_keeper(deployment: Deployment) -> EmbeddedKeeper:
    """The embedded server's keeper; a data dir we cannot write is the file's mistake."""
    try:
        Path(deployment.data_dir).mkdir(parents=True, exist_ok=True)
        if not os.access(deployment.data_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise error_at(deployment, "data_dir", f"cannot create or write {deployment.data_dir!r} "
                                               f"for the embedded Redis: {exc.strerror}") from None
    return EmbeddedKeeper(deployment.data_dir)
