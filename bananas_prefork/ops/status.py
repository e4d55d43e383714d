"""The cluster as Redis knows it: each master publishes, ``status`` reads.

Every master writes its node (pools, children, figures) every second under a
key that expires after ``NODE_TTL``: a master that died shows as ``lost`` once
its figures are older than ``LOST_AFTER``, and disappears when the key
expires. ``gather`` reads only Redis, so status works from any machine.

Alerts that must hold for a while ("high-priority depth above 100 for two
minutes") need memory: masters record since when a queue condition holds in
one hash, and pools publish since when they are saturated; ``evaluate``
compares those with the thresholds. A queue condition is named with its
threshold (``depth>1000:normal:send_email``), so masters started with
different ``[alerts]`` tables time their own conditions without clearing each
other's; each entry also says when it was last seen holding, and an entry
nobody has confirmed lately counts for nothing. Every master publishes its
thresholds, so ``status`` without a file judges with the ones the cluster runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, cast

from ..core.broker import Broker
from ..core.config import AlertsConfig
from ..core.keys import PRIORITIES

NODE_TTL = 60
NODE_TTL_MAX = 86400  # index entries older than any node key can live are pruned
LOST_AFTER = 5.0
NO_LIVE_CHILD_GRACE = 10.0
QUEUE_CHECK_INTERVAL = 5.0
CONDITION_STALE_AFTER = 3 * QUEUE_CHECK_INTERVAL


def node_id(host: str, pid: int) -> str:
    return f"{host}:{pid}"


# -- publishing (a master) -------------------------------------------------------------


class Publisher:
    """Writes one master's node under a TTL, and tracks queue alert conditions."""

    def __init__(self, broker: Broker, node: str, alerts: AlertsConfig,
                 ttl: float = NODE_TTL) -> None:
        self.broker = broker
        self.node = node
        self.alerts = alerts
        self.ttl = max(int(ttl), int(LOST_AFTER) + 1)
        self._next_queue_check = 0.0

    def publish(self, snapshot: dict[str, Any]) -> None:
        now = time.time()
        keys = self.broker.keys
        with self.broker.client.pipeline(transaction=False) as pipe:
            pipe.set(keys.node(self.node), json.dumps(snapshot), ex=self.ttl)
            pipe.zadd(keys.nodes, {self.node: now})
            pipe.zremrangebyscore(keys.nodes, "-inf", now - NODE_TTL_MAX)
            pipe.execute()
        if time.monotonic() >= self._next_queue_check:
            self._next_queue_check = time.monotonic() + QUEUE_CHECK_INTERVAL
            self.track_queue_conditions()

    def withdraw(self) -> None:
        """A clean stop: drop the node at once rather than show it lost."""
        keys = self.broker.keys
        with self.broker.client.pipeline(transaction=False) as pipe:
            pipe.delete(keys.node(self.node))
            pipe.zrem(keys.nodes, self.node)
            pipe.execute()

    def track_queue_conditions(self) -> None:
        """Record since when each of this master's queue conditions holds; clear the rest."""
        depths = self.broker.queue_depths()
        thresholds = self.alerts
        holding = {depth_condition(thresholds, p, t) for p, types in depths.items()
                   for t, n in types.items() if n > thresholds.depth}
        if sum(depths.get("high", {}).values()) > thresholds.high_depth:
            holding.add(high_depth_condition(thresholds))
        key = self.broker.keys.alerts_since
        known = {name: observed(value) for name, value in self.broker.fields(key).items()}
        now = time.time()
        with self.broker.client.pipeline(transaction=False) as pipe:
            for condition in holding:
                since, last_seen = known.get(condition, (now, now))
                if now - last_seen > CONDITION_STALE_AFTER:
                    since = now  # nobody watched it for a while: start again
                pipe.hset(key, condition, f"{since}|{now}")
            for condition, (_, last_seen) in known.items():
                if condition in holding:
                    continue
                if is_own(condition, thresholds) or now - last_seen > NODE_TTL:
                    pipe.hdel(key, condition)
            pipe.execute()


