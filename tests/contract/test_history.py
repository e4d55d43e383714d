"""The history rings on a real redis-server: masters add into the same buckets, the
queues' depth is measured once a second, and each ring keeps its size."""

from __future__ import annotations

import redis

from bananas_prefork import App
from bananas_prefork.core.history import MINUTE, SECOND, Delta, HistoryStore
from tests.helpers import wait_until


def store(app: App) -> HistoryStore:
    return HistoryStore(app.broker.client, app.broker.keys)


def same_second(rclient: redis.Redis) -> None:
    """Wait for the start of a second, so that two calls land in the same bucket."""
    start = int(rclient.time()[0])
    wait_until(lambda: int(rclient.time()[0]) > start, interval=0.002)


def test_two_masters_add_into_one_bucket(app: App, rclient: redis.Redis) -> None:
    app.enqueue_many([("a", []), ("a", []), ("b", [], {}), ("c", [])])
    app.enqueue("d", priority="high")
    for _ in range(5):  # both writes in one second (a loaded machine may need a retry)
        first, second = store(app), store(app)
        same_second(rclient)
        measured = first.record(Delta(done=3, failed=1, started=4, waited=0.2))
        if second.record(Delta(done=2, failed=0, started=1, waited=0.3)) is False and \
                first.last_second == second.last_second:
            break
        rclient.delete(app.broker.keys.history("second"), app.broker.keys.history("minute"))
    assert measured is True
    history = second
    for resolution in (SECOND, MINUTE):
        series = history.read(resolution)
        index = max(i for i, v in enumerate(series["done"]) if v is not None)
        assert (series["done"][index], series["failed"][index]) == (5, 1)
        assert series["latency_ms"][index] == 100.0  # 500 ms over 5 jobs
        assert (series["depth"]["high"][index], series["depth"]["normal"][index],
                series["depth"]["low"][index]) == (1, 4, 0)


def test_a_minute_keeps_its_deepest_second(app: App, rclient: redis.Redis) -> None:
    history = store(app)
    app.enqueue_many([("a", []) for _ in range(7)])
    same_second(rclient)
    history.record(Delta())
    rclient.delete(app.broker.keys.ready("normal", "a"))
    same_second(rclient)
    history.record(Delta())
    seconds, minutes = history.read(SECOND), history.read(MINUTE)
    depths = [d for d in seconds["depth"]["normal"] if d is not None]
    assert depths[-2:] == [7, 0]
    assert max(d for d in minutes["depth"]["normal"] if d is not None) == 7


def test_a_slot_of_an_older_bucket_starts_afresh(app: App, rclient: redis.Redis) -> None:
    history = store(app)
    key = app.broker.keys.history("second")
    now = int(rclient.time()[0])
    for slot_time in (now, now + 1, now + 2):  # those slots, two laps ago
        rclient.hset(key, str(slot_time % SECOND.slots),
                     f"{slot_time - 2 * SECOND.slots},50,50,0,0,9,9,9")
    history.record(Delta(done=1))
    current = int(rclient.time()[0])
    fields = rclient.hget(key, str(current % SECOND.slots))
    assert fields is not None and fields.split(",")[:3] == [str(current), "1", "0"]
    assert 50 not in history.read(SECOND)["done"]
    assert rclient.hlen(key) <= SECOND.slots


def test_a_late_write_is_spread_over_the_seconds_it_covers(app: App,
                                                           rclient: redis.Redis) -> None:
    history = store(app)
    same_second(rclient)
    history.record(Delta(done=1))
    first = history.last_second
    for _ in range(3):
        same_second(rclient)
    history.last_second -= 1  # as if the master's publishes had skipped a second too
    history.record(Delta(done=10, failed=3, started=4, waited=4.0))
    span = history.last_second - (first - 1)  # 4, unless the machine is very slow
    share = 10 // span
    done = [v for v in history.read(SECOND)["done"] if v is not None]
    assert done == [1 + share] + [share] * (span - 2) + [10 - share * (span - 1)]
    assert sum(v for v in history.read(MINUTE)["done"] if v is not None) == 11


def test_nothing_recorded_reads_as_gaps(app: App) -> None:
    series = store(app).read(SECOND)
    assert len(series["t"]) == SECOND.slots
    assert set(series["done"]) == {None}
