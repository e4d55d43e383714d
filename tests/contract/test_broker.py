"""Contract tests of the Lua scripts: ordering, ownership, recovery, fencing."""

from __future__ import annotations

import time

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.broker import DEAD, LOST_OWNERSHIP, RETRY, SUCCEEDED, LockLost, Settlement
from bananas_prefork.core.job import Job
from bananas_prefork.core.keys import PRIORITIES, Keys
from bananas_prefork.core.leadership import LeaderLock
from tests.conftest import snapshot
from tests.helpers import wait_until

ALL = ["*"]


def fetch(app: App, owner: str = "w1", slot: int = 0, priorities: list[str] | None = None,
          types: list[str] | None = None) -> Job | None:
    return app.broker.step(owner, slot, None, True, priorities or list(PRIORITIES),
                           types or ALL)[1]


def settle(app: App, job: Job, owner: str = "w1", slot: int = 0, mode: str = SUCCEEDED,
           payload: str = "null", delay: float = 0.0) -> int | None:
    return app.broker.step(owner, slot, Settlement(mode, job, payload, "", delay), False,
                           list(PRIORITIES), ALL)[0]


def drain(app: App, **kw: object) -> list[Job]:
    out = []
    while (job := fetch(app, **kw)) is not None:  # type: ignore[arg-type]
        out.append(job)
        settle(app, job, **{k: v for k, v in kw.items() if k in ("owner", "slot")})  # type: ignore[arg-type]
    return out


def test_strict_priority_then_fifo(app: App) -> None:
    ids = {}
    for n in range(3):
        for priority in ("low", "normal", "high"):
            ids[(priority, n)] = app.enqueue("send_email", args=[n], priority=priority)
    order = [job.id for job in drain(app)]
    assert order == [ids[(p, n)] for p in ("high", "normal", "low") for n in range(3)]


def test_oldest_job_across_types_within_a_priority(app: App) -> None:
    a1 = app.enqueue("send_email")
    b1 = app.enqueue("fetch_data")
    a2 = app.enqueue("send_email")
    b2 = app.enqueue("fetch_data")
    assert [job.id for job in drain(app)] == [a1, b1, a2, b2]
    assert [job.id for job in drain(app)] == []


def test_consumer_serving_some_priorities_skips_others(app: App) -> None:
    app.enqueue("send_email", priority="high")
    low = app.enqueue("send_email", priority="low")
    assert [j.id for j in drain(app, priorities=["low"])] == [low]
    assert app.queue_depths()["high"] == {"send_email": 1}


def test_typed_consumers_never_take_other_types(app: App) -> None:
    emails = [app.enqueue("send_email", args=[i]) for i in range(5)]
    data = [app.enqueue("fetch_data", args=[i], priority="high") for i in range(5)]
    reports = [app.enqueue("generate_report")]
    assert [j.id for j in drain(app, owner="a", types=["send_email"])] == emails
    assert [j.id for j in drain(app, owner="b", types=["fetch_data", "nobody"])] == data
    # a type nobody serves stays queued and visible
    assert app.queue_depths()["normal"] == {"send_email": 0, "generate_report": 1}
    assert app.job(reports[0]).state == "queued"


