"""The enqueue API: validation, encoding, idempotency, batches, job records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.broker import ENQUEUE_CHUNK
from bananas_prefork.core.keys import Keys
from tests.conftest import snapshot


def test_enqueue_records_a_queued_job(app: App) -> None:
    job_id = app.enqueue("send_email", args=["a@example.com"], kwargs={"subject": "hi"})
    info = app.job(job_id)
    assert info is not None
    assert (info.name, info.priority, info.state, info.attempts) == (
        "send_email", "normal", "queued", 0)
    assert info.args == ["a@example.com"] and info.kwargs == {"subject": "hi"}
    assert app.queue_depths() == {"high": {}, "normal": {"send_email": 1}, "low": {}}


def test_unknown_job_is_none(app: App) -> None:
    assert app.job("no-such-job") is None


def test_task_defaults_apply_to_enqueue_by_name(app: App) -> None:
    @app.task(name="report", priority="low", max_retries=5)
    def report() -> None: ...

    assert app.job(app.enqueue("report")).priority == "low"
    assert app.job(report.enqueue()).priority == "low"
    assert app.job(app.enqueue("report", priority="high")).priority == "high"
    # a process that does not know the task defaults to normal
    stranger = App(app.redis_url, namespace=app.namespace)
    assert stranger.job(stranger.enqueue("report")).priority == "normal"


def test_enqueue_with_takes_per_job_options_over_the_task_defaults(app: App) -> None:
    @app.task(name="report", priority="low", max_retries=5)
    def report(day: str, full: bool = False) -> None: ...

    job_id = report.enqueue_with(["monday"], {"full": True}, priority="high", delay=60,
                                 job_id="report-monday", max_retries=1, timeout="2m")
    info = app.job(job_id)
    assert info is not None and job_id == "report-monday"
    assert (info.priority, info.state, info.args, info.kwargs) == (
        "high", "scheduled", ["monday"], {"full": True})
    assert info.options == {"max_retries": 1, "timeout": 120.0}
    assert app.job(report.enqueue_with(["tuesday"])).priority == "low"  # the task's default
    with pytest.raises(ValueError, match="unknown priority"):
        report.enqueue_with(["x"], priority="urgent")


def test_caller_given_job_id_is_idempotent(app: App, rclient: redis.Redis) -> None:
    first = app.enqueue("send_email", args=["x"], job_id="welcome-42")
    before = snapshot(rclient)
    second = app.enqueue("send_email", args=["other"], priority="high", job_id="welcome-42")
    assert first == second == "welcome-42"
    assert snapshot(rclient) == before
    assert app.queue_depths()["normal"] == {"send_email": 1}
    assert app.job("welcome-42").args == ["x"]


def test_enqueue_many_keeps_order_and_returns_ids(app: App, rclient: redis.Redis) -> None:
    ids = app.enqueue_many([("fetch_data", [i], {"k": i}) for i in range(100)])
    assert len(set(ids)) == 100
    keys = Keys(app.namespace)
    assert rclient.lrange(keys.ready("normal", "fetch_data"), 0, -1) == ids
    assert [app.job(i).args for i in ids[:3]] == [[0], [1], [2]]


def test_enqueue_many_mixes_types_priorities_and_options(app: App) -> None:
    ids = app.enqueue_many([
        ("send_email", ["a"]),
        ("fetch_data", [1], {"k": 2}),
        ("fetch_data", [2], {}, {"priority": "high", "job_id": "fixed-1"}),
        ("send_email", [], {}, {"delay": 60}),
    ])
    assert ids[2] == "fixed-1"
    assert app.job(ids[3]).state == "scheduled"
    assert app.queue_depths() == {"high": {"fetch_data": 1},
                                  "normal": {"send_email": 1, "fetch_data": 1}, "low": {}}


def test_enqueue_many_is_all_or_nothing(app: App, rclient: redis.Redis) -> None:
    app.enqueue("send_email")
    before = snapshot(rclient)
    with pytest.raises(ValueError, match="item 2"):
        app.enqueue_many([("send_email", [1]), ("send_email", [2]), ("send_email", [object()])])
    with pytest.raises(ValueError, match="item 1"):
        app.enqueue_many([("send_email", [1]), ("send_email", [2], {}, {"priority": "urgent"})])
    assert snapshot(rclient) == before


@pytest.mark.parametrize("call, message", [
    (lambda a: a.enqueue("send_email", priority="urgent"), "unknown priority"),
    (lambda a: a.enqueue("send_email", args=[object()]), "JSON"),
    (lambda a: a.enqueue("send_email", args=[float("nan")]), "JSON"),
    (lambda a: a.enqueue("send_email", kwargs={"x": {1, 2}}), "JSON"),
    (lambda a: a.enqueue("send_email", kwargs={1: "x"}), "string keys"),
    (lambda a: a.enqueue("send_email", args="abc"), "args must be a list"),
    (lambda a: a.enqueue("send_email", at="tomorrow"), "at must be a datetime"),
    (lambda a: a.enqueue("send_email", at=1764300000), "at must be a datetime"),
    (lambda a: a.enqueue("send_email", delay="soon"), "bad delay"),
    (lambda a: a.enqueue("send_email", delay=-1), "bad delay"),
    (lambda a: a.enqueue("send_email", delay=1, at=datetime.now(UTC)), "not both"),
    (lambda a: a.enqueue("bad name!"), "invalid task name"),
    (lambda a: a.enqueue("send_email", job_id="has space"), "invalid job_id"),
    (lambda a: a.enqueue("send_email", job_id="esc\x1b[31mred"), "invalid job_id"),
    (lambda a: a.enqueue("send_email", job_id="nul\x00"), "invalid job_id"),
    (lambda a: a.enqueue("send_email", job_id="line\u2028break"), "invalid job_id"),
    (lambda a: a.enqueue("send_email", delay=float("inf")), "bad delay"),
    (lambda a: a.enqueue("send_email", delay=float("nan")), "bad delay"),
    (lambda a: a.enqueue("send_email", delay="1e400"), "bad delay"),
    (lambda a: a.enqueue("send_email", timeout=float("inf")), "timeout"),
    (lambda a: a.enqueue("send_email", args=["x" * 600_000]), "max_payload_bytes"),
    (lambda a: a.enqueue("send_email", max_retries=-1), "max_retries"),
    (lambda a: a.enqueue("send_email", timeout=0), "timeout"),
])
def test_bad_input_raises_and_writes_nothing(app: App, rclient: redis.Redis, call: object,
                                             message: str) -> None:
    app.enqueue("send_email")
    before = snapshot(rclient)
    with pytest.raises(ValueError, match=message):
        call(app)  # type: ignore[operator]
    assert snapshot(rclient) == before


def test_task_registration_rejects_bad_options(app: App) -> None:
    def job() -> None: ...

    with pytest.raises(ValueError, match="unknown priority"):
        app.task(priority="urgent")(job)
    with pytest.raises(ValueError, match="invalid task name"):
        app.task(name="a,b")(job)
    with pytest.raises(ValueError, match="not a duration"):
        app.task(timeout="forever")(job)


def test_same_job_id_twice_in_one_batch_enqueues_once(app: App) -> None:
    ids = app.enqueue_many([("send_email", [1], {}, {"job_id": "dup"}),
                            ("send_email", [2], {}, {"job_id": "dup"})])
    assert ids == ["dup", "dup"]
    assert app.queue_depths()["normal"] == {"send_email": 1}
    assert app.job("dup").args == [1]


def test_delay_and_at_schedule_the_job(app: App, rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    now = float(rclient.time()[0])
    delayed = app.enqueue("send_email", delay=timedelta(seconds=30))
    by_string = app.enqueue("send_email", delay="2m")
    naive = datetime.fromtimestamp(now + 100, UTC).replace(tzinfo=None)
    naive_at = app.enqueue("send_email", at=naive)
    aware_at = app.enqueue("send_email", at=datetime.fromtimestamp(
        now + 100, timezone(timedelta(hours=5))))
    due = dict(rclient.zrange(keys.scheduled, 0, -1, withscores=True))
    assert now + 29 < due[delayed] < now + 32
    assert now + 119 < due[by_string] < now + 122
    assert due[naive_at] == pytest.approx(now + 100) == due[aware_at]
    assert {app.job(i).state for i in due} == {"scheduled"}
    assert app.queue_depths()["normal"] == {"send_email": 0}


def test_at_in_the_past_is_ready_now(app: App) -> None:
    job_id = app.enqueue("send_email", at=datetime(2001, 1, 1))
    assert app.job(job_id).state == "queued"


def test_json_round_trip_of_arguments(app: App) -> None:
    payload = {"unicode": "bananas \u00e9\u4e2d", "nested": [1, 2.5, None, True, {"a": []}]}
    job_id = app.enqueue("fetch_data", args=[payload], kwargs={"k": payload})
    info = app.job(job_id)
    assert info.args == [payload] and info.kwargs == {"k": payload}


def test_a_huge_batch_goes_in_bounded_chunks_each_atomic(app: App, rclient: redis.Redis) -> None:
    """No single script call runs long enough to stall Redis for everyone else."""
    rclient.config_resetstat()
    ids = app.enqueue_many([("send_email", [n]) for n in range(25_000)])
    assert len(ids) == len(set(ids)) == 25_000
    assert app.queue_depths()["normal"]["send_email"] == 25_000
    stats = rclient.info("commandstats")
    calls = stats["cmdstat_evalsha"]["calls"] + stats.get("cmdstat_eval", {}).get("calls", 0)
    assert calls >= 25_000 // ENQUEUE_CHUNK
    slowest = max(entry["duration"] for entry in rclient.slowlog_get(128)) \
        if rclient.slowlog_len() else 0
    assert slowest < 1_000_000  # microseconds: far from Redis' 5 s busy threshold


def test_payload_cap_is_a_setting(redis_url: str, namespace: str) -> None:
    small = App(redis_url, namespace=namespace, max_payload_bytes=100)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        small.enqueue("send_email", args=["x" * 200])
    assert small.job(small.enqueue("send_email", args=["x" * 50])) is not None


def test_payload_cap_holds_for_the_plain_items_of_enqueue_many(
        redis_url: str, namespace: str, rclient: redis.Redis) -> None:
    small = App(redis_url, namespace=namespace, max_payload_bytes=100)
    with pytest.raises(ValueError, match=r"item 1: .*max_payload_bytes"):
        small.enqueue_many([("send_email", ["ok"]), ("send_email", ["x" * 200])])
    assert not rclient.keys(f"{{{namespace}}}:job:*")  # all or nothing
