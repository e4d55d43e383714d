"""A master's part in the cluster view: publish its node, time its queue alerts.

Every second the master publishes its node record under a key that expires
after ``node_ttl``: a master that died shows as ``lost`` once its figures are
older than ``LOST_AFTER``, and disappears when the key expires. Alerts that
must hold for a while ("high-priority depth above 100 for two minutes") need
memory: every few seconds each master records since when its own queue
conditions hold (``nodes.py`` names them with their thresholds). With each
publish the master also adds what its pools did since the last one to the
cluster's history (``history.py``): one script call a second.
"""

from __future__ import annotations

import time

from ..core.broker import Broker
from ..core.config import AlertsConfig
from ..core.history import HistoryStore, Tally
from ..core.identity import NodeId
from ..core.nodes import (
    CONDITION_STALE_AFTER,
    LOST_AFTER,
    NodeStatus,
    NodeStore,
    depth_condition,
    depth_conditions,
    high_depth_condition,
)
from .timing import Every

QUEUE_CHECK_INTERVAL = 5.0


class Publisher:
    def __init__(self, broker: Broker, node: NodeId, alerts: AlertsConfig,
                 ttl: float) -> None:
        self.broker = broker
        self.store = NodeStore(broker.client, broker.keys)
        self.node = node
        self.alerts = alerts
        self.ttl = max(int(ttl), int(LOST_AFTER) + 1)
        self._queue_check = Every(QUEUE_CHECK_INTERVAL)
        self.history = HistoryStore(broker.client, broker.keys)
        self.tally = Tally()

    def publish(self, status: NodeStatus) -> None:
        self.store.publish(self.node, status, self.ttl)
        self.record_history(status)
        if self._queue_check.due():
            self.track_queue_conditions()

    def record_history(self, status: NodeStatus) -> None:
        """Add this node's jobs since the last publish; kept for the next one if Redis fails."""
        delta, baseline = self.tally.delta(status["pools"])
        if delta is not None:
            self.history.record(delta)
        self.tally.commit(baseline)

    def withdraw(self) -> None:
        self.store.withdraw(self.node)

    def track_queue_conditions(self) -> None:
        """Record since when each of this master's queue conditions holds; clear the rest.

        A condition this master's thresholds name and that no longer holds is cleared
        at once; one of another master's thresholds is left to it, unless nobody has
        seen it for ``node_ttl`` (its master is gone).
        """
        thresholds = self.alerts
        depths = self.broker.queue_depths()
        holding = {depth_condition(thresholds.depth, p, t) for p, types in depths.items()
                   for t, n in types.items() if n > thresholds.depth}
        if sum(depths.get("high", {}).values()) > thresholds.high_depth:
            holding.add(high_depth_condition(thresholds.high_depth))
        known = self.store.conditions()
        now = time.time()
        since: dict[str, float] = {}
        for condition in holding:
            started, last_seen = known.get(condition, (now, now))
            since[condition] = now if now - last_seen > CONDITION_STALE_AFTER else started
        cleared = [condition for condition, (_, last_seen) in known.items()
                   if condition not in holding
                   and (self._is_own(condition) or now - last_seen > self.ttl)]
        self.store.record_conditions(since, cleared, now)

    def _is_own(self, condition: str) -> bool:
        return (condition == high_depth_condition(self.alerts.high_depth)
                or condition.startswith(depth_conditions(self.alerts.depth)))