def test_fetch_records_ownership_atomically(app: App, rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    job_id = app.enqueue("send_email")
    job = fetch(app, owner="w1", slot=3)
    assert job is not None and job.id == job_id and job.attempt == 1
    assert rclient.hgetall(keys.owned("w1")) == {"3": job_id}
    assert rclient.sismember(keys.owners, "w1")
    assert rclient.pttl(keys.owner("w1")) > 0
    info = app.job(job_id)
    assert (info.state, info.owner, info.attempts) == ("running", "w1", 1)


def test_a_lost_fetch_reply_hands_the_same_run_back(app: App) -> None:
    app.enqueue("send_email")
    app.enqueue("send_email")
    first = fetch(app, slot=0)
    again = fetch(app, slot=0)  # as if the reply to the first call was lost
    assert again == first
    assert app.job(first.id).attempts == 1
    other = fetch(app, slot=1)
    assert other is not None and other.id != first.id


def test_settle_succeeded_stores_result_with_ttl(app: App, rclient: redis.Redis) -> None:
    job_id = app.enqueue("send_email")
    job = fetch(app)
    assert settle(app, job, payload='{"ok":1}') == 1
    info = app.job(job_id)
    assert (info.state, info.result) == ("succeeded", {"ok": 1})
    assert 0 < rclient.ttl(Keys(app.namespace).job(job_id)) <= 3600
    assert rclient.hlen(Keys(app.namespace).owned("w1")) == 0
    assert settle(app, job) == 0  # a retried call is harmless


def test_settle_retry_schedules_with_backoff(app: App, rclient: redis.Redis) -> None:
    job_id = app.enqueue("send_email")
    job = fetch(app)
    now = float(rclient.time()[0])
    assert settle(app, job, mode=RETRY, payload="RuntimeError: x", delay=30) == 1
    info = app.job(job_id)
    assert (info.state, info.error) == ("failed", "RuntimeError: x")
    due = rclient.zscore(Keys(app.namespace).scheduled, job_id)
    assert now + 29 <= due <= now + 32


def test_settle_dead_goes_to_dead_letters(app: App, rclient: redis.Redis) -> None:
    job_id = app.enqueue("send_email")
    settle(app, fetch(app), mode=DEAD, payload="ValueError: bad")
    assert app.job(job_id).state == "dead"
    assert rclient.zscore(Keys(app.namespace).dead, job_id) is not None
    assert 0 < rclient.ttl(Keys(app.namespace).job(job_id)) <= 7 * 86400


def test_explicit_recovery_of_a_dead_owner_is_immediate(app: App) -> None:
    first = app.enqueue("send_email", args=[1])
    second = app.enqueue("send_email", args=[2])
    third = app.enqueue("send_email", args=[3])
    fetch(app, owner="dead", slot=0)
    fetch(app, owner="dead", slot=1)
    assert app.broker.recover("dead", known_dead=True) == (2, 0)
    # back at the front, oldest first, each counted as a redelivery
    assert app.job(first).redeliveries == 1 and app.job(third).redeliveries == 0
    assert [j.id for j in drain(app)] == [first, second, third]


def test_recovery_leaves_a_live_owner_alone(app: App) -> None:
    app.enqueue("send_email")
    fetch(app, owner="alive")
    assert app.broker.recover("alive", known_dead=False) == (-1, 0)
    assert app.broker.recover_dead_owners() == 0


def test_owner_whose_liveness_expired_is_recovered(app: App, rclient: redis.Redis) -> None:
    app.broker.owner_ttl = 0.2
    job_id = app.enqueue("send_email")
    fetch(app, owner="vanished")
    wait_until(lambda: not rclient.exists(Keys(app.namespace).owner("vanished")), timeout=2)
    assert app.broker.recover_dead_owners() == 1
    assert app.job(job_id).state == "queued"
    assert fetch(app, owner="other").id == job_id
    assert not rclient.sismember(Keys(app.namespace).owners, "vanished")


def test_late_settle_from_the_old_owner_changes_nothing(app: App, rclient: redis.Redis) -> None:
    job_id = app.enqueue("send_email")
    old = fetch(app, owner="old")
    app.broker.recover("old", known_dead=True)
    new = fetch(app, owner="new")
    assert new.id == job_id and new.attempt == 2
    before = snapshot(rclient)
    for mode in (SUCCEEDED, RETRY, DEAD):
        assert settle(app, old, owner="old", mode=mode) == LOST_OWNERSHIP
    assert snapshot(rclient) == before
    assert settle(app, new, owner="new") == 1
    assert app.job(job_id).state == "succeeded"


def test_same_owner_cannot_settle_an_earlier_run(app: App) -> None:
    app.enqueue("send_email")
    first = fetch(app, owner="w")
    app.broker.recover("w", known_dead=True)
    second = fetch(app, owner="w")
    assert settle(app, first, owner="w") == LOST_OWNERSHIP
    assert settle(app, second, owner="w") == 1


def test_poison_pill_dies_as_worker_lost(app: App) -> None:
    job_id = app.enqueue("crash_worker")
    for n in range(3):
        assert fetch(app, owner=f"w{n}").id == job_id
        app.broker.recover(f"w{n}", known_dead=True)
    info = app.job(job_id)
    assert info.state == "dead"
    assert "worker lost" in info.error and info.redeliveries == 3 and info.attempts == 3
    assert fetch(app) is None



def test_a_job_that_died_beside_others_gets_a_run_alone_before_it_is_dead(app: App) -> None:
    """Two jobs lose their child together max_redeliveries times: neither is buried (one
    may be innocent); each is marked to run alone. Alone, the culprit dies."""
    culprit = app.enqueue("send_email", args=["poison"], max_retries=0)
    neighbour = app.enqueue("send_email", args=["fine"])
    for round in range(3):
        held = [fetch(app, owner=f"w{round}", slot=0), fetch(app, owner=f"w{round}", slot=1)]
        assert {j.id for j in held if j} == {culprit, neighbour}
        app.broker.recover(f"w{round}", known_dead=True)
    for job_id in (culprit, neighbour):
        info = app.job(job_id)
        assert (info.state, info.redeliveries, info.options.get("solo")) == ("queued", 3, True)
    assert app.job(culprit).options["max_retries"] == 0  # other options kept
    alone = fetch(app, owner="w9")
    assert alone is not None and alone.id == culprit and alone.options()["solo"] is True
    app.broker.recover("w9", known_dead=True)  # killed its child while alone
    assert app.job(culprit).state == "dead"

def test_returning_unharmed_jobs_does_not_count(app: App) -> None:
    job_id = app.enqueue("send_email")
    for n in range(5):
        fetch(app, owner=f"w{n}")
        app.broker.recover(f"w{n}", known_dead=True, lost_run=False)
    assert app.job(job_id).state == "queued" and app.job(job_id).redeliveries == 0


def test_wake_tokens_are_bounded_and_cleared(app: App, rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    app.enqueue_many([("send_email", [i]) for i in range(1000)])
    assert rclient.llen(keys.wake("normal", "send_email")) == 256
    assert rclient.llen(keys.wake("normal", "*")) == 256
    drain(app)
    assert not rclient.exists(keys.wake("normal", "*"))


def test_promotion_is_fenced_by_the_lock(app: App) -> None:
    job_id = app.enqueue("send_email", delay=0.01)
    time.sleep(0.05)
    with pytest.raises(LockLost):
        app.broker.promote_due("not-the-leader")
    assert LeaderLock(app.broker).acquire("me", lease=5)
    assert not LeaderLock(app.broker).acquire("you", lease=5)
    with pytest.raises(LockLost):
        app.broker.promote_due("you")
    assert app.broker.promote_due("me") == (1, None)
    assert app.job(job_id).state == "queued"
    assert not LeaderLock(app.broker).renew("you", 5) and LeaderLock(app.broker).renew("me", 5)
    assert not LeaderLock(app.broker).release("you") and LeaderLock(app.broker).release("me")


def test_promotion_reports_time_to_next_due(app: App) -> None:
    app.enqueue("send_email", delay=100)
    LeaderLock(app.broker).acquire("me", lease=5)
    promoted, wait = app.broker.promote_due("me")
    assert promoted == 0 and 98 < wait <= 100


def test_dead_requeue_and_remove(app: App) -> None:
    ids = [app.enqueue("send_email", args=[i]) for i in range(3)]
    for _ in ids:
        settle(app, fetch(app), mode=DEAD, payload="boom")
    assert sorted(app.broker.dead_ids()) == sorted(ids)
    assert app.broker.requeue_dead([ids[0], "unknown"]) == 1
    info = app.job(ids[0])
    assert (info.state, info.attempts) == ("queued", 0)
    assert app.broker.remove_dead(ids[1:]) == 2
    assert app.broker.dead_ids() == [] and app.job(ids[1]) is None


def test_counts_and_ages(app: App) -> None:
    app.enqueue("send_email")
    app.enqueue("send_email", delay=60)
    fetch(app)
    app.enqueue("fetch_data", priority="low")
    counts = app.broker.counts()
    assert counts == {"scheduled": 1, "dead": 0, "in_flight": 1}
    depths, ages = app.broker.queue_report()
    assert depths == {"high": {}, "normal": {"send_email": 0}, "low": {"fetch_data": 1}}
    assert set(ages) == {"low"} and 0 <= ages["low"]["fetch_data"] < 5


def test_dead_retry_and_purge_touch_only_jobs_that_are_dead(app: App, rclient: redis.Redis) -> None:
    """The dead set can outlive a record; a caller's id may then be reused by a live
    job. Retrying or purging that id must leave the live job alone."""
    app.enqueue("send_email", job_id="welcome-7", max_retries=0)
    job = fetch(app)
    assert job is not None
    settle(app, job, mode=DEAD, payload="boom")
    rclient.delete(Keys(app.namespace).job("welcome-7"))  # its record expired
    app.enqueue("send_email", job_id="welcome-7")  # the id is used again
    again = fetch(app)
    assert again is not None and again.id == "welcome-7" and app.job("welcome-7").state == \
        "running"
    assert app.broker.requeue_dead(["welcome-7"]) == 0
    assert app.broker.remove_dead(["welcome-7"]) == 0
    assert app.job("welcome-7").state == "running"
    assert app.broker.dead_ids() == []  # the stale entry is gone
    assert app.queue_depths()["normal"].get("send_email", 0) == 0
