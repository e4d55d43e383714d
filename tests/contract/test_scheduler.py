"""The scheduler against Redis: fencing, precise promotion, periodic ticks."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from bananas_prefork import App
from bananas_prefork.core.broker import LockLost
from bananas_prefork.core.config import PeriodicConfig
from bananas_prefork.core.identity import NodeId
from bananas_prefork.core.leadership import LeaderLock
from bananas_prefork.core.nodes import NodeStore
from bananas_prefork.core.periodic import (
    PeriodicRunner,
    conflicts,
    entries_for,
    entry_names,
    register,
)
from bananas_prefork.core.scheduler import Scheduler
from tests.helpers import entry, live_node, wait_until


def _runner(app: App, window: float = 30.0) -> PeriodicRunner:
    assert LeaderLock(app.broker).acquire("leader", lease=30)
    return PeriodicRunner(app.broker, handover_window=window)


def test_a_thousand_delayed_jobs_run_once_each(app: App, consumers: list) -> None:
    from bananas_prefork.core.consumer import Consumer

    seen: list[str] = []
    lock = threading.Lock()

    @app.task(name="tick")
    def tick() -> None:
        from bananas_prefork import current_job

        with lock:
            seen.append(current_job().id)

    ids = app.enqueue_many([("tick", [], {}, {"delay": (n % 100) * 0.01}) for n in range(1000)])
    scheduler = Scheduler(app.broker, interval=5.0, batch=100)
    threading.Thread(target=scheduler.run, daemon=True).start()
    consumer = Consumer(app, threads=4)
    consumer.start()
    consumers.append(consumer)
    try:
        wait_until(lambda: len(seen) >= 1000, timeout=20)
    finally:
        scheduler.stop()
    assert Counter(seen) == Counter(ids)


def test_stale_leader_cannot_promote(app: App) -> None:
    app.enqueue("record", delay=0.01)
    assert LeaderLock(app.broker).acquire("old", lease=1.0)
    app.broker.client.delete(app.broker.keys.scheduler_lock)  # its lease ran out
    assert LeaderLock(app.broker).acquire("new", lease=10.0)
    time.sleep(0.05)
    with pytest.raises(LockLost):
        app.broker.promote_due("old")
    assert not LeaderLock(app.broker).renew("old", 10.0)
    assert app.broker.promote_due("new")[0] == 1


def test_ticks_are_aligned_and_cron_is_utc() -> None:
    assert entry(every=300.0).tick_after(1_000_000_123) == 1_000_200_000
    at = int(datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC).timestamp() * 1000)
    cron = entry(cron="*/5 * * * *", every=None).tick_after(at)
    assert datetime.fromtimestamp(cron / 1000, UTC) == datetime(2026, 1, 1, 10, 10, tzinfo=UTC)


def test_periodic_decorator_and_file_entries_resolve_priorities(app: App) -> None:
    @app.periodic(every="1h", args=[1])
    @app.task(name="report", priority="low")
    def report(n: int) -> None: ...

    @app.periodic(cron="0 * * * *", name="hourly-sweep")
    def sweep() -> None: ...

    file_entry = PeriodicConfig(task="unknown_here", name="x", every=60.0)
    resolved = {e.name: e for e in entries_for([file_entry], app)}
    assert resolved["report"].priority == "low" and resolved["report"].args_json == "[1]"
    assert resolved["hourly-sweep"].task == "sweep" and resolved["x"].priority == "normal"
    with pytest.raises(ValueError, match="cron"):
        app.periodic(cron="nope")
    with pytest.raises(ValueError, match="one of them"):
        app.periodic()


def test_registration_keeps_other_masters_entries(app: App) -> None:
    vm1, vm2 = live_node(app.broker, "vm1", 1), live_node(app.broker, "vm2", 2)
    register(app.broker, [entry("a"), entry("b", every=60.0)], node=vm1)
    register(app.broker, [], node=vm2)  # a master without entries drops nothing
    assert set(app.broker.fields(app.broker.keys.periodic)) == {"a", "b"}
    register(app.broker, [entry("b", every=60.0)], node=vm2)
    register(app.broker, [entry("b", every=60.0)], node=vm1)  # vm1 no longer declares a
    assert set(app.broker.fields(app.broker.keys.periodic)) == {"b"}
    register(app.broker, [entry("b", every=30.0)], node=vm2)
    assert conflicts(app.broker) == {"b": ["vm1:1", "vm2:2"]}


def test_ticks_missed_during_a_handover_all_run_once(app: App) -> None:
    register(app.broker, [entry("e", every=1.0)], node="n")
    now = int(time.time() * 1000)
    app.broker.client.zadd(app.broker.keys.periodic_next, {"e": (now // 1000 - 5) * 1000})
    runner = _runner(app)
    runner.fire_due("leader")
    runner.fire_due("leader")
    assert runner.fired == 6  # the five missed ticks and the current one, once each
    assert app.queue_depths()["normal"]["record"] == 6


def test_a_long_outage_runs_the_missed_tick_once_or_not_at_all(app: App) -> None:
    register(app.broker, [entry("once", every=1.0), entry("skip", every=1.0, catch_up=False)],
             node="n")
    long_ago = (int(time.time()) - 3600) * 1000
    app.broker.client.zadd(app.broker.keys.periodic_next, {"once": long_ago, "skip": long_ago})
    runner = _runner(app)
    runner.fire_due("leader")
    assert runner.fired == 1
    assert app.job(f"periodic:once:{long_ago}") is not None
    assert app.job(f"periodic:skip:{long_ago}") is None
    next_ticks = dict(app.broker.scored(app.broker.keys.periodic_next))
    assert all(t > time.time() * 1000 for t in next_ticks.values())


def test_a_tick_is_fired_only_by_the_leader_and_only_once(app: App) -> None:
    register(app.broker, [entry("e", every=1.0)], node="n")
    tick = int(app.broker.lowest(app.broker.keys.periodic_next)[1])
    follower = PeriodicRunner(app.broker, handover_window=30)
    assert LeaderLock(app.broker).acquire("leader", lease=30)
    time.sleep(max(0.0, tick / 1000 - time.time()) + 0.01)
    with pytest.raises(LockLost):
        follower.fire_due("not-leader")
    leader = PeriodicRunner(app.broker, handover_window=30)
    leader.fire_due("leader")
    again = PeriodicRunner(app.broker, handover_window=30)
    again.fire_due("leader")
    assert leader.fired == 1 and again.fired == 0


def test_the_leader_forgets_queues_that_stay_empty(app: App) -> None:
    """A mistyped or one-off task name must not leave a queue, a status row, a metrics
    label and a list of stale wake-up tokens behind forever."""
    keys = app.broker.keys
    for name in ("typo_task", "kept"):
        app.enqueue(name)
    typo = app.broker.step("w", 0, None, True, ["normal"], ["typo_task"])[1]
    assert typo is not None
    app.broker.client.rpush(keys.wake("normal", "typo_task"), *["1"] * 5)  # stale tokens
    scheduler = Scheduler(app.broker, interval=0.05, prune_interval=0.2)
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "typo_task" not in app.queue_depths()["normal"], timeout=5,
                   message="the empty queue to be forgotten")
        assert app.queue_depths()["normal"] == {"kept": 1}
        assert not app.broker.client.exists(keys.wake("normal", "typo_task"))
    finally:
        scheduler.stop()
        thread.join(5)
    app.enqueue("typo_task")  # used again: back at once
    assert app.queue_depths()["normal"]["typo_task"] == 1


def test_periodic_entries_follow_the_masters_that_are_alive(app: App) -> None:
    """An entry lives while some running master declares it: a master that restarts
    without it (a new node), or one that is gone for good, stops declaring it."""
    store = NodeStore(app.broker.client, app.broker.keys)
    old, new = NodeId("vm1", 10, "aaaa"), NodeId("vm1", 11, "bbbb")
    store.publish(old, {"host": "vm1", "pid": 10}, ttl=60)  # type: ignore[typeddict-item]
    register(app.broker, [entry("nightly"), entry("hourly")], node=str(old))
    assert entry_names(app.broker) == ["hourly", "nightly"]
    store.withdraw(old)  # the old master stopped; a new one starts without "nightly"
    store.publish(new, {"host": "vm1", "pid": 11}, ttl=60)  # type: ignore[typeddict-item]
    register(app.broker, [entry("hourly")], node=str(new))
    assert entry_names(app.broker) == ["hourly"]
    sources = app.broker.fields(app.broker.keys.periodic_sources)  # entry|node
    assert {source.rpartition("|")[2] for source in sources} == {str(new)}
    assert app.broker.client.zrange(app.broker.keys.periodic_next, 0, -1) == ["hourly"]
