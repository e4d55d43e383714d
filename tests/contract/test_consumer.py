"""The consumer in-process: running, retrying, dead letters, slots, wake-ups, stops."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from bananas_prefork import App, current_job
from bananas_prefork.core.consumer import Consumer, ConsumerHooks
from bananas_prefork.core.keys import Keys
from tests.helpers import wait_until


class IdleSlots(ConsumerHooks):
    """Which slots have gone idle: each says so just before it blocks waiting for work
    (a wake-up sent after that finds it, even if it arrives before the block)."""

    def __init__(self) -> None:
        self.slots: set[int] = set()

    def on_alive(self, slot: int) -> None:
        self.slots.add(slot)


def start(consumers: list[Consumer], app: App, **kw: Any) -> Consumer:
    consumer = Consumer(app, **kw)
    consumer.start()
    consumers.append(consumer)
    return consumer


def state(app: App, job_id: str) -> str | None:
    info = app.job(job_id)
    return info.state if info else None


def test_runs_jobs_and_stores_results(app: App, consumers: list[Consumer]) -> None:
    seen: list[Any] = []

    @app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        seen.append(current_job())
        return a + b

    job_id = add.enqueue(2, b=3)
    enqueued_at = app.job(job_id).enqueued_at
    start(consumers, app, pool="p1")
    wait_until(lambda: state(app, job_id) == "succeeded")
    info = app.job(job_id)
    assert (info.result, info.attempts, info.error) == (5, 1, None)
    ctx = seen[0]
    assert (ctx.id, ctx.name, ctx.attempt, ctx.priority, ctx.pool) == (
        job_id, "add", 1, "normal", "p1")
    assert abs(ctx.enqueued_at - enqueued_at) < 1e-3
    assert current_job() is None


def test_retries_with_backoff_then_dead(app: App, consumers: list[Consumer]) -> None:
    @app.task(name="fails", max_retries=2, retry_backoff=0.05)
    def fails() -> None:
        raise RuntimeError("nope")

    from bananas_prefork.core.scheduler import Scheduler

    scheduler = Scheduler(app.broker, interval=0.05)
    threading.Thread(target=scheduler.run, daemon=True).start()
    try:
        job_id = fails.enqueue()
        start(consumers, app)
        wait_until(lambda: state(app, job_id) == "dead", timeout=10)
    finally:
        scheduler.stop()
    info = app.job(job_id)
    assert info.attempts == 3
    assert info.error == "RuntimeError: nope"
    assert "raise RuntimeError" in info.traceback
    assert app.broker.dead_ids() == [job_id]


def test_per_job_max_retries_overrides_the_task(app: App, consumers: list[Consumer]) -> None:
    @app.task(name="fails", max_retries=5)
    def fails() -> None:
        raise RuntimeError("nope")

    job_id = app.enqueue("fails", max_retries=0)
    start(consumers, app)
    wait_until(lambda: state(app, job_id) == "dead")
    assert app.job(job_id).attempts == 1


def test_failed_state_while_a_retry_waits(app: App, consumers: list[Consumer]) -> None:
    @app.task(name="fails", retry_backoff=60)
    def fails() -> None:
        raise ValueError("later")

    job_id = fails.enqueue()
    start(consumers, app)
    wait_until(lambda: state(app, job_id) == "failed")
    info = app.job(job_id)
    assert info.due_at is not None and info.due_at > info.finished_at + 25


def test_bad_jobs_go_dead_and_the_consumer_keeps_running(app: App, rclient: redis.Redis,
                                                         consumers: list[Consumer]) -> None:
    @app.task(name="ok")
    def ok() -> str:
        return "fine"

    @app.task(name="returns_object")
    def returns_object() -> object:
        return object()

    unknown = app.enqueue("never_registered")
    garbage = app.enqueue("ok")
    rclient.hset(Keys(app.namespace).job(garbage), "args", "{not json")
    wrong_shape = app.enqueue("ok")
    rclient.hset(Keys(app.namespace).job(wrong_shape), "args", '{"a": 1}')
    bad_result = app.enqueue("returns_object")
    good = app.enqueue("ok")
    start(consumers, app)
    wait_until(lambda: state(app, good) == "succeeded")
    wait_until(lambda: all(state(app, i) == "dead"
                           for i in (unknown, garbage, wrong_shape, bad_result)))
    assert "unknown task 'never_registered'" in app.job(unknown).error
    assert "undecodable payload" in app.job(garbage).error
    assert "undecodable payload" in app.job(wrong_shape).error
    assert "must be JSON-serializable" in app.job(bad_result).error
    assert app.job(unknown).attempts == 1


def test_fetches_only_for_free_slots(app: App, rclient: redis.Redis,
                                     consumers: list[Consumer]) -> None:
    release = threading.Event()
    running = []

    @app.task(name="hold")
    def hold() -> None:
        running.append(1)
        release.wait(10)

    ids = [hold.enqueue() for _ in range(10)]
    consumer = start(consumers, app, threads=3)
    wait_until(lambda: len(running) == 3)
    time.sleep(0.2)
    assert len(running) == 3
    assert rclient.hlen(Keys(app.namespace).owned(consumer.owner)) == 3
    assert app.queue_depths()["normal"]["hold"] == 7
    release.set()
    wait_until(lambda: all(state(app, i) == "succeeded" for i in ids))


def test_idle_consumer_picks_up_within_milliseconds(app: App, consumers: list[Consumer]) -> None:
    started: list[float] = []

    @app.task(name="stamp")
    def stamp() -> None:
        started.append(time.time())

    # a long backstop: only the wake-up token can explain a fast pickup
    idle = IdleSlots()
    start(consumers, app, threads=2, idle_timeout=30, hooks=idle)
    wait_until(lambda: len(idle.slots) == 2, message="idle slots")
    delays = []
    for n in range(20):
        sent = time.time()
        stamp.enqueue()
        wait_until(lambda n=n: len(started) > n, timeout=5, interval=0.001)
        delays.append(started[n] - sent)
    delays.sort()
    assert delays[10] < 0.02 and delays[-1] < 0.2, delays


def test_typed_consumer_wakes_only_for_its_types(app: App, consumers: list[Consumer]) -> None:
    ran: list[str] = []

    @app.task(name="mine")
    def mine() -> None:
        ran.append("mine")

    @app.task(name="theirs")
    def theirs() -> None:
        ran.append("theirs")

    idle = IdleSlots()
    start(consumers, app, job_types=["mine"], idle_timeout=30, hooks=idle)
    wait_until(lambda: idle.slots, message="an idle slot")
    theirs.enqueue()
    job_id = mine.enqueue()
    wait_until(lambda: state(app, job_id) == "succeeded", timeout=2)
    assert ran == ["mine"]
    assert app.queue_depths()["normal"]["theirs"] == 1


def test_graceful_stop_finishes_running_jobs(app: App, rclient: redis.Redis) -> None:
    @app.task(name="slow")
    def slow() -> str:
        time.sleep(0.5)
        return "done"

    job_id = slow.enqueue()
    waiting = slow.enqueue()
    consumer = Consumer(app, threads=1)
    consumer.start()
    wait_until(lambda: state(app, job_id) == "running")
    assert consumer.stop(timeout=5) is True
    assert state(app, job_id) == "succeeded"
    assert state(app, waiting) == "queued"
    keys = Keys(app.namespace)
    assert not rclient.exists(keys.owner(consumer.owner))
    assert not rclient.sismember(keys.owners, consumer.owner)


def test_stop_timeout_returns_unfinished_jobs(app: App) -> None:
    release = threading.Event()

    @app.task(name="stuck")
    def stuck() -> None:
        release.wait(10)

    job_id = stuck.enqueue()
    consumer = Consumer(app)
    consumer.start()
    wait_until(lambda: state(app, job_id) == "running")
    assert consumer.stop(timeout=0.2) is False
    assert state(app, job_id) == "queued"
    assert app.job(job_id).redeliveries == 0  # our stop, not the job's fault
    release.set()


def test_stop_is_prompt_for_idle_threads(app: App) -> None:
    idle = IdleSlots()
    consumer = Consumer(app, threads=4, idle_timeout=30, hooks=idle)
    consumer.start()
    wait_until(lambda: len(idle.slots) == 4, message="idle slots")
    began = time.monotonic()
    assert consumer.stop(timeout=5)
    assert time.monotonic() - began < 1.0


def test_max_jobs_ends_the_consumer(app: App, rclient: redis.Redis) -> None:
    @app.task(name="noop")
    def noop() -> None: ...

    ids = [noop.enqueue() for _ in range(10)]
    app.broker.owner_ttl = 1.5  # the heartbeat beats every 0.5 s
    consumer = Consumer(app, threads=2, max_jobs=4)
    consumer.run()
    done = [i for i in ids if state(app, i) == "succeeded"]
    assert len(done) == 4 and consumer.jobs_done == 4
    assert app.queue_depths()["normal"]["noop"] == 6
    assert consumer._heartbeat is not None and not consumer._heartbeat.is_alive()
    keys = Keys(app.namespace)  # and with the heartbeat ended, nothing revives the owner
    assert not rclient.exists(keys.owner(consumer.owner))
    assert not rclient.sismember(keys.owners, consumer.owner)


def test_survives_dropped_connections_without_losing_or_repeating(
        app: App, rclient: redis.Redis, consumers: list[Consumer]) -> None:
    runs: list[str] = []
    lock = threading.Lock()

    @app.task(name="count")
    def count(n: int) -> int:
        with lock:
            runs.append(current_job().id)
        time.sleep(0.001)
        return n

    ids = app.enqueue_many([("count", [i]) for i in range(600)])
    start(consumers, app, threads=4)
    deadline = time.monotonic() + 60
    while len(runs) < 600:
        assert time.monotonic() < deadline, f"only {len(runs)} of 600 jobs ran"
        rclient.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.02)  # paces the faults
    wait_until(lambda: all(state(app, i) == "succeeded" for i in ids), timeout=20)
    assert sorted(runs) == sorted(ids)
    assert {app.job(i).attempts for i in ids} == {1}


@pytest.mark.parametrize("delay", [0.3, 1.2])
def test_delayed_jobs_start_on_time(app: App, consumers: list[Consumer], delay: float) -> None:
    from bananas_prefork.core.scheduler import Scheduler

    started: dict[str, float] = {}

    @app.task(name="stamp")
    def stamp() -> None:
        started[current_job().id] = time.time()

    scheduler = Scheduler(app.broker, interval=5.0)
    threading.Thread(target=scheduler.run, daemon=True).start()
    start(consumers, app, threads=2)
    try:
        wait_until(lambda: scheduler.is_leader)
        due = {}
        for n in range(10):
            job_id = app.enqueue("stamp", delay=delay + n * 0.05)
            due[job_id] = app.job(job_id).due_at
        wait_until(lambda: len(started) == 10, timeout=delay + 5)
    finally:
        scheduler.stop()
    lateness = sorted(started[i] - due[i] for i in due)
    assert lateness[0] >= -0.005, lateness
    assert lateness[-1] < 0.1, lateness
