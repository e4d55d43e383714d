"""The scheduler: one leader across every machine sharing a namespace.

Every master runs one; they contend for a Redis lock with an owner token
(``SET NX PX``), renew it with compare-and-extend and release it with
compare-and-delete. Only the leader promotes due jobs, and the promote script
checks the token, so a leader that lost its lease cannot act (fencing).

The leader sleeps until the earliest due job, at most ``interval``; enqueueing
a job due sooner pushes a token that wakes it at once. The sleep itself is a
local ``Event.wait``: Redis expires a BLPOP timeout only on its own timer tick
(``hz``, 100 ms by default), far too coarse for a job due at a given moment, so
a listener thread turns wake-up tokens into that event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from .broker import Broker, LockLost
from .errors import Trouble
from .identity import LeaderToken, NodeId
from .leadership import LeaderLock

if TYPE_CHECKING:
    from .app import App
    from .config import Deployment

log = logging.getLogger(__name__)

PROMOTE_BATCH = 500  # about 2.5 ms of Redis time per call; ~180,000 jobs/s
QUEUE_PRUNE_INTERVAL = 300.0  # a queue empty at two looks this far apart is forgotten
QUIET_MAX = 5.0  # the loop goes round at least this often, whatever it waits for


class Scheduler:
    """Leader election plus the leader's duties: promote, recover orphans, periodic ticks."""

    def __init__(
        self,
        broker: Broker,
        *,
        node: NodeId | None = None,
        interval: float = 1.0,
        lease: float = 10.0,
        batch: int = PROMOTE_BATCH,
        tick: Callable[[str], float | None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        on_redis_refusal: Callable[[str, str | None], None] | None = None,
        prune_interval: float = QUEUE_PRUNE_INTERVAL,
    ) -> None:
        self.broker = broker
        self.lock = LeaderLock(broker)
        self.token = str(LeaderToken.new(node or NodeId.new()))
        self.interval = interval
        self.lease = lease
        self.batch = batch
        self.tick = tick  # periodic entries: called with the token, returns seconds to next
        self.heartbeat = heartbeat or (lambda: None)  # the loop went round (hang detection)
        self.is_leader = False
        self.promoted = 0
        self._renew_at = 0.0
        self._next_recovery = 0.0
        self.prune_interval = prune_interval
        self._next_prune = 0.0
        self._empty_before: set[str] = set()
        self._stop = threading.Event()
        self._leading = threading.Event()
        self._due_sooner = threading.Event()
        self._trouble = Trouble("scheduler", on_redis_refusal)

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> None:
        """Contend, lead, and let go cleanly when stop() is called.

        Every Redis error is waited out (a leader that cannot renew for a whole
        lease finds out on its next call: the scripts fence it). Anything else
        ends this method: whoever runs the scheduler must then end its process.
        """
        threading.Thread(target=self._listen_for_wakeups, daemon=True,
                         name="bananas-scheduler-wake").start()
        try:
            while not self._stop.is_set():
                self.heartbeat()
                try:
                    if self.is_leader:
                        self._lead_once()
                    else:
                        self._contend_once()
                except redis.RedisError as exc:
                    self._stop.wait(self._trouble.failed(exc))
                else:
                    self._trouble.recovered()
        finally:
            self.resign()

    def stop(self) -> None:
        self._stop.set()
        self._leading.set()
        self._due_sooner.set()

    def resign(self) -> None:
        """Release the lock if we hold it and tell followers to contend now."""
        if not self.is_leader:
            return
        self._set_leader(False)
        try:
            if self.lock.release(self.token):
                log.info("scheduler: %s released leadership", self.token)
        except redis.RedisError as exc:
            log.warning("scheduler: could not release the lock (it expires): %s", exc)

    # -- follower ------------------------------------------------------------

    def _contend_once(self) -> None:
        if self.lock.acquire(self.token, self.lease):
            self._set_leader(True)
            self._renew_at = time.monotonic() + self.lease / 3
            log.info("scheduler: %s is the leader", self.token)
            return
        _, remaining = self.lock.holder()
        # Sleep until the lease could expire (checking at least every second, so
        # stop() is prompt), but wake at once on a hand-over.
        wait = min(1.0, remaining if remaining is not None else 0.05)
        self.lock.wait_for_handover(wait)

    # -- leader --------------------------------------------------------------

    def _lead_once(self) -> None:
        now = time.monotonic()
        if now >= self._renew_at:
            if not self.lock.renew(self.token, self.lease):
                self._lost("renewal refused")
                return
            self._renew_at = now + self.lease / 3
        self._due_sooner.clear()
        try:
            wait = self._promote_all()
            if self.tick is not None:
                wait = _earliest(wait, self.tick(self.token))
        except LockLost:
            self._lost("promotion refused")
            return
        if now >= self._next_recovery:
            self.broker.recover_dead_owners()
            self._next_recovery = now + self.broker.recovery_period
        if now >= self._next_prune:
            self._prune()
            self._next_prune = now + self.prune_interval
        wait = min(wait if wait is not None else self.interval, self.interval, QUIET_MAX,
                   max(0.0, min(self._renew_at, self._next_recovery) - time.monotonic()))
        if wait > 0:
            self._due_sooner.wait(wait)

    def _prune(self) -> None:
        """Forget queues found empty now and at the last look, one interval ago, and
        consumer groups no consumer fetched for lately."""
        empty = self.broker.empty_queues()
        forgotten = self.broker.prune_queues(empty & self._empty_before)
        if forgotten:
            log.info("scheduler: forgot %d queue(s) that stayed empty", forgotten)
        self._empty_before = empty
        groups = self.broker.prune_groups()
        if groups:
            log.info("scheduler: forgot %d consumer group(s) nobody fetched for", groups)

    def _promote_all(self) -> float | None:
        """Promote every due job in bounded batches; seconds until the next one."""
        while True:
            promoted, wait = self.broker.promote_due(self.token, self.batch)
            self.promoted += promoted
            if promoted < self.batch:
                return wait

    def _lost(self, why: str) -> None:
        log.warning("scheduler: %s lost leadership (%s)", self.token, why)
        self._set_leader(False)

    def _set_leader(self, leading: bool) -> None:
        self.is_leader = leading
        if leading:
            self._leading.set()
        else:
            self._leading.clear()

    def _listen_for_wakeups(self) -> None:
        """While leading, turn wake-up tokens into ``_due_sooner``.

        Only the leader listens: a follower popping a token would steal it
        from the leader.
        """
        while not self._stop.is_set():
            if not self._leading.wait(0.5) or not self.is_leader:
                continue
            try:
                if self.lock.wait_for_wake(1.0):
                    self._due_sooner.set()
            except redis.RedisError:  # the leader's own calls report it; it wakes anyway
                self._stop.wait(0.5)


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def build_scheduler(app: App, deployment: Deployment, node: NodeId,
                    heartbeat: Callable[[], None] | None = None,
                    on_redis_refusal: Callable[[str, str | None], None] | None = None,
                    ) -> Scheduler:
    """The scheduler a master's child (or a thin pool's child) runs."""
    from .periodic import PeriodicRunner

    lease = deployment.scheduler.lease
    runner = PeriodicRunner(app.broker, handover_window=3 * lease)
    return Scheduler(app.broker, node=node,
                     interval=deployment.scheduler.interval, lease=lease, tick=runner.fire_due,
                     heartbeat=heartbeat, on_redis_refusal=on_redis_refusal,
                     prune_interval=deployment.scheduler.prune_interval)
