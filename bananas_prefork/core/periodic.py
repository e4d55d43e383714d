"""Periodic jobs: a schedule that lives in Redis, fired once per tick by the leader.

Every master registers the entries it declares (its file's ``[[periodic]]``
and ``@app.periodic`` in its code) under its node id. The leader fires what is
registered, whoever registered it, so a leader started from a file without
entries does not drop the others'. An entry leaves the schedule when the last
master that declared it reloads without it.

Each entry's next tick is kept in Redis and advanced by a fenced
compare-and-set script, so leadership can change at any moment without a tick
running twice or being skipped. A tick that comes due while leadership changes
hands (within ``handover_window``) still runs, late; ticks missed in a longer
outage collapse into one run (``catch_up = true``) or none.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from croniter import croniter

from .broker import Broker, LockLost
from .identity import NodeId
from .job import dumps
from .leadership import LeaderLock

if TYPE_CHECKING:
    from .app import App
    from .config import PeriodicConfig

log = logging.getLogger(__name__)

FIRE_BATCH = 100


@dataclass(frozen=True)
class Entry:
    """A periodic entry as registered in Redis (everything resolved and encoded)."""

    name: str
    task: str
    cron: str | None
    every: float | None
    priority: str
    args_json: str
    kwargs_json: str
    catch_up: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Entry:
        return cls(**json.loads(text))

    def same_schedule(self, other: Entry) -> bool:
        return (self.cron, self.every) == (other.cron, other.every)

    def tick_after(self, moment_ms: int) -> int:
        """The first tick strictly after ``moment_ms`` (epoch milliseconds)."""
        if self.every is not None:
            step = max(1, round(self.every * 1000))
            return (moment_ms // step + 1) * step  # aligned: every 5m ticks on :00, :05...
        assert self.cron is not None
        start = datetime.fromtimestamp(moment_ms / 1000, UTC)
        return round(croniter(self.cron, start).get_next(float) * 1000)

    def job_id(self, tick_ms: int) -> str:
        return f"periodic:{self.name}:{tick_ms}"


def now_ms() -> int:
    return int(time.time() * 1000)


def entries_for(declared: Iterable[PeriodicConfig], app: App) -> list[Entry]:
    """Resolve declared entries (code first, then the file, which wins on a name)."""
    resolved: dict[str, Entry] = {}
    for config in [*app.periodic_entries, *declared]:
        task = app.tasks.get(config.task)
        resolved[config.entry_name] = Entry(
            name=config.entry_name, task=config.task, cron=config.cron, every=config.every,
            priority=config.priority or (task.priority if task else "normal"),
            args_json=dumps(list(config.args), "periodic args"),
            kwargs_json=dumps(config.kwargs, "periodic kwargs"), catch_up=config.catch_up)
    return list(resolved.values())


# -- registration (each master) ------------------------------------------------------


def register(broker: Broker, entries: Iterable[Entry], node: str) -> None:
    """Declare this node's entries (its earlier ones it no longer declares leave), and
    forget the entries only nodes that are gone declared. Atomic, so masters registering
    at the same time cannot undo each other."""
    keys = broker.keys
    declared = {entry.name: entry for entry in entries}
    registered = {name: Entry.from_json(text)
                  for name, text in broker.fields(keys.periodic).items()}
    moment = now_ms()
    argv: list[str | int] = [broker.prefix, node]
    for name, entry in declared.items():
        old = registered.get(name)
        mode = "new" if old is None else "keep" if old.same_schedule(entry) else "reset"
        argv += [name, entry.to_json(), mode, entry.tick_after(moment)]
    forgotten = broker.scripts.periodic_register(
        keys=[keys.periodic, keys.periodic_sources, keys.periodic_next], args=argv)
    LeaderLock(broker).wake_leader()
    if declared:
        log.info("periodic entries registered: %s", ", ".join(sorted(declared)))
    if forgotten:
        log.info("%d periodic entr%s no running master declares left the schedule",
                 forgotten, "y" if forgotten == 1 else "ies")


def _shown(node: str) -> str:
    """A node as people read it (``host:pid``)."""
    parsed = NodeId.parse(node)
    return parsed.display if parsed else node


def conflicts(broker: Broker) -> dict[str, list[str]]:
    """Entry name -> nodes, for names that nodes declare differently."""
    by_name: dict[str, dict[str, list[str]]] = {}
    for source, text in broker.fields(broker.keys.periodic_sources).items():
        name, _, node = source.rpartition("|")
        by_name.setdefault(name, {}).setdefault(text, []).append(_shown(node))
    return {name: sorted(n for nodes in versions.values() for n in nodes)
            for name, versions in by_name.items() if len(versions) > 1}


def listing(broker: Broker) -> list[dict[str, Any]]:
    """Every registered entry with its next tick and the nodes that declare it."""
    keys = broker.keys
    definitions = broker.fields(keys.periodic)
    next_ticks = dict(broker.scored(keys.periodic_next))
    declared_by: dict[str, list[str]] = {}
    for source in broker.fields(keys.periodic_sources):
        name, _, node = source.rpartition("|")
        declared_by.setdefault(name, []).append(_shown(node))
    clashing = conflicts(broker)
    out: list[dict[str, Any]] = []
    for name in sorted(definitions):
        entry = Entry.from_json(definitions[name])
        tick = next_ticks.get(name)
        out.append({"name": name, "task": entry.task, "cron": entry.cron, "every": entry.every,
                    "priority": entry.priority, "catch_up": entry.catch_up,
                    "next_tick": tick / 1000 if tick is not None else None,
                    "declared_by": sorted(declared_by.get(name, [])),
                    "conflict": name in clashing})
    return out


def remove(broker: Broker, name: str) -> bool:
    """Take an entry out of the schedule (a deployment that no longer runs declared it).

    A master that still declares it registers it again when it starts or reloads.
    """
    keys = broker.keys
    sources = [s for s in broker.fields(keys.periodic_sources) if s.rpartition("|")[0] == name]
    with broker.client.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.periodic, name)
        pipe.zrem(keys.periodic_next, name)
        if sources:
            pipe.hdel(keys.periodic_sources, *sources)
        removed = pipe.execute()[0]
    return bool(removed)


def entry_names(broker: Broker) -> list[str]:
    return sorted(broker.fields(broker.keys.periodic))


# -- firing (the leader) ----------------------------------------------------------------


class PeriodicRunner:
    """The leader's periodic duty: fire every due tick, exactly once."""

    def __init__(self, broker: Broker, handover_window: float) -> None:
        self.broker = broker
        self.handover_window_ms = int(handover_window * 1000)
        self.fired = 0

    def fire_due(self, token: str) -> float | None:
        """Fire what is due; seconds until the next tick (None if no entries).

        Raises LockLost when the caller is no longer the leader.
        """
        keys = self.broker.keys
        client = self.broker.client
        for _ in range(10):
            moment = now_ms()
            due = self.broker.scored(keys.periodic_next, moment, FIRE_BATCH)
            if not due:
                break
            definitions = cast(list[str | None],
                               client.hmget(keys.periodic, [name for name, _ in due]))
            for (name, tick), text in zip(due, definitions, strict=True):
                if text is None:  # unregistered meanwhile
                    client.zrem(keys.periodic_next, name)
                    continue
                self._fire(token, Entry.from_json(text), int(tick), moment)
        first = self.broker.lowest(keys.periodic_next)
        if first is None:
            return None
        return max(0.0, (first[1] - now_ms()) / 1000)

    def _fire(self, token: str, entry: Entry, tick: int, moment: int) -> None:
        if moment - tick <= self.handover_window_ms:
            fire, following = True, entry.tick_after(tick)
        else:  # a long outage: run the missed tick once (or not), then resume
            fire, following = entry.catch_up, entry.tick_after(moment)
            log.warning("periodic %s: ticks missed since %s; %s", entry.name,
                        datetime.fromtimestamp(tick / 1000, UTC).isoformat(),
                        "running once now" if fire else "skipping to the next one")
        keys = self.broker.keys
        result = self.broker.scripts.periodic_fire(
            keys=[keys.scheduler_lock, keys.periodic_next, keys.seq],
            args=[self.broker.prefix, token, entry.name, tick, following, "1" if fire else "0",
                  entry.job_id(tick), entry.task, entry.priority, entry.args_json,
                  entry.kwargs_json])
        if int(result) < 0:
            raise LockLost(token)
        if int(result) == 1 and fire:
            self.fired += 1
