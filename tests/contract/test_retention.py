"""What a finished job leaves in Redis, and for how long (docs/guarantees.md,
"What stays in Redis"): a cut record for a real result, a compact note for
nothing to keep, whole records for at most ``dead_max`` dead jobs."""

from __future__ import annotations

import time

import redis

from bananas_prefork import App
from bananas_prefork.core.broker import DEAD, NOTHING_KEPT, note_shards
from bananas_prefork.core.consumer import Consumer
from bananas_prefork.core.keys import Keys
from tests.contract.test_broker import fetch, settle
from tests.contract.test_consumer import start, state
from tests.helpers import wait_until


def done_buckets(rclient: redis.Redis, namespace: str) -> list[str]:
    return sorted(k for k in rclient.scan_iter(f"{Keys(namespace).prefix}:done:*"))


def test_a_real_result_keeps_only_what_job_reports(app: App, rclient: redis.Redis) -> None:
    job_id = app.enqueue("report", args=["a" * 1000], kwargs={"k": 1}, max_retries=5)
    job = fetch(app)
    assert job is not None and settle(app, job, payload='{"rows": 3}') == 1
    key = Keys(app.namespace).job(job_id)
    assert set(rclient.hkeys(key)) == {"name", "state", "attempts", "result", "finished_at"}
    assert 3590 < rclient.ttl(key) <= 3600
    info = app.job(job_id)
    assert (info.name, info.state, info.attempts, info.result, info.error) == (
        "report", "succeeded", 1, {"rows": 3}, None)
    assert abs(info.finished_at - time.time()) < 5
    assert settle(app, job, payload='{"rows": 3}') == 0  # a retried call after a lost reply


def test_nothing_to_keep_leaves_a_note_for_done_ttl(app: App, rclient: redis.Redis) -> None:
    app.configure(done_ttl=120)
    job_id = app.enqueue("ping", args=["x" * 500])
    job = fetch(app)
    assert job is not None and settle(app, job, payload=NOTHING_KEPT) == 1
    keys = Keys(app.namespace)
    assert not rclient.exists(keys.job(job_id))  # no record, no arguments
    [bucket] = done_buckets(rclient, app.namespace)
    assert 119 <= rclient.ttl(bucket) <= 144  # the slice (done_ttl / 5) ends, then done_ttl
    assert rclient.hlen(bucket) == 1 and rclient.zcard(keys.done_index) == 1
    info = app.job(job_id)
    assert (info.state, info.attempts, info.result, info.error) == ("succeeded", 1, None, None)
    assert abs(info.finished_at - time.time()) < 5
    assert settle(app, job, payload=NOTHING_KEPT) == 0  # a retried call after a lost reply
    assert settle(app, job, owner="w2", payload=NOTHING_KEPT) == 0  # same run, same attempt
    assert app.broker.step("w1", 0, None, False, [], [])[0] is None


def test_a_run_lost_with_its_child_is_still_counted_after_success(app: App) -> None:
    """The cut record and the note both keep ``redeliveries``: an operator reading a
    finished job sees that one of its runs died with its child."""
    for payload in ('"kept"', NOTHING_KEPT):
        job_id = app.enqueue("ping")
        assert fetch(app, owner="lost") is not None
        assert app.broker.recover("lost", known_dead=True) == (1, 0)
        job = fetch(app)
        assert job is not None and job.id == job_id
        assert settle(app, job, payload=payload) == 1
        info = app.job(job_id)
        assert (info.state, info.attempts, info.redeliveries) == ("succeeded", 2, 1)
        assert settle(app, job, payload=payload) == 0  # a retried call after a lost reply


