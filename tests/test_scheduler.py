"""The scheduler: one leader across masters, fencing, precise promotion, periodic ticks."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.broker import LockLost
from bananas_prefork.core.config import PeriodicConfig
from bananas_prefork.core.leadership import LeaderLock
from bananas_prefork.core.periodic import Entry, PeriodicRunner, conflicts, entries_for, register
from bananas_prefork.core.scheduler import Scheduler
from tests.apps.recorder import runs_key
from tests.helpers import wait_until
from tests.masters import MasterFactory, MasterProcess, toml

FAST = ('[scheduler]\nlease = "2s"\ninterval = "1s"\n\n'
        '[pools.default]\nconcurrency = 4\nthreads = 4\n')


def leader_pid(app: App) -> int | None:
    token, _ = LeaderLock(app.broker).holder()
    return int(token.split(":")[1]) if token else None


def master_with_pid(started: list[MasterProcess], pid: int) -> MasterProcess:
    return next(m for m in started if m.pid == pid)


def ran(rclient: redis.Redis, namespace: str) -> Counter[str]:
    return Counter(r.split("|")[0] for r in rclient.lrange(runs_key(namespace), 0, -1))


# -- leadership across masters -------------------------------------------------------


def test_exactly_one_leader_among_three_masters(masters: MasterFactory, app: App) -> None:
    started = [masters(toml(FAST), name=f"m{i}") for i in range(3)]
    leader = wait_until(lambda: leader_pid(app))
    assert leader in {m.pid for m in started}
    for _ in range(20):  # stays put while it lives
        assert leader_pid(app) == leader
        time.sleep(0.1)
    assert sum(m.read_log().count("is the leader") for m in started) == 1
    _, remaining = LeaderLock(app.broker).holder()
    assert remaining is not None and 0 < remaining <= 2.0


def test_dead_leader_is_replaced_within_one_lease_and_no_delayed_job_is_lost(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    started = [masters(toml(FAST), name=f"m{i}") for i in range(2)]
    ids = [app.enqueue("record", delay=0.5 + n * 0.02) for n in range(200)]
    leader = wait_until(lambda: leader_pid(app))
    time.sleep(1.0)
    victim = master_with_pid(started, leader)
    os.killpg(victim.pid, signal.SIGKILL)  # the whole group: nobody releases the lock
    killed = time.monotonic()
    new = wait_until(lambda: leader_pid(app) not in (None, leader) and leader_pid(app),
                     timeout=5)
    assert time.monotonic() - killed <= 2.0 + 0.5  # one lease, plus a poll
    assert new in {m.pid for m in started}
    wait_until(lambda: sum(ran(rclient, namespace).values()) >= 200, timeout=20)
    counts = ran(rclient, namespace)
    assert set(counts) == set(ids) and set(counts.values()) == {1}


def test_graceful_stop_hands_over_at_once(masters: MasterFactory, app: App) -> None:
    started = [masters(toml(FAST), name=f"m{i}") for i in range(2)]
    leader = wait_until(lambda: leader_pid(app))
    master_with_pid(started, leader).send(signal.SIGTERM)
    stopped = time.monotonic()
    wait_until(lambda: leader_pid(app) not in (None, leader), timeout=3)
    assert time.monotonic() - stopped < 1.5


def test_a_paused_leader_cannot_act_after_losing_its_lease(
        masters: MasterFactory, app: App) -> None:
    started = [masters(toml(FAST), name=f"m{i}") for i in range(2)]
    leader = wait_until(lambda: leader_pid(app))
    paused_master = master_with_pid(started, leader)
    scheduler_pid = paused_master.wait_children({"default": 1, "scheduler": 1})["scheduler"][0]
    os.kill(scheduler_pid, signal.SIGSTOP)
    try:
        wait_until(lambda: leader_pid(app) not in (None, leader), timeout=5)
        new_leader = leader_pid(app)
        job_id = app.enqueue("record", delay=0.2)
    finally:
        os.kill(scheduler_pid, signal.SIGCONT)
    wait_until(lambda: "lost leadership" in paused_master.read_log(), timeout=5)
    wait_until(lambda: app.job(job_id).state == "succeeded", timeout=5)
    assert leader_pid(app) == new_leader


# -- in-process scheduler details --------------------------------------------------------


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


# -- periodic entries ----------------------------------------------------------------------


def entry(name: str = "e", **kw: object) -> Entry:
    base = dict(name=name, task="record", cron=None, every=1.0, priority="normal",
                args_json="[]", kwargs_json="{}", catch_up=True)
    base.update(kw)
    return Entry(**base)  # type: ignore[arg-type]


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
    register(app.broker, [entry("a"), entry("b", every=60.0)], node="vm1:1")
    register(app.broker, [], node="vm2:2")  # a master without entries drops nothing
    assert set(app.broker.fields(app.broker.keys.periodic)) == {"a", "b"}
    register(app.broker, [entry("b", every=60.0)], node="vm2:2")
    register(app.broker, [entry("b", every=60.0)], node="vm1:1")  # vm1 no longer declares a
    assert set(app.broker.fields(app.broker.keys.periodic)) == {"b"}
    register(app.broker, [entry("b", every=30.0)], node="vm2:2")
    assert conflicts(app.broker) == {"b": ["vm1:1", "vm2:2"]}


def _runner(app: App, window: float = 30.0) -> PeriodicRunner:
    assert LeaderLock(app.broker).acquire("leader", lease=30)
    return PeriodicRunner(app.broker, handover_window=window)


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


def test_periodic_every_second_across_two_masters_with_a_leader_kill(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    config = toml(FAST + '\n[[periodic]]\nname = "beat"\ntask = "record"\nevery = "1s"\n',
                  owner_ttl="3s")
    started = [masters(config, name=f"m{i}") for i in range(2)]
    time.sleep(4)
    leader = wait_until(lambda: leader_pid(app))
    os.killpg(master_with_pid(started, leader).pid, signal.SIGKILL)
    time.sleep(6)
    wait_until(lambda: leader_pid(app) not in (None, leader))

    def ticks() -> list[int]:
        runs = [r.split("|")[0] for r in rclient.lrange(runs_key(namespace), 0, -1)]
        return sorted(int(job_id.rsplit(":", 1)[1]) for job_id in runs)

    # a tick job that was running in the killed master comes back when its owner's
    # liveness expires (owner_ttl = 3s here), so wait for the sequence to close
    wait_until(lambda: ticks() == list(range(ticks()[0], ticks()[-1] + 1, 1000)), timeout=10,
               message="every tick from the first to the last")
    seen = ticks()
    assert len(seen) >= 8
    assert len(seen) == len(set(seen)), "a tick ran twice"


def test_periodic_list_and_remove_commands(app: App, tmp_path: object) -> None:
    import json
    import subprocess
    import sys

    from tests.masters import ROOT

    register(app.broker, [entry("nightly", cron="0 3 * * *", every=None)], node="vm1:1")
    register(app.broker, [entry("nightly", cron="0 4 * * *", every=None)], node="vm2:2")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bananas_prefork", "periodic", *args,
                               "--redis", app.redis_url, "--namespace", app.namespace],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)

    listed = cli("list")
    assert listed.returncode == 0 and "nightly: record" in listed.stdout
    assert "vm1:1, vm2:2" in listed.stdout and "CONFLICT" in listed.stdout
    (shown,) = json.loads(cli("list", "--json").stdout)
    assert shown["cron"] == "0 4 * * *" and shown["next_tick"] > time.time()
    assert cli("remove", "nightly").returncode == 0
    assert app.broker.fields(app.broker.keys.periodic) == {}
    assert app.broker.fields(app.broker.keys.periodic_sources) == {}
    assert app.broker.lowest(app.broker.keys.periodic_next) is None
    gone = cli("remove", "nightly")
    assert gone.returncode == 1 and "no periodic entry" in gone.stderr
