"""The scheduler across real masters: one leader, hand-over, periodic jobs through a kill."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import redis

from bananas_prefork import App
from bananas_prefork.core.leadership import LeaderLock
from bananas_prefork.core.periodic import register
from tests.apps.recorder import runs_key
from tests.helpers import entry, live_node, wait_until
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


# -- periodic entries ----------------------------------------------------------------------


def test_periodic_every_second_across_two_masters_with_a_leader_kill(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    config = toml(FAST + '\n[[periodic]]\nname = "beat"\ntask = "record"\nevery = "1s"\n',
                  owner_ttl="3s")
    started = [masters(config, name=f"m{i}") for i in range(2)]

    def ticks() -> list[int]:
        runs = [r.split("|")[0] for r in rclient.lrange(runs_key(namespace), 0, -1)]
        return sorted(int(job_id.rsplit(":", 1)[1]) for job_id in runs)

    wait_until(lambda: len(ticks()) >= 3, timeout=15, message="three ticks")
    leader = wait_until(lambda: leader_pid(app))
    os.killpg(master_with_pid(started, leader).pid, signal.SIGKILL)
    before = len(ticks())
    wait_until(lambda: leader_pid(app) not in (None, leader), timeout=10)
    wait_until(lambda: len(ticks()) >= max(8, before + 4), timeout=15,
               message="ticks after the kill")

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

    register(app.broker, [entry("nightly", cron="0 3 * * *", every=None)],
             node=live_node(app.broker, "vm1", 1))
    register(app.broker, [entry("nightly", cron="0 4 * * *", every=None)],
             node=live_node(app.broker, "vm2", 2))

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
