"""Children under supervision: crashes, a dead master, recycling, limits, backoff."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import redis

from bananas_prefork import App
from tests.apps.recorder import runs_key
from tests.helpers import wait_until
from tests.masters import MasterFactory, toml


def runs(rclient: redis.Redis, namespace: str) -> list[list[str]]:
    return [r.split("|") for r in rclient.lrange(runs_key(namespace), 0, -1)]


def test_killed_child_is_replaced_and_its_job_reruns(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 2\n"))
    before = master.wait_children({"default": 2, "scheduler": 1})["default"]
    gate = f"gate:{namespace}"
    job_id = app.enqueue("block_until_released", args=[gate])
    wait_until(lambda: len(runs(rclient, namespace)) == 1)
    victim = int(runs(rclient, namespace)[0][2])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: len(runs(rclient, namespace)) == 2, timeout=2)
    assert time.monotonic() - killed_at < 2.0
    rclient.rpush(gate, "open")
    wait_until(lambda: app.job(job_id).state == "succeeded")
    info = app.job(job_id)
    assert (info.attempts, info.redeliveries) == (2, 1)
    after = master.wait_children({"default": 2, "scheduler": 1})["default"]
    assert victim not in after and len(set(after) - set(before)) == 1
    assert "killed by SIGKILL" in master.read_log()


def test_dead_master_leaves_no_orphans_and_the_next_master_recovers_its_jobs(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    config = toml("[pools.default]\nconcurrency = 2\n")
    first = masters(config, name="first")
    kids = [psutil.Process(p) for ps in first.wait_children({"default": 2, "scheduler": 1})
            .values() for p in ps]
    gate = f"gate:{namespace}"
    job_id = app.enqueue("block_until_released", args=[gate])
    wait_until(lambda: app.job(job_id).state == "running")
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(5)
    _, alive = psutil.wait_procs(kids, timeout=3.5)
    alive = [p for p in alive if _running(p)]  # a zombie has exited; init reaps it
    assert not alive, f"orphans: {alive}\n{first.read_log()}"
    rclient.rpush(gate, "open")
    second = masters(config, name="second")
    try:
        wait_until(lambda: app.job(job_id).state == "succeeded", timeout=10)
    except AssertionError:
        logs = f"{first.read_log()}\n{second.read_log()}"
        raise AssertionError(f"{app.job(job_id)}\n{logs}") from None
    assert app.job(job_id).attempts == 2


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_children_recycle_after_max_jobs(masters: MasterFactory, app: App,
                                         rclient: redis.Redis, namespace: str) -> None:
    masters(toml("[pools.default]\nconcurrency = 1\nmax_jobs_per_child = 5\n"))
    ids = app.enqueue_many([("record", [n]) for n in range(30)])
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in ids), timeout=20)
    per_pid: dict[str, int] = {}
    for run in runs(rclient, namespace):
        per_pid[run[2]] = per_pid.get(run[2], 0) + 1
    assert len(per_pid) >= 3 and max(per_pid.values()) <= 5 + 5 // 10
    assert sorted(r[0] for r in runs(rclient, namespace)) == sorted(ids)


def test_child_over_its_memory_limit_recycles_after_its_job(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\nmax_memory_mb = 120\n"))
    first = master.wait_children({"default": 1, "scheduler": 1})["default"][0]
    job_id = app.enqueue("hog_memory", args=[200, 2.5])
    wait_until(lambda: app.job(job_id).state == "succeeded", timeout=20)
    wait_until(lambda: first not in master.children().get("default", []), timeout=5)
    master.wait_children({"default": 1, "scheduler": 1})
    assert app.job(job_id).attempts == 1
    assert "recycling: memory" in master.read_log()


def test_runaway_memory_is_killed_and_ends_dead(masters: MasterFactory, app: App) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\nmax_memory_mb_hard = 150\n"))
    job_id = app.enqueue("hog_memory", args=[400, 30])
    wait_until(lambda: app.job(job_id).state == "dead", timeout=40)
    info = app.job(job_id)
    assert "worker lost" in info.error and info.redeliveries == 3
    assert "above the hard limit" in master.read_log()
    master.wait_children({"default": 1, "scheduler": 1})


def test_a_job_that_exits_its_child_with_code_0_ends_dead(
        masters: MasterFactory, app: App) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n"))
    job_id = app.enqueue("exit_quietly")
    wait_until(lambda: app.job(job_id).state == "dead", timeout=20)
    info = app.job(job_id)
    assert "worker lost" in info.error and info.redeliveries == 3 and info.attempts == 3
    assert master.read_log().count("spawned default[0]") <= 6  # not hundreds
    master.wait_children({"default": 1, "scheduler": 1})


def test_a_poison_job_does_not_take_its_innocent_neighbours_with_it(
        masters: MasterFactory, app: App) -> None:
    """A job that kills its child every time, beside jobs that are only unlucky: only
    the poison job ends dead; each neighbour ends succeeded."""
    masters(toml("[pools.default]\nconcurrency = 3\nthreads = 3\n"))
    neighbours = [app.enqueue("sleep", args=[1.0]) for _ in range(2)]
    wait_until(lambda: all(app.job(i).state == "running" for i in neighbours))
    poison = app.enqueue("crash_worker")
    wait_until(lambda: app.job(poison).state == "dead", timeout=40)
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in neighbours), timeout=40)


def test_a_long_job_id_past_its_hard_timeout_fails_by_policy(
        masters: MasterFactory, app: App) -> None:
    masters(toml('[pools.default]\nconcurrency = 1\njob_timeout = "1s"\n'))
    long_id = "nightly-report:" + "é" * 60 + ":" + "x" * 120  # 200 characters, 260 bytes
    job_id = app.enqueue("busy_loop", args=[60], max_retries=1, job_id=long_id)
    wait_until(lambda: app.job(job_id).state == "dead", timeout=30)
    info = app.job(job_id)
    assert info.attempts == 2 and "TimeoutError" in (info.error or "")


def test_job_past_its_hard_timeout_fails_by_policy(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    master = masters(toml('[pools.default]\nconcurrency = 2\nthreads = 2\njob_timeout = "1s"\n'))
    stuck = app.enqueue("busy_loop", args=[60], max_retries=0)
    neighbour = app.enqueue("sleep", args=[0.3])
    wait_until(lambda: app.job(stuck).state == "dead", timeout=15)
    info = app.job(stuck)
    assert "TimeoutError" in info.error and "1s hard limit" in info.error
    assert info.attempts == 1
    wait_until(lambda: app.job(neighbour).state == "succeeded")
    assert app.job(neighbour).redeliveries == 0
    log = master.read_log()
    assert "hard limit" in log and "killing default[0]" in log
    master.wait_children({"default": 1, "scheduler": 1})


def test_timed_out_job_with_retries_left_is_retried(masters: MasterFactory, app: App) -> None:
    masters(toml('[pools.default]\nconcurrency = 1\njob_timeout = "1s"\n'))
    job_id = app.enqueue("busy_loop", args=[60], max_retries=1)
    wait_until(lambda: app.job(job_id).state == "dead", timeout=30)
    assert app.job(job_id).attempts == 2


def test_child_that_cannot_boot_backs_off(masters: MasterFactory, app: App,
                                          tmp_path: Path) -> None:
    breaker = tmp_path / "broken"
    master = masters(toml("[pools.default]\nconcurrency = 1\n", app="tests.apps.fragile:app",
                          preload_app=False), env={"BANANAS_TEST_BREAK": str(breaker)})
    first = master.wait_children({"default": 1, "scheduler": 1})["default"][0]
    breaker.write_text("broken")
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: master.read_log().count("spawned default[0]") >= 5, timeout=20,
               message="four restarts")
    # doubling backoff (0.5 s, 1 s, ... +-20%) once restarts fail in a row: not hundreds
    elapsed = time.monotonic() - killed
    assert elapsed > 1.0, elapsed
    assert master.read_log().count("spawned default[0]") <= 6
    assert "this deploy is broken" in master.read_log()
    breaker.unlink()
    master.wait_children({"default": 1, "scheduler": 1}, timeout=20)
    job_id = app.enqueue("record")
    wait_until(lambda: app.job(job_id).state == "succeeded", timeout=20)
