"""Prometheus metrics, served by the master on ``metrics_port``.

Per-pool figures come from the master's own last status snapshot (children
send their counts over their report pipes once a second, never a Redis round
trip per job); cluster figures (queue depths, oldest job, in flight, lag)
are read from Redis at scrape time, at most once a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from socketserver import TCPServer
from typing import Any, cast

import redis
from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..core.broker import Broker
from ..core.leadership import LeaderLock
from ..core.nodes import NodeStatus
from ..supervisor.master import Master
from ..supervisor.stats import BUCKETS, OUTCOMES
from .http_service import HttpService

CLUSTER_CACHE = 1.0


class BananasCollector(Collector):
    def __init__(self, snapshot: Callable[[], NodeStatus | None], broker: Broker) -> None:
        self.snapshot = snapshot
        self.broker = broker
        self._cluster: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        node = self.snapshot()
        if node is not None:
            yield from self._pool_metrics(node)
        yield from self._cluster_metrics()

    # -- this master's pools ---------------------------------------------------------

    def _pool_metrics(self, node: NodeStatus) -> Iterator[Metric]:
        jobs = CounterMetricFamily("bananas_jobs", "Job runs finished, by outcome "
                                   "(succeeded, retry, dead).", labels=["pool", "job_type",
                                                                       "outcome"])
        duration = HistogramMetricFamily("bananas_job_duration_seconds", "Job run durations.",
                                         labels=["pool", "job_type"])
        utilization = GaugeMetricFamily("bananas_pool_utilization", "Busy share of the "
                                        "pool's slots.", labels=["pool"])
        busy = GaugeMetricFamily("bananas_pool_busy_slots", "Slots running a job.",
                                 labels=["pool"])
        slots = GaugeMetricFamily("bananas_pool_slots", "Slots wanted (processes x threads).",
                                  labels=["pool"])
        children = GaugeMetricFamily("bananas_pool_children", "Children by state.",
                                     labels=["pool", "state"])
        restarts = CounterMetricFamily("bananas_child_restarts", "Children that died without "
                                       "being asked to.", labels=["pool"])
        rss = GaugeMetricFamily("bananas_pool_rss_bytes", "Resident memory of the pool's "
                                "children.", labels=["pool"])
        for pool in node.get("pools", []):
            name = pool["name"]
            for job_type, stats in pool.get("job_type_stats", {}).items():
                for outcome in OUTCOMES:
                    jobs.add_metric([name, job_type, outcome], stats["outcomes"].get(outcome, 0))
                cumulative, buckets = 0, []
                for bound, count in zip([*BUCKETS, float("inf")], stats["buckets"], strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound),
                                    cumulative))
                duration.add_metric([name, job_type], buckets, stats["seconds"])
            utilization.add_metric([name], pool["utilization"])
            busy.add_metric([name], pool["busy"])
            slots.add_metric([name], pool["slots"])
            for state in ("starting", "idle", "busy", "stopping"):
                children.add_metric([name, state], sum(
                    1 for p in pool["processes"] if p["state"] == state))
            restarts.add_metric([name], pool["restarts"])
            rss.add_metric([name], sum((p["rss_mb"] or 0) for p in pool["processes"]) * 1048576)
        leader = GaugeMetricFamily("bananas_scheduler_leader", "1 when this master's "
                                   "scheduler is the leader.")
        leader.add_metric([], 1.0 if node.get("scheduler", {}).get("leading") else 0.0)
        yield from (jobs, duration, utilization, busy, slots, children, restarts, rss, leader)

    # -- the cluster, from Redis ---------------------------------------------------------

    def _read_cluster(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cluster is None or now - self._cluster[0] > CLUSTER_CACHE:
                first_due = self.broker.next_due()
                depths, ages = self.broker.queue_report()
                self._cluster = (now, {
                    "depths": depths,
                    "ages": ages,
                    "counts": self.broker.counts(),
                    "first_due": first_due,
                    "leader": LeaderLock(self.broker).holder()[0],
                })
            return self._cluster[1]

    def _cluster_metrics(self) -> Iterator[Metric]:
        try:
            cluster = self._read_cluster()
        except redis.RedisError:  # a scrape must not fail because Redis did
            up = GaugeMetricFamily("bananas_redis_up", "1 when Redis answered this scrape.")
            up.add_metric([], 0.0)
            yield up
            return
        up = GaugeMetricFamily("bananas_redis_up", "1 when Redis answered this scrape.")
        up.add_metric([], 1.0)
        depth = GaugeMetricFamily("bananas_queue_depth", "Jobs waiting.",
                                  labels=["priority", "job_type"])
        oldest = GaugeMetricFamily("bananas_queue_oldest_age_seconds", "Age of the oldest "
                                   "waiting job.", labels=["priority", "job_type"])
        for priority, types in cluster["depths"].items():
            for job_type, count in types.items():
                depth.add_metric([priority, job_type], count)
                oldest.add_metric([priority, job_type],
                                  cluster["ages"].get(priority, {}).get(job_type, 0.0))
        counts = cluster["counts"]
        gauges = []
        for name, help_text in (("in_flight", "Jobs running now, cluster-wide."),
                                ("scheduled", "Jobs waiting for their time."),
                                ("dead", "Jobs in the dead-letter set.")):
            gauge = GaugeMetricFamily(f"bananas_jobs_{name}", help_text)
            gauge.add_metric([], counts[name])
            gauges.append(gauge)
        lag = GaugeMetricFamily("bananas_scheduler_lag_seconds", "How overdue the earliest "
                                "scheduled job is (0 when none is due): a growing lag means "
                                "no scheduler is promoting.")
        first_due = cluster["first_due"]
        lag.add_metric([], max(0.0, time.time() - first_due) if first_due else 0.0)
        has_leader = GaugeMetricFamily("bananas_scheduler_has_leader", "1 when some "
                                       "scheduler leads the cluster.")
        has_leader.add_metric([], 1.0 if cluster["leader"] else 0.0)
        yield from (up, depth, oldest, *gauges, lag, has_leader)


class MetricsService(HttpService):
    """The /metrics server, run by a master beside its children (``metrics_port``)."""

    what = "metrics"
    path = "/metrics"

    def serve(self, master: Master) -> TCPServer:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ProcessCollector(registry=None))
        registry.register(BananasCollector(lambda: master.last_snapshot, master.new_broker()))
        server, _ = start_http_server(self.port, addr=self.address, registry=registry)
        return cast(TCPServer, server)
