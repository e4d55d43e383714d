"""Unit tests of the pure parts: health verdicts, restart backoff, the scoreboard,
stats batching, durations and the retry backoff (some as properties)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bananas_prefork.core.config import PoolConfig
from bananas_prefork.core.durations import format_duration, parse_duration
from bananas_prefork.core.retry import RetryPolicy
from bananas_prefork.supervisor import pool as pool_module
from bananas_prefork.supervisor.monitor import KILL, TERM, Sample, judge
from bananas_prefork.supervisor.pool import FAILING_AFTER, Child, Pool
from bananas_prefork.supervisor.scoreboard import Scoreboard, SlotView
from bananas_prefork.supervisor.stats import BUCKETS, StatsRecorder, TypeStats, merge
from tests.unit.fake_os import FakeOS, RecordingBroker

LIMITED = PoolConfig(name="p", max_memory_mb=100, max_memory_mb_hard=200)


def slot(started: float, timeout: float | None) -> SlotView:
    return SlotView(0, "job1", "send_email", 1, started, timeout)


@pytest.mark.parametrize("rss, busy, stopping, expected", [
    (50, [], False, None),
    (150, [], False, (TERM, "recycling")),
    (150, [], True, None),  # already stopping: let it finish
    (250, [], False, (KILL, "hard limit")),
    (250, [], True, (KILL, "hard limit")),
    (50, [slot(990.0, 5.0)], False, (TERM, "hard limit")),  # 10 s into a 5 s job
    (50, [slot(998.0, 5.0)], False, None),
    (50, [slot(900.0, None)], False, None),  # no limit: runs as long as it likes
])
def test_health_verdicts(rss: float, busy: list[SlotView], stopping: bool,
                         expected: tuple[str, str] | None) -> None:
    verdict = judge(LIMITED, busy, Sample(rss, 0.0), now=1000.0, stopping=stopping)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.action == expected[0]
        assert expected[1] in verdict.reason


def test_timeout_verdict_names_the_job_and_does_not_count_a_lost_run() -> None:
    verdict = judge(LIMITED, [slot(990.0, 5.0)], Sample(10, 0), now=1000.0, stopping=False)
    assert verdict is not None and verdict.timed_out is not None
    assert verdict.timed_out.job_id == "job1" and not verdict.lost_run


def worker(pool: Pool, pid: int, age: float, ready: bool = False, jobs: int = 0) -> Child:
    w = Child(pid, pool, 0, None, Scoreboard(1), -1, RecordingBroker())
    w.spawned_at = pool_module.time.monotonic() - age
    w.ready_at = w.spawned_at + 0.05 if ready else None  # ready soon after it was forked
    for _ in range(jobs):
        w.scoreboard.job_ended(0, succeeded=True)
    pool.children[pid] = w
    return w


def test_quick_deaths_back_off_exponentially_up_to_the_cap(fake_os: FakeOS) -> None:
    pool = Pool(PoolConfig(name="p"), 1, max_backoff=2.0)
    delays = []
    for n in range(8):
        pool.child_died(worker(pool, 100 + n, age=0.1), expected=False, error="boom")
        delays.append(pool.next_spawn_at - fake_os.clock.mono)
    assert delays[0] <= 0  # the first crash is replaced at once
    assert 0.4 <= delays[1] <= 0.6 and 0.8 <= delays[2] <= 1.2  # then 0.5 s, doubling
    assert max(delays) <= 2.0 * 1.2
    assert pool.failing and pool.failures == 8 and pool.last_error == "boom"
    pool.child_settled()
    assert not pool.failing and pool.last_error is None


def test_a_long_lived_child_dying_is_not_a_boot_failure() -> None:
    pool = Pool(PoolConfig(name="p"), 1, max_backoff=30)
    for n in range(FAILING_AFTER + 2):
        pool.child_died(worker(pool, n + 1, age=60, ready=True), expected=False, error="x")
    assert pool.failures == 0 and pool.restarts == FAILING_AFTER + 2


def test_a_young_child_that_ran_jobs_is_replaced_without_backoff() -> None:
    pool = Pool(PoolConfig(name="p"), 1, max_backoff=30)
    for n in range(6):
        pool.child_died(worker(pool, n + 1, age=0.5, ready=True, jobs=3), expected=False,
                        error="crashed")
    assert pool.failures == 0 and pool.next_spawn_at == 0.0


def test_a_child_that_was_ready_but_never_ran_a_job_counts_as_failing_to_start() -> None:
    pool = Pool(PoolConfig(name="p"), 1, max_backoff=30)
    for n in range(FAILING_AFTER):
        pool.child_died(worker(pool, n + 1, age=0.5, ready=True), expected=False, error="x")
    assert pool.failing


def test_expected_deaths_count_nothing() -> None:
    pool = Pool(PoolConfig(name="p"), 1, max_backoff=30)
    pool.child_died(worker(pool, 1, age=0.1), expected=True, error=None)
    assert (pool.failures, pool.restarts) == (0, 0)


def test_max_jobs_jitter_stays_within_ten_percent() -> None:
    pool = Pool(replace(PoolConfig(name="p"), max_jobs_per_child=1000), 1, max_backoff=30)
    limits = {pool.jobs_limit() for _ in range(200)}
    assert min(limits) >= 1000 and max(limits) <= 1100 and len(limits) > 10
    assert Pool(PoolConfig(name="p"), 1, 30).jobs_limit() is None


def test_scoreboard_slots_and_counters() -> None:
    board = Scoreboard(3)
    board.job_started(1, "abc", "send_email", 2, 30.0)
    (view,) = board.busy_slots()
    assert (view.slot, view.job_id, view.job_type, view.attempt, view.timeout) == (
        1, "abc", "send_email", 2, 30.0)
    long_id = "é" * 200  # the longest id a caller may give: whole, never truncated
    board.job_started(2, long_id, "t" * 200, 1, None)
    assert len(board.busy_slots()) == 2 and board.busy_slots()[1].timeout is None
    assert board.busy_slots()[1].job_id == long_id
    with pytest.raises(ValueError):
        board.job_started(0, "x" * 2000, "t", 1, None)
    board.job_ended(1, succeeded=True)
    board.job_ended(2, succeeded=False)
    assert board.busy_slots() == [] and (board.jobs_done, board.jobs_failed) == (1, 1)
    assert time.monotonic() - board.heartbeat < 1
    board.close()


def test_stats_batches_merge_into_totals() -> None:
    recorder = StatsRecorder()
    recorder.record("a", "succeeded", 0.003)
    recorder.record("a", "retry", 20.0)
    recorder.record("b", "dead", 0.2)
    totals: dict[str, TypeStats] = {}
    merge(totals, recorder.flush())
    assert recorder.flush() == {}
    recorder.record("a", "succeeded", 0.05)
    merge(totals, recorder.flush())
    a = totals["a"]
    assert a.outcomes == {"succeeded": 2, "retry": 1, "dead": 0} and a.count == 3
    assert a.buckets[0] == 1 and a.buckets[-1] == 1  # 3 ms in the first, 20 s past the last
    assert len(a.buckets) == len(BUCKETS) + 1 and a.seconds == pytest.approx(20.053)


@given(st.floats(min_value=0, max_value=10**6, allow_nan=False).map(lambda x: round(x, 3)))
def test_durations_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("1s", 1), ("5m", 300),
                                           ("1h", 3600), ("2d", 172800), (" 3 ", 3), (7, 7)])
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "-1s", "1x", True, None, [1]])
def test_bad_durations_say_what_is_allowed(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(min_value=1, max_value=60), st.floats(min_value=0.01, max_value=60),
       st.floats(min_value=0, max_value=0.999999))
def test_backoff_grows_with_jitter_and_respects_the_cap(attempt: int, base: float,
                                                        rand: float) -> None:
    cap = 600.0
    delay = RetryPolicy(3, base, cap).delay(attempt, rand)
    step = min(cap, base * 2 ** (attempt - 1))
    assert step / 2 <= delay <= step