def test_notes_are_spread_over_small_hashes_and_found_again(app: App,
                                                           rclient: redis.Redis) -> None:
    """Notes go to hashes that Redis keeps compact: a slice's first 120 to one, then
    each to its shard of 256, and past 120 there to its shard of 4096. Every note is
    found again, by the same shard function in Lua and Python."""
    crowded = [i for i in (f"crowd-{n}" for n in range(60_000)) if note_shards(i)[1] == "7"]
    given = [*crowded[:130], "ünïcödé-1", "a", "order/42@x", "x" * 60]
    for attempt in range(3):  # again in a new namespace if the jobs straddled two slices
        app.configure(namespace=f"{app.namespace}-{attempt}")
        keys = Keys(app.namespace)
        ids = app.enqueue_many([("ping", [])] * 120)
        ids += app.enqueue_many([("ping", [], {}, {"job_id": i}) for i in given])
        while (job := fetch(app)) is not None:
            assert settle(app, job, payload=NOTHING_KEPT) == 1
        assert all(app.job(i).state == "succeeded" for i in ids)
        shards = done_buckets(rclient, app.namespace)
        assert sum(rclient.hlen(k) for k in shards) == len(ids)
        assert {rclient.object("encoding", k) for k in shards} <= {"listpack", "ziplist"}
        [start, *others] = rclient.zrange(keys.done_index, 0, -1)
        if not others:
            break
    sizes = {key.rsplit(":", 1)[1]: rclient.hlen(key) for key in shards}
    assert sizes["a"] == sizes["7"] == 120
    assert all(rclient.hexists(keys.done(start, note_shards(i)[2]), i) for i in crowded[120:])


def test_a_late_settle_of_an_older_run_changes_nothing(app: App) -> None:
    job_id = app.enqueue("ping")
    lost = fetch(app, owner="gone")
    assert lost is not None and app.broker.recover("gone", known_dead=True) == (1, 0)
    rerun = fetch(app)
    assert rerun is not None and settle(app, rerun, payload=NOTHING_KEPT) == 1
    assert settle(app, lost, owner="gone", payload=NOTHING_KEPT) == -1
    assert app.job(job_id).attempts == 2


def test_a_given_id_stays_taken_while_its_note_lasts(app: App, rclient: redis.Redis) -> None:
    job_id = app.enqueue("ping", job_id="order-42")
    job = fetch(app)
    assert job is not None and settle(app, job, payload=NOTHING_KEPT) == 1
    assert app.enqueue("ping", job_id="order-42") == job_id
    assert app.enqueue_many([("ping", [], {}, {"job_id": "order-42"})]) == [job_id]
    assert fetch(app) is None  # nothing was enqueued again
    rclient.delete(*done_buckets(rclient, app.namespace))  # the note expired
    assert app.enqueue("ping", job_id="order-42") == job_id
    assert fetch(app) is not None


def test_zero_retention_keeps_nothing(app: App, rclient: redis.Redis) -> None:
    app.configure(result_ttl=0, done_ttl=0)
    first, second = app.enqueue("a"), app.enqueue("a")
    for payload in ('{"x": 1}', NOTHING_KEPT):
        job = fetch(app)
        assert job is not None and settle(app, job, payload=payload) == 1
    assert app.job(first) is None and app.job(second) is None
    prefix = Keys(app.namespace).prefix
    assert not rclient.keys(f"{prefix}:job:*") and not done_buckets(rclient, app.namespace)


def test_dead_jobs_are_capped_oldest_first(app: App, rclient: redis.Redis) -> None:
    app.configure(dead_max=3)
    ids = [app.enqueue("poison", args=[n]) for n in range(5)]
    for _ in ids:
        job = fetch(app)
        assert job is not None and settle(app, job, mode=DEAD, payload="ValueError: bad") == 1
    keys = Keys(app.namespace)
    assert rclient.zcard(keys.dead) == 3
    assert app.broker.dead_ids() == ids[:1:-1]  # the newest three, most recent first
    assert [app.job(i) for i in ids[:2]] == [None, None]  # records of the dropped ones too
    assert all(app.job(i).state == "dead" for i in ids[2:])


def test_the_cap_holds_for_poison_pills_buried_by_recovery(app: App,
                                                           rclient: redis.Redis) -> None:
    app.configure(dead_max=1, max_redeliveries=1)
    first, second = app.enqueue("crash"), app.enqueue("crash")
    for n in range(2):
        assert fetch(app, owner=f"child{n}") is not None
        assert app.broker.recover(f"child{n}", known_dead=True) == (0, 1)
    assert app.broker.dead_ids() == [second] and app.job(first) is None


def test_a_task_may_opt_out_of_storing_its_result(app: App, rclient: redis.Redis,
                                                  consumers: list[Consumer]) -> None:
    @app.task(name="big", store_result=False)
    def big() -> str:
        return "r" * 10_000

    @app.task(name="small")
    def small() -> int:
        return 7

    quiet, kept = big.enqueue(), small.enqueue()
    start(consumers, app)
    wait_until(lambda: state(app, quiet) == state(app, kept) == "succeeded")
    assert app.job(quiet).result is None and app.job(kept).result == 7
    assert not rclient.exists(Keys(app.namespace).job(quiet))
