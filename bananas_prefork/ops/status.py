"""The cluster as Redis knows it: what ``status`` (and metrics, and the dashboard) read.

Masters publish their nodes (``supervisor/publisher.py``); ``gather`` reads
only Redis, so status works from any machine. Alerts compare what is
published (queue depths, since when a condition holds, pools' figures) with
thresholds: the file's when ``status`` is given one, else the most sensitive
ones the live masters publish.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from ..core.broker import Broker
from ..core.config import AlertsConfig, Deployment
from ..core.identity import LeaderToken
from ..core.keys import PRIORITIES
from ..core.leadership import LeaderLock
from ..core.nodes import (
    CONDITION_STALE_AFTER,
    RETENTION_FIELDS,
    NodeStatus,
    NodeStore,
    PoolStatus,
    RetentionStatus,
    depth_condition,
    high_depth_condition,
)
from ..core.periodic import conflicts, entry_names

NO_LIVE_CHILD_GRACE = 10.0


class LeaderStatus(TypedDict):
    leader: str | None  # host:pid of the master whose scheduler leads
    lease_expires_in: float | None


class PeriodicStatus(TypedDict):
    entries: list[str]
    conflicts: dict[str, list[str]]


class RedisStatus(TypedDict):
    maxmemory_policy: str | None


class ClusterRetention(RetentionStatus):
    source: str  # "nodes": the smallest value the live masters publish; else "defaults"


class ClusterStatus(TypedDict):
    """What ``status --json`` prints (the contract's fields and more)."""

    time: float
    namespace: str
    nodes: list[NodeStatus]
    queues: dict[str, dict[str, int]]
    oldest: dict[str, dict[str, float]]
    scheduled: int
    dead: int
    in_flight: int
    scheduler: LeaderStatus
    periodic: PeriodicStatus
    served_by: dict[str, dict[str, list[str]]]
    redis: RedisStatus
    retention: ClusterRetention
    alert_thresholds: dict[str, Any]
    alerts: list[dict[str, str]]


def gather(broker: Broker, alerts: AlertsConfig | None = None) -> ClusterStatus:
    """The whole cluster, from Redis alone."""
    sec, usec = cast(tuple[int, int], broker.client.time())
    now = sec + usec / 1e6
    store = NodeStore(broker.client, broker.keys)
    nodes = store.read(now)
    token, remaining = LeaderLock(broker).holder()
    leader = LeaderToken.parse(token) if token else None
    counts = broker.counts()
    depths, ages = broker.queue_report()
    result: ClusterStatus = {
        "time": now,
        "namespace": broker.keys.namespace,
        "nodes": nodes,
        "queues": depths,
        "oldest": ages,
        "scheduled": counts["scheduled"],
        "dead": counts["dead"],
        "in_flight": counts["in_flight"],
        "scheduler": {
            "leader": leader.node.display if leader else None,
            "lease_expires_in": round(remaining, 3) if remaining is not None else None,
        },
        "periodic": {"entries": entry_names(broker),
                     "conflicts": conflicts(broker)},
        "served_by": served_by(depths, nodes),
        "redis": {"maxmemory_policy": broker.eviction_policy()},
        "retention": cluster_retention(nodes),
        "alert_thresholds": {},
        "alerts": [],
    }
    thresholds, source = (alerts, "file") if alerts else cluster_thresholds(nodes)
    result["alert_thresholds"] = {"source": source, **dataclasses.asdict(thresholds)}
    since = {condition: started for condition, (started, last_seen) in store.conditions().items()
             if now - last_seen <= CONDITION_STALE_AFTER}
    result["alerts"] = [a.as_dict() for a in evaluate(result, since, thresholds)]
    return result


def cluster_thresholds(nodes: list[NodeStatus]) -> tuple[AlertsConfig, str]:
    """The alert thresholds the live masters run with; where they differ, the most sensitive."""
    names = [f.name for f in dataclasses.fields(AlertsConfig)]
    published = [node["alerts"] for node in nodes
                 if node.get("state") != "lost" and isinstance(node.get("alerts"), dict)]
    if not published:
        return AlertsConfig(), "defaults"
    lowest = {name: min(p.get(name, getattr(AlertsConfig, name)) for p in published)
              for name in names}
    return AlertsConfig(**lowest), "nodes"


def cluster_retention(nodes: list[NodeStatus]) -> ClusterRetention:
    """What the cluster keeps of finished jobs: where masters differ, the smallest value
    (any child enforces its own ``dead_max`` on the one dead set)."""
    defaults = {f.name: cast(float, f.default) for f in dataclasses.fields(Deployment)
                if f.name in RETENTION_FIELDS}
    published = [cast(dict[str, float], node["retention"]) for node in nodes
                 if node.get("state") != "lost" and isinstance(node.get("retention"), dict)]
    values = {name: min((p.get(name, defaults[name]) for p in published),
                        default=defaults[name]) for name in RETENTION_FIELDS}
    return cast(ClusterRetention, {**values, "source": "nodes" if published else "defaults"})


def _serves(pool: PoolStatus, priority: str, job_type: str) -> bool:
    types = pool.get("job_types", ["*"])
    return priority in pool.get("priorities", []) and ("*" in types or job_type in types)


def served_by(queues: dict[str, dict[str, int]],
              nodes: list[NodeStatus]) -> dict[str, dict[str, list[str]]]:
    """Priority -> job type -> the live pools (``host:pid/pool``) that take it."""
    out: dict[str, dict[str, list[str]]] = {}
    live = [n for n in nodes if n.get("state") != "lost"]
    for priority, types in queues.items():
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


def evaluate(status: ClusterStatus, since: dict[str, float],
             thresholds: AlertsConfig) -> list[Alert]:
    """Every alert that is firing now."""
    now = float(status["time"])
    alerts: list[Alert] = []

    def held(condition: str, for_seconds: float) -> bool:
        return condition in since and now - since[condition] >= for_seconds

    high = sum(status["queues"].get("high", {}).values())
    if high > thresholds.high_depth and held(high_depth_condition(thresholds.high_depth),
                                             thresholds.high_depth_for):
        alerts.append(Alert("high_depth", f"{high} high-priority jobs waiting for over "
                                          f"{thresholds.high_depth_for:g}s"))
    for priority in PRIORITIES:
        for job_type, depth in status["queues"].get(priority, {}).items():
            condition = depth_condition(thresholds.depth, priority, job_type)
            if depth > thresholds.depth and held(condition, thresholds.depth_for):
                alerts.append(Alert("queue_depth", f"{priority}/{job_type}: {depth} jobs "
                                                   f"waiting for over {thresholds.depth_for:g}s"))
            if depth and not status["served_by"].get(priority, {}).get(job_type):
                alerts.append(Alert("unserved_queue", f"{priority}/{job_type}: {depth} jobs and "
                                                      "no live pool serves them", "warning"))
    for node in status["nodes"]:
        alerts += _node_alerts(node, now, thresholds)
    policy = status["redis"]["maxmemory_policy"]
    if policy not in (None, "noeviction"):
        alerts.append(Alert("eviction_policy", f"Redis evicts keys under memory pressure "
                                               f"(maxmemory-policy {policy}): jobs, owner keys "
                                               "and locks can vanish; set it to noeviction"))
    if status["scheduler"]["leader"] is None and (status["nodes"] or status["scheduled"]):
        alerts.append(Alert("no_scheduler_leader", "no scheduler leads: delayed jobs, retries "
                                                   "and periodic jobs are not being scheduled"))
    for name, nodes in status["periodic"]["conflicts"].items():
        alerts.append(Alert("periodic_conflict", f"periodic entry {name!r} is declared "
                                                 f"differently by {', '.join(nodes)}", "warning"))
    return alerts


def _node_alerts(node: NodeStatus, now: float, thresholds: AlertsConfig) -> list[Alert]:
    where = f"{node.get('host')}:{node.get('pid')}"
    if node.get("state") == "lost":
        return [Alert("node_lost", f"master {where} stopped reporting "
                                   f"{now - float(node.get('updated_at', now)):.0f}s ago")]
    alerts = [Alert("redis_refusal", f"{where}/{refusal['child']}: Redis refuses "
                                     f"{refusal['where']}: {refusal['error']}")
              for refusal in node.get("redis_refusals", [])]
    if node.get("embedded_fallback"):
        alerts.append(Alert("embedded_fallback", f"{where}: no redis_url configured, so it runs "
                                                 "a private embedded Redis: producers using "
                                                 "another Redis are not served", "warning"))
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