def high_depth_condition(thresholds: AlertsConfig) -> str:
    return f"high_depth>{thresholds.high_depth}"


def depth_condition(thresholds: AlertsConfig, priority: str, job_type: str) -> str:
    return f"depth>{thresholds.depth}:{priority}:{job_type}"


def is_own(condition: str, thresholds: AlertsConfig) -> bool:
    """Whether a master with these thresholds is the one to clear this condition."""
    return (condition == high_depth_condition(thresholds)
            or condition.startswith(f"depth>{thresholds.depth}:"))


def observed(value: str) -> tuple[float, float]:
    """(since, last seen) of a condition entry."""
    since, _, last_seen = value.partition("|")
    return float(since), float(last_seen or since)


# -- reading (status) ---------------------------------------------------------------------


def gather(broker: Broker, alerts: AlertsConfig | None = None) -> dict[str, Any]:
    """The contract's ``status --json`` object (plus extra fields), from Redis alone."""
    keys = broker.keys
    sec, usec = cast(tuple[int, int], broker.client.time())
    now = sec + usec / 1e6
    node_ids = cast(list[str], broker.client.zrange(keys.nodes, 0, -1))
    with broker.client.pipeline(transaction=False) as pipe:
        for node in node_ids:
            pipe.get(keys.node(node))
        raw_nodes = pipe.execute()
    nodes = []
    for raw in raw_nodes:
        if raw:
            node = json.loads(raw)
            if now - float(node.get("updated_at", 0)) > LOST_AFTER:
                node["state"] = "lost"
            nodes.append(node)
    nodes.sort(key=lambda n: (n.get("host", ""), n.get("pid", 0)))
    token, remaining = broker.lock_holder()
    counts = broker.counts()
    depths, ages = broker.queue_report()
    from ..core.periodic import conflicts

    result: dict[str, Any] = {
        "time": now,
        "namespace": broker.keys.namespace,
        "nodes": nodes,
        "queues": depths,
        "oldest": ages,
        "scheduled": counts["scheduled"],
        "dead": counts["dead"],
        "in_flight": counts["in_flight"],
        "scheduler": {
            "leader": token.rsplit(":", 1)[0] if token else None,
            "lease_expires_in": round(remaining, 3) if remaining is not None else None,
        },
        "periodic": {"entries": sorted(broker.fields(keys.periodic)),
                     "conflicts": conflicts(broker)},
    }
    result["served_by"] = served_by(result)
    thresholds, source = (alerts, "file") if alerts else cluster_thresholds(nodes)
    result["alert_thresholds"] = {"source": source, **dataclasses.asdict(thresholds)}
    since = {}
    for condition, value in broker.fields(keys.alerts_since).items():
        started, last_seen = observed(value)
        if now - last_seen <= CONDITION_STALE_AFTER:
            since[condition] = started
    result["alerts"] = [a.as_dict() for a in evaluate(result, since, thresholds)]
    return result


def cluster_thresholds(nodes: list[dict[str, Any]]) -> tuple[AlertsConfig, str]:
    """The alert thresholds the live masters run with; where they differ, the most sensitive."""
    names = [f.name for f in dataclasses.fields(AlertsConfig)]
    published = [node["alerts"] for node in nodes
                 if node.get("state") != "lost" and isinstance(node.get("alerts"), dict)]
    if not published:
        return AlertsConfig(), "defaults"
    lowest = {name: min(p.get(name, getattr(AlertsConfig, name)) for p in published)
              for name in names}
    return AlertsConfig(**lowest), "nodes"


def _serves(pool: dict[str, Any], priority: str, job_type: str) -> bool:
    types = pool.get("job_types", ["*"])
    return priority in pool.get("priorities", []) and ("*" in types or job_type in types)


