"""``status`` for people: rich tables of nodes, pools, children, queues and alerts."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..core.durations import format_age
from ..core.nodes import NodeStatus, PoolStatus
from ..core.text import one_line
from .status import ClusterStatus

AUTO_PROCESS_LIMIT = 30  # show every child when there are no more than this


def _plain(value: object) -> Text:
    """A cell as literal text: no markup, no control characters (names and errors may
    come from jobs or from the application's own exceptions)."""
    return Text(one_line(str(value)))


def _serves(pool: PoolStatus) -> str:
    types = pool.get("job_types", ["*"])
    priorities = ",".join(pool.get("priorities", []))
    return priorities if types == ["*"] else f"{priorities} / {','.join(types)}"


def _node_label(node: NodeStatus) -> Text:
    label = Text(f"{node['host']}:{node['pid']}")
    state = node.get("state", "running")
    if state != "running":
        label.append(f" ({state})", style="bold red" if state == "lost" else "yellow")
    return label


def header(status: ClusterStatus) -> Text:
    scheduler = status["scheduler"]
    text = Text()
    text.append(f"namespace {status['namespace']}  ", style="bold")
    if scheduler["leader"]:
        text.append(f"scheduler leader {scheduler['leader']} "
                    f"(lease {scheduler['lease_expires_in']:.1f}s)  ")
    else:
        text.append("no scheduler leader  ", style="bold red")
    text.append(f"scheduled {status['scheduled']}  in flight {status['in_flight']}  ")
    text.append(f"dead {status['dead']}", style="red" if status["dead"] else "")
    text.append(f" (at most {status['retention']['dead_max']:,})")
    return text


def pools_table(status: ClusterStatus) -> Table:
    table = Table(title="Pools", title_justify="left")
    for column in ("node", "pool", "mode", "serves", "procs", "busy", "done/min",
                   "failed/min", "restarts", "state"):
        table.add_column(column, justify="right" if column in (
            "procs", "busy", "done/min", "failed/min", "restarts") else "left")
    for node in status["nodes"]:
        for pool in node.get("pools", []):
            live = sum(1 for p in pool["processes"] if p["state"] in ("idle", "busy"))
            busy = f"{pool['busy']}/{pool['slots']} {pool['utilization']:.0%}"
            serves = _serves(pool)
            if pool["mode"] == "scheduler-only":
                serves, busy = "(the scheduler)", ""
            state = Text(pool["state"], style={"failing": "bold red", "stopping": "yellow",
                                               "starting": "yellow"}.get(pool["state"], "green"))
            if pool.get("last_error") and pool["state"] == "failing":
                state.append(f" {one_line(pool['last_error'] or '')}", style="red")
            table.add_row(_node_label(node), *map(_plain, (
                pool["name"], pool["mode"], serves, f"{live}/{pool['processes_wanted']}", busy,
                f"{pool['processed_per_min']:.0f}", f"{pool['failed_per_min']:.0f}",
                pool["restarts"])), state)
        if not node.get("pools"):
            table.add_row(_node_label(node), "-", "scheduler-only", "", "", "", "", "", "",
                          "lost" if node.get("state") == "lost" else "running")
    return table


def processes_table(status: ClusterStatus) -> Table:
    table = Table(title="Children", title_justify="left")
    for column in ("node", "child", "pid", "state", "current job", "age", "done", "failed",
                   "rss MB", "cpu %"):
        table.add_column(column, justify="right" if column in (
            "pid", "age", "done", "failed", "rss MB", "cpu %") else "left")
    for node in status["nodes"]:
        for pool in node.get("pools", []):
            for child in pool["processes"]:
                table.add_row(*map(_plain, (
                    f"{node['host']}:{node['pid']}", f"{pool['name']}[{child['index']}]",
                    child["pid"], child["state"], child["current_job"] or "-",
                    format_age(child["current_job_age"]), child["jobs_done"], child["jobs_failed"],
                    f"{child['rss_mb']:.0f}" if child["rss_mb"] is not None else "-",
                    f"{child['cpu_percent']:.0f}" if child["cpu_percent"] is not None else "-")))
    return table


def queues_table(status: ClusterStatus) -> Table:
    table = Table(title="Queues", title_justify="left")
    for column in ("priority", "job type", "depth", "oldest", "served by"):
        table.add_column(column, justify="right" if column in ("depth", "oldest") else "left")
    for priority, types in status["queues"].items():
        for job_type, depth in sorted(types.items()):
            pools = status["served_by"].get(priority, {}).get(job_type, [])
            served = _plain(", ".join(sorted({p.split("/", 1)[1] for p in pools})))
            if not pools:
                served = Text("UNSERVED: no live pool takes these", style="bold red")
            age = status["oldest"].get(priority, {}).get(job_type)
            table.add_row(*map(_plain, (priority, job_type, depth, format_age(age))), served)
    return table


def alerts_block(status: ClusterStatus) -> RenderableType:
    if not status["alerts"]:
        return Text("no alerts", style="green")
    text = Text()
    for alert in status["alerts"]:
        style = "bold red" if alert["severity"] == "critical" else "yellow"
        text.append(f"{alert['severity'].upper()} {alert['name']}: "
                    f"{one_line(alert['message'])}\n", style=style)
    return text


def render(status: ClusterStatus, show_processes: bool | None = None) -> RenderableType:
    children = sum(len(p["processes"]) for n in status["nodes"] for p in n.get("pools", []))
    if show_processes is None:
        show_processes = children <= AUTO_PROCESS_LIMIT
    parts: list[RenderableType] = [header(status), pools_table(status)]
    if show_processes:
        parts.append(processes_table(status))
    parts += [queues_table(status), alerts_block(status)]
    return Group(*parts)


def watch(console: Console, gather: Callable[[], ClusterStatus], interval: float,
          show_processes: bool | None, until: float | None = None) -> None:
    """Refresh in place until Ctrl-C (or the monotonic time ``until``)."""
    with Live(render(gather(), show_processes), console=console, auto_refresh=False,
              screen=False) as live:
        while until is None or time.monotonic() < until:
            time.sleep(interval)
            live.update(render(gather(), show_processes), refresh=True)
