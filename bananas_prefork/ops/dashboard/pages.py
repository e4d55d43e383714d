"""What each dashboard page shows, read from Redis with bounded work per request.

The cluster view is ``status.gather`` (the same figures as ``status --json``),
cached for a second so that many open browsers cost Redis what one does.
Listings are paged: a page of dead letters is one range read and one
pipelined read of 50 records; a search by task reads job names in chunks and
stops after ``SEARCH_BUDGET`` ids, offering to go on from there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from ...core import periodic
from ...core.broker import Broker
from ...core.config import AlertsConfig
from ...core.history import RESOLUTIONS, HistoryStore, Series
from ...core.job import JobInfo
from ...core.keys import PRIORITIES
from ..status import ClusterStatus, gather

STATUS_CACHE = 1.0  # seconds a gathered cluster status is shared between requests
QUEUES_PER_PAGE = 100
DEAD_PER_PAGE = 50
SEARCH_CHUNK = 1000
SEARCH_BUDGET = 10_000  # dead ids one search request may look at
NEXT_DUE = 20
ALERTS_SHOWN = 20  # the overview lists this many alerts and counts the rest
TEXT_LIMIT = 64 * 1024  # longer job texts are cut on the page


@dataclass(frozen=True)
class QueueRow:
    priority: str
    job_type: str
    depth: int
    oldest: float | None
    served_by: list[str]

    @property
    def unserved(self) -> bool:
        return not self.served_by


@dataclass(frozen=True)
class Page:
    """Which slice of a listing is shown."""

    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def first(self) -> int:
        return (self.number - 1) * self.size


def page_number(raw: str | None) -> int:
    try:
        return max(1, int(raw or 1))
    except ValueError:
        return 1


def clip(text: str | None, limit: int = TEXT_LIMIT) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters not shown)"


class Reader:
    """The dashboard's only way to Redis."""

    def __init__(self, broker: Broker, alerts: AlertsConfig | None = None) -> None:
        self.broker = broker
        self.alerts = alerts
        self.history_store = HistoryStore(broker.client, broker.keys)
        self._lock = threading.Lock()
        self._status: tuple[float, ClusterStatus] | None = None

    def status(self) -> ClusterStatus:
        with self._lock:
            now = time.monotonic()
            if self._status is None or now - self._status[0] > STATUS_CACHE:
                self._status = (now, gather(self.broker, self.alerts))
            return self._status[1]

    def forget_status(self) -> None:
        """After an action: the next page shows its effect."""
        with self._lock:
            self._status = None

    # -- pages -----------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        status = self.status()
        pools = [p for n in status["nodes"] if n.get("state") != "lost" for p in n["pools"]]
        busy = sum(p["busy"] for p in pools)
        slots = sum(p["slots"] for p in pools if p["mode"] != "scheduler-only")
        return {
            "status": status,
            "alerts_shown": ALERTS_SHOWN,
            "children": sum(len(p["processes"]) for n in status["nodes"] for p in n["pools"]),
            "totals": {
                "busy": busy, "slots": slots,
                "utilization": busy / slots if slots else 0.0,
                "done_per_min": sum(p["processed_per_min"] for p in pools),
                "failed_per_min": sum(p["failed_per_min"] for p in pools),
                "waiting": sum(sum(t.values()) for t in status["queues"].values()),
            },
        }

    def queues(self, search: str, sort: str, page: int) -> dict[str, Any]:
        status = self.status()
        rows = [QueueRow(priority, job_type, depth,
                         status["oldest"].get(priority, {}).get(job_type),
                         status["served_by"].get(priority, {}).get(job_type, []))
                for priority in status["queues"] for job_type, depth in
                status["queues"][priority].items()]
        needle = search.strip().lower()
        if needle:
            rows = [r for r in rows if needle in r.job_type.lower() or needle == r.priority]
        order = {p: i for i, p in enumerate(PRIORITIES)}
        if sort == "name":
            rows.sort(key=lambda r: (r.job_type, order.get(r.priority, 9)))
        else:  # the ones that need attention first
            rows.sort(key=lambda r: (not (r.unserved and r.depth), -r.depth,
                                     order.get(r.priority, 9), r.job_type))
        shown = Page(page, QUEUES_PER_PAGE, len(rows))
        return {"status": status, "rows": rows[shown.first:shown.first + shown.size],
                "page": shown, "search": search, "sort": sort,
                "unserved": sum(1 for r in rows if r.unserved and r.depth),
                "waiting": sum(r.depth for r in rows)}

    def scheduler(self) -> dict[str, Any]:
        status = self.status()
        due = self.broker.scored(self.broker.keys.scheduled, limit=NEXT_DUE)
        fields = self.broker.job_fields([job_id for job_id, _ in due],
                                        ["name", "priority", "attempts"])
        next_due = [{"id": job_id, "due_at": at, "name": f[0], "priority": f[1],
                     "retry": int(f[2] or 0) > 0}
                    for (job_id, at), f in zip(due, fields, strict=True)]
        schedulers = [{"node": f"{n['host']}:{n['pid']}", "state": n.get("state"),
                       **n.get("scheduler", {})} for n in status["nodes"]]
        return {"status": status, "next_due": next_due, "schedulers": schedulers,
                "periodic": periodic.listing(self.broker)}

    def dead(self, task: str, page: int, start: int) -> dict[str, Any]:
        total = self.broker.dead_count()
        task = task.strip()
        if not task:
            shown = Page(page, DEAD_PER_PAGE, total)
            jobs = self.broker.dead_jobs(DEAD_PER_PAGE, shown.first)
            return {"jobs": [self._listed(j) for j in jobs], "total": total, "page": shown,
                    "task": "", "search": None}
        ids, scanned_to = self._search(task, start, total)
        return {"jobs": [self._listed(j) for j in self.broker.dead_jobs(ids=ids)],
                "total": total, "page": None, "task": task,
                "search": {"start": start, "to": scanned_to,
                           "more": scanned_to < total}}

    def _search(self, task: str, start: int, total: int) -> tuple[list[str], int]:
        """Up to a page of dead ids whose task name contains ``task``, looking at no more
        than SEARCH_BUDGET ids from ``start``; and where the search stopped."""
        needle = task.lower()
        found: list[str] = []
        position = max(0, start)
        end = min(total, position + SEARCH_BUDGET)
        while position < end and len(found) < DEAD_PER_PAGE:
            ids = self.broker.dead_ids(min(SEARCH_CHUNK, end - position), position)
            if not ids:
                break
            names = self.broker.job_fields(ids, ["name"])
            for index, (job_id, (name,)) in enumerate(zip(ids, names, strict=True)):
                if name is not None and needle in name.lower():
                    found.append(job_id)
                    if len(found) == DEAD_PER_PAGE:
                        return found, position + index + 1
            position += len(ids)
        return found, position

    @staticmethod
    def _listed(info: JobInfo) -> dict[str, Any]:
        error = info.error or ""
        return {"id": info.id, "name": info.name, "priority": info.priority,
                "attempts": info.attempts, "died_at": info.finished_at,
                "error": error.splitlines()[0][:300] if error else ""}

    def job(self, job_id: str) -> JobInfo | None:
        return self.broker.job_info(job_id) if job_id else None

    def history(self, resolution: str) -> Series:
        return self.history_store.read(RESOLUTIONS.get(resolution, RESOLUTIONS["second"]))

    # -- actions -----------------------------------------------------------------------

    def retry(self, ids: list[str] | None) -> int:
        """Dead jobs back to their queues; None: every dead job."""
        count = self.broker.requeue_dead(self.broker.dead_ids() if ids is None else ids)
        self.forget_status()
        return count

    def delete(self, ids: list[str] | None) -> int:
        """Dead jobs and their records gone; None: every dead job."""
        count = self.broker.remove_dead(self.broker.dead_ids() if ids is None else ids)
        self.forget_status()
        return count