def served_by(status: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Priority -> job type -> the live pools (``host:pid/pool``) that take it."""
    out: dict[str, dict[str, list[str]]] = {}
    live = [n for n in status["nodes"] if n.get("state") != "lost"]
    for priority, types in status["queues"].items():
        for job_type in types:
            out.setdefault(priority, {})[job_type] = [
                f"{node['host']}:{node['pid']}/{pool['name']}"
                for node in live for pool in node.get("pools", [])
                if pool.get("state") != "stopping" and _serves(pool, priority, job_type)]
    return out


# -- alerts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    name: str
    message: str
    severity: str = "critical"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "severity": self.severity, "message": self.message}


def evaluate(status: dict[str, Any], since: dict[str, float],
             thresholds: AlertsConfig) -> list[Alert]:
    """Every alert that is firing now."""
    now = float(status["time"])
    alerts: list[Alert] = []

    def held(condition: str, for_seconds: float) -> bool:
        return condition in since and now - since[condition] >= for_seconds

    high = sum(status["queues"].get("high", {}).values())
    if high > thresholds.high_depth and held(high_depth_condition(thresholds),
                                             thresholds.high_depth_for):
        alerts.append(Alert("high_depth", f"{high} high-priority jobs waiting for over "
                                          f"{thresholds.high_depth_for:g}s"))
    for priority in PRIORITIES:
        for job_type, depth in status["queues"].get(priority, {}).items():
            if depth > thresholds.depth and held(depth_condition(thresholds, priority, job_type),
                                                 thresholds.depth_for):
                alerts.append(Alert("queue_depth", f"{priority}/{job_type}: {depth} jobs "
                                                   f"waiting for over {thresholds.depth_for:g}s"))
            if depth and not status["served_by"].get(priority, {}).get(job_type):
                alerts.append(Alert("unserved_queue", f"{priority}/{job_type}: {depth} jobs and "
                                                      "no live pool serves them", "warning"))
    for node in status["nodes"]:
        alerts += _node_alerts(node, now, thresholds)
    if status["scheduler"]["leader"] is None and (status["nodes"] or status["scheduled"]):
        alerts.append(Alert("no_scheduler_leader", "no scheduler leads: delayed jobs, retries "
                                                   "and periodic jobs are not being scheduled"))
    for name, nodes in status["periodic"]["conflicts"].items():
        alerts.append(Alert("periodic_conflict", f"periodic entry {name!r} is declared "
                                                 f"differently by {', '.join(nodes)}", "warning"))
    return alerts


def _node_alerts(node: dict[str, Any], now: float, thresholds: AlertsConfig) -> list[Alert]:
    where = f"{node.get('host')}:{node.get('pid')}"
    if node.get("state") == "lost":
        return [Alert("node_lost", f"master {where} stopped reporting "
                                   f"{now - float(node.get('updated_at', now)):.0f}s ago")]
    alerts = []
    if node.get("reload_error"):
        alerts.append(Alert("reload_failed", f"{where}: last reload failed: "
                                             f"{node['reload_error']}", "warning"))
    for pool in node.get("pools", []):
        label = f"{where}/{pool['name']}"
        if pool.get("state") == "failing":
            alerts.append(Alert("crash_loop", f"{label}: children keep failing: "
                                              f"{pool.get('last_error') or 'unknown error'}"))
        empty_since = pool.get("no_live_child_since")
        if empty_since is not None and now - empty_since >= NO_LIVE_CHILD_GRACE:
            alerts.append(Alert("no_live_child", f"{label}: no live child for "
                                                 f"{now - empty_since:.0f}s"))
        busy_since = pool.get("utilization_high_since")
        if busy_since is not None and now - busy_since >= thresholds.utilization_for:
            alerts.append(Alert("utilization", f"{label}: over "
                                               f"{thresholds.utilization:.0%} busy for "
                                               f"{now - busy_since:.0f}s", "warning"))
    return alerts

