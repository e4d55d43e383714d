"""The cluster's view of itself: each master's published record, the index of
nodes, and since when a queue alert condition holds.

Key family (``keys.py``): ``node:<host>:<pid>`` (a master's record, JSON,
with a TTL), ``nodes`` (zset node -> last publish), ``alerts:since`` (hash
condition -> ``since|last seen``). This module is the only code that reads or
writes them; the records are typed here and built once each, by the
supervisor (``NodeStatus`` by the master, ``PoolStatus`` by a pool,
``ProcessStatus`` by a child's record).

A queue condition is named with its threshold (``depth>1000:normal:send_email``),
so masters started with different ``[alerts]`` tables time their own
conditions without clearing each other's.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypedDict, cast

import redis

from .identity import NodeId
from .keys import Keys

NODE_TTL_MAX = 86400  # index entries older than any node key can live are pruned
LOST_AFTER = 5.0  # a node whose figures are older than this is shown as lost
CONDITION_STALE_AFTER = 15.0  # a condition nobody confirmed for this long counts for nothing


class ProcessStatus(TypedDict):
    pid: int
    index: int
    state: str  # starting | idle | busy | stopping
    jobs_done: int
    jobs_failed: int
    rss_mb: float | None
    cpu_percent: float | None
    current_job: str | None  # its job type
    current_job_id: str | None
    current_job_age: float | None
    busy_slots: int
    stop_reason: str | None


class PoolStatus(TypedDict):
    name: str
    mode: str
    priorities: list[str]
    job_types: list[str]
    concurrency: int  # as declared: the most jobs the pool runs at once
    slots: int  # as running now (TTIN/TTOU change it)
    threads: int
    processes_wanted: int
    generation: int
    state: str  # starting | running | failing | stopping
    busy: int
    utilization: float
    jobs_done: int
    jobs_failed: int
    processed_per_min: float
    failed_per_min: float
    restarts: int
    last_error: str | None
    utilization_high_since: float | None
    no_live_child_since: float | None
    job_type_stats: dict[str, Any]
    processes: list[ProcessStatus]


class SchedulerStatus(TypedDict):
    enabled: bool
    pid: int | None
    leading: bool


class RefusalStatus(TypedDict):
    """A loop that Redis refuses for a reason only an operator can fix (NOPERM, ...)."""

    child: str  # pool[n], scheduler, or master
    where: str
    error: str


class RetentionStatus(TypedDict):
    """How long finished jobs stay (seconds) and the most dead jobs kept."""

    result_ttl: float
    done_ttl: float
    dead_ttl: float
    dead_max: int


RETENTION_FIELDS = tuple(RetentionStatus.__annotations__)


class NodeStatus(TypedDict):
    host: str
    pid: int
    started_at: float
    updated_at: float
    config: str
    state: str  # starting | running | stopping, and "lost" as status shows a silent one
    reload_error: str | None
    embedded_fallback: bool  # runs a private embedded Redis because none was configured
    scheduler: SchedulerStatus
    pools: list[PoolStatus]
    alerts: dict[str, float]  # the thresholds this master judges with
    retention: RetentionStatus  # what this master's children keep of finished jobs
    redis_refusals: list[RefusalStatus]


def high_depth_condition(high_depth: int) -> str:
    return f"high_depth>{high_depth}"


def depth_condition(depth: int, priority: str, job_type: str) -> str:
    return f"{depth_conditions(depth)}{priority}:{job_type}"


def depth_conditions(depth: int) -> str:
    """The prefix shared by every queue-depth condition of one threshold."""
    return f"depth>{depth}:"


def observed(value: str) -> tuple[float, float]:
    """(since, last seen) of a condition entry."""
    since, _, last_seen = value.partition("|")
    return float(since), float(last_seen or since)


class NodeStore:
    """Node records and alert conditions of one namespace."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def publish(self, node: NodeId, status: NodeStatus, ttl: int) -> None:
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.node(str(node)), json.dumps(status), ex=ttl)
            pipe.zadd(self.keys.nodes, {str(node): now})
            pipe.zremrangebyscore(self.keys.nodes, "-inf", now - NODE_TTL_MAX)
            pipe.execute()

    def withdraw(self, node: NodeId) -> None:
        """A clean stop: drop the node at once rather than show it lost."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.node(str(node)))
            pipe.zrem(self.keys.nodes, str(node))
            pipe.execute()

    def read(self, now: float) -> list[NodeStatus]:
        """Every node still published, sorted, those silent past LOST_AFTER marked lost."""
        names = cast(list[str], self.client.zrange(self.keys.nodes, 0, -1))
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(self.keys.node(name))
            raw = pipe.execute()
        nodes = [cast(NodeStatus, json.loads(text)) for text in raw if text]
        for node in nodes:
            if now - float(node.get("updated_at", 0)) > LOST_AFTER:
                node["state"] = "lost"
        nodes.sort(key=lambda n: (n.get("host", ""), n.get("pid", 0)))
        return nodes

    def conditions(self) -> dict[str, tuple[float, float]]:
        """Condition -> (since, last seen)."""
        raw = cast(dict[str, str], self.client.hgetall(self.keys.alerts_since))
        return {name: observed(value) for name, value in raw.items()}

    def record_conditions(self, holding: dict[str, float], cleared: list[str],
                          now: float) -> None:
        """Mark ``holding`` (condition -> since) as seen now; forget ``cleared``."""
        with self.client.pipeline(transaction=False) as pipe:
            for condition, since in holding.items():
                pipe.hset(self.keys.alerts_since, condition, f"{since}|{now}")
            if cleared:
                pipe.hdel(self.keys.alerts_since, *cleared)
            pipe.execute()
