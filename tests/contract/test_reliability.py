"""At-least-once delivery with real processes, real signals and a real Redis restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.embedded import RedisServer
from bananas_prefork.core.keys import Keys
from tests.apps.recorder import runs_key
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn_consumer(namespace: str) -> Iterator[Spawn]:
    """Start ``tests.procs.run_consumer`` processes; kill their groups at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(url: str, threads: int = 1, owner_ttl: float = 30.0, *extra: str,
              wait_ready: bool = True) -> subprocess.Popen[str]:
        env = dict(os.environ, BANANAS_REDIS_URL=url, BANANAS_NAMESPACE=namespace,
                   OWNER_TTL=str(owner_ttl), PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "tests.procs.run_consumer", str(threads),
                                 *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        procs.append(proc)
        assert proc.stdout is not None
        if wait_ready:
            assert proc.stdout.readline().startswith("ready"), "consumer did not start"
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def runs(client: redis.Redis, namespace: str) -> list[list[str]]:
    return [entry.split("|") for entry in client.lrange(runs_key(namespace), 0, -1)]


def test_each_job_runs_exactly_once_across_two_consumers(
        app: App, rclient: redis.Redis, namespace: str, redis_url: str,
        spawn_consumer: Spawn) -> None:
    ids = []
    for start in range(0, 5000, 1000):
        ids += app.enqueue_many([("record", [n]) for n in range(start, start + 1000)])
    first = spawn_consumer(redis_url, 4)
    second = spawn_consumer(redis_url, 4)
    wait_until(lambda: rclient.llen(runs_key(namespace)) >= 5000, timeout=60)
    first.send_signal(signal.SIGTERM)
    second.send_signal(signal.SIGTERM)
    assert first.wait(10) == 0 and second.wait(10) == 0
    counts = Counter(run[0] for run in runs(rclient, namespace))
    assert len(counts) == 5000 and set(counts.values()) == {1}
    assert set(counts) == set(ids)
    assert len({run[2] for run in runs(rclient, namespace)}) == 2  # both took a share
    assert all(app.job(i).state == "succeeded" for i in ids[::97])


def test_vanished_consumer_job_comes_back_and_runs(
        app: App, rclient: redis.Redis, namespace: str, redis_url: str,
        spawn_consumer: Spawn) -> None:
    gate = f"gate:{namespace}"
    job_id = app.enqueue("block_until_released", args=[gate])
    victim = spawn_consumer(redis_url, 1, 1.0)
    wait_until(lambda: rclient.llen(runs_key(namespace)) == 1)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    rclient.rpush(gate, "go")  # the rerun may pass
    # a second consumer's heartbeat notices the expired owner and recovers the job
    spawn_consumer(redis_url, 1, 1.0)
    wait_until(lambda: app.job(job_id).state == "succeeded", timeout=10)
    assert app.job(job_id).attempts == 2  # the lost run counted (a redelivery)
    pids = [run[2] for run in runs(rclient, namespace)]
    assert len(pids) == 2 and pids[0] == str(victim.pid) and pids[1] != pids[0]


def test_poison_pill_that_kills_its_worker_ends_dead(
        app: App, namespace: str, redis_url: str, spawn_consumer: Spawn) -> None:
    job_id = app.enqueue("crash_worker")
    survivor = app.enqueue("record")
    for _ in range(3):
        # (it may die on its first job before it can even say it is ready)
        proc = spawn_consumer(redis_url, 1, 30.0, "normal", "crash_worker", wait_ready=False)
        assert proc.wait(10) == -signal.SIGKILL
        owner = next(iter(app.broker.client.smembers(Keys(namespace).owners)))
        app.broker.recover(owner, known_dead=True)  # as a supervisor does after reaping
    info = app.job(job_id)
    assert info.state == "dead" and "worker lost" in info.error
    spawn_consumer(redis_url, 1)
    wait_until(lambda: app.job(survivor).state == "succeeded")


def test_redis_restart_between_enqueue_and_fetch_loses_nothing(
        private_redis: RedisServer, namespace: str, spawn_consumer: Spawn) -> None:
    app = App(private_redis.url, namespace=namespace)
    ids = app.enqueue_many([("record", [n]) for n in range(200)])
    delayed = app.enqueue("record", delay=0.5)
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    assert client.script_exists(app.broker.scripts.enqueue.sha) == [True]
    client.close()
    private_redis.restart()
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    assert client.script_exists(app.broker.scripts.step.sha) == [False]
    assert app.queue_depths()["normal"]["record"] == 200
    spawn_consumer(private_redis.url, 2)
    from bananas_prefork.core.scheduler import Scheduler

    scheduler = Scheduler(app.broker, interval=0.2)
    import threading

    threading.Thread(target=scheduler.run, daemon=True).start()
    try:
        wait_until(lambda: client.llen(runs_key(namespace)) == 201, timeout=20)
    finally:
        scheduler.stop()
    assert client.script_exists(app.broker.scripts.step.sha) == [True]
    assert {run[0] for run in runs(client, namespace)} == {*ids, delayed}
    client.close()


def test_consumer_rides_out_a_redis_restart(
        private_redis: RedisServer, namespace: str, spawn_consumer: Spawn) -> None:
    app = App(private_redis.url, namespace=namespace)
    spawn_consumer(private_redis.url, 2)
    first = app.enqueue_many([("record", [n]) for n in range(50)])
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    wait_until(lambda: client.llen(runs_key(namespace)) == 50)
    private_redis.restart()
    second = app.enqueue_many([("record", [n]) for n in range(50)])
    wait_until(lambda: client.llen(runs_key(namespace)) == 100, timeout=20)
    assert Counter(run[0] for run in runs(client, namespace)) == Counter(first + second)
    client.close()
