#!/usr/bin/env python3
"""Scheduler figures: lateness of delayed jobs through a real master, promotion rate of a backlog.

a. A real master (one pool, the scheduler child leading) at each
   ``[scheduler] interval``: delayed jobs record when they start; lateness =
   start - the job's due time (``app.job(id).due_at``, Redis' clock = this
   machine's clock).
b. 100,000 due jobs promoted by an in-process ``Scheduler`` thread: jobs/s and
   the longest single promote call (Redis SLOWLOG), i.e. how long Redis is
   blocked per batch.

Everything runs against one private redis-server started here; it and every
master are killed at exit (server by pid, masters by process group), also on
Ctrl-C, SIGTERM and errors. See bench/README.md.

    .venv/bin/python bench/scheduler.py                       # both sections (~1.5 min)
    .venv/bin/python bench/scheduler.py --only promote --promote-repeat 1
    .venv/bin/python bench/scheduler.py --json bench/results/scheduler-2core.json
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    MasterRun,
    Result,
    Session,
    chosen_sections,
    deployment,
    distribution,
    median,
    run_main,
    wait_for,
)
from supervisedtasks import STARTED_KEY, app

from bananas_prefork.core.broker import Broker
from bananas_prefork.core.connection import connect
from bananas_prefork.core.leadership import LeaderLock
from bananas_prefork.core.scheduler import Scheduler

NAMESPACE = "benchsched"
SECTIONS = ("lateness", "promote")
ENQUEUE_BATCH = 10_000


# ---------------------------------------------------------------------------
# a. Lateness through a real master
# ---------------------------------------------------------------------------

def measure_lateness(sess: Session, opts: argparse.Namespace, interval: str) -> Result:
    """Two phases of delayed ``stamp`` jobs through a master whose scheduler child leads."""
    sess.admin().flushall()
    pools = {"default": {"concurrency": opts.concurrency, "threads": 1}}
    config = deployment("supervisedtasks:app", sess.url, NAMESPACE, pools,
                        {"enabled": True, "interval": interval})
    run = sess.master(f"lateness-{interval}", config)
    run.start()
    run.wait_notify("READY=1", opts.timeout)
    rng = random.Random(7)
    counter = sess.counter()
    try:
        _wait_leader(run, opts.timeout)
        spread = _enqueue_paced(opts.spread_jobs, opts.spread_pace,
                                lambda: rng.uniform(opts.spread_min, opts.spread_max))
        _wait_started(counter, spread, opts.timeout)
        time.sleep(opts.quiet)  # nothing scheduled: the leader sleeps up to its interval
        anchor = app.enqueue("stamp", delay=opts.anchor_delay)
        sooner = _enqueue_paced(opts.sooner_jobs, opts.sooner_pace,
                                lambda: rng.uniform(opts.sooner_min, opts.sooner_max))
        _wait_started(counter, [*sooner, anchor], opts.timeout + opts.anchor_delay)
        run.check_alive()
    finally:
        run.stop()
    phases = {"spread": spread, "sooner": [anchor, *sooner]}
    out: Result = {"interval": interval}
    for name, ids in [*phases.items(), ("all", [*spread, anchor, *sooner])]:
        out[name] = _lateness(counter, ids)
    return out


def _wait_leader(run: MasterRun, timeout: float) -> None:
    identity = f"{socket.gethostname()}:{run.pid}:"

    def leading() -> bool:
        token, _ = LeaderLock(app.broker).holder()
        return bool(token and token.startswith(identity))

    wait_for(leading, timeout, "the master's scheduler leading", 0.05)


def _enqueue_paced(count: int, pace: float, delay: Any) -> list[str]:
    """``count`` stamp jobs, one every ``pace`` s, each with ``delay()`` s of delay."""
    start = time.time() + 0.05
    ids = []
    for i in range(count):
        pause = start + i * pace - time.time()
        if pause > 0:
            time.sleep(pause)
        ids.append(app.enqueue("stamp", delay=delay()))
    return ids


def _wait_started(counter: Any, ids: Sequence[str], timeout: float) -> None:
    wait_for(lambda: all(counter.hmget(STARTED_KEY, list(ids))), timeout,
             f"{len(ids)} delayed jobs starting", 0.05)


def _lateness(counter: Any, ids: Sequence[str]) -> Result:
    """start - due (job's own clock) and claim - due (Redis' clock at fetch), in seconds."""
    started = counter.hmget(STARTED_KEY, list(ids))
    late, claim = [], []
    for job_id, start in zip(ids, started, strict=True):
        info = app.job(job_id)
        if info is None or info.due_at is None or start is None:
            raise BenchError(f"job {job_id}: no record, due time or start time")
        late.append(float(start) - info.due_at)
        if info.started_at is not None:
            claim.append(info.started_at - info.due_at)
    return {"start_minus_due_s": distribution(late), "claim_minus_due_s": distribution(claim)}


# ---------------------------------------------------------------------------
# b. Promotion rate of a backlog
# ---------------------------------------------------------------------------

class TimedBroker(Broker):
    """A Broker that times every promote call as the client sees it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[float, float, int]] = []  # (start, end, promoted)
        self.promoted = 0

    def promote_due(self, token: str, batch: int = 1000) -> tuple[int, float | None]:
        started = time.perf_counter()
        promoted, wait = super().promote_due(token, batch)
        self.calls.append((started, time.perf_counter(), promoted))
        self.promoted += promoted
        return promoted, wait


def measure_promotion(sess: Session, opts: argparse.Namespace, batch: int) -> Result:
    admin = sess.admin()
    admin.flushall()
    enqueue_s = _enqueue_backlog(opts.backlog, opts.backlog_delay)
    if admin.zcard(app.broker.keys.scheduled) != opts.backlog:
        raise BenchError("the backlog is not all scheduled (did something promote it?)")
    saved = _slowlog_on(admin, opts.slowlog_threshold_us)
    broker = TimedBroker(connect(sess.url), NAMESPACE)
    scheduler = Scheduler(broker, interval=1.0, batch=batch)
    thread = threading.Thread(target=scheduler.run, name="bench-scheduler", daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        wait_for(lambda: broker.promoted >= opts.backlog, opts.timeout,
                 f"{opts.backlog} jobs promoted", 0.001)
        done = time.perf_counter()
    finally:
        scheduler.stop()
        thread.join(5.0)
    slow = _promote_durations(admin, broker.scripts.promote.sha)
    evalsha = admin.info("commandstats").get("cmdstat_evalsha", {})
    _slowlog_restore(admin, saved)
    _check_promoted(admin, opts.backlog)
    return _promotion_result(broker, opts.backlog, batch, t0, done, slow, evalsha, enqueue_s)


def _enqueue_backlog(count: int, delay: float) -> float:
    """``count`` jobs due in ``delay`` s, in batches of 10,000; waits until all are due."""
    started = time.perf_counter()
    for first in range(0, count, ENQUEUE_BATCH):
        size = min(ENQUEUE_BATCH, count - first)
        app.enqueue_many([("tick", [0.0], {}, {"delay": delay})] * size)
    took = time.perf_counter() - started
    time.sleep(delay + 0.1)  # the last batch is due by now
    return took


def _slowlog_on(admin: Any, threshold_us: int) -> dict[str, str]:
    """Log every command slower than ``threshold_us``.

    Redis 7 also logs each command a script runs, separately (a few us each, three
    per promoted job); a threshold of 0 would let them push the promote calls out of
    the log, so the default threshold (50 us) keeps them out and every promote call
    of a non-trivial batch in (checked: ``slowlog_entries`` vs ``working_calls``).
    """
    saved = admin.config_get("slowlog-*")
    admin.config_set("slowlog-log-slower-than", threshold_us)
    admin.config_set("slowlog-max-len", 100_000)
    admin.slowlog_reset()
    admin.config_resetstat()
    return {k: v for k, v in saved.items()
            if k in ("slowlog-log-slower-than", "slowlog-max-len")}


def _slowlog_restore(admin: Any, saved: dict[str, str]) -> None:
    for key, value in saved.items():
        admin.config_set(key, value)
    admin.slowlog_reset()


def _promote_durations(admin: Any, sha: str) -> list[int]:
    """Server-side microseconds of every promote EVALSHA in the slowlog."""
    out = []
    for entry in admin.slowlog_get(100_000):
        command = entry.get("command", "")
        if isinstance(command, bytes):
            command = command.decode(errors="replace")
        if command.lower().startswith(f"evalsha {sha}"):
            out.append(int(entry["duration"]))
    return out


def _check_promoted(admin: Any, backlog: int) -> None:
    left = admin.zcard(app.broker.keys.scheduled)
    ready = admin.llen(app.broker.keys.ready("normal", "tick"))
    if left or ready != backlog:
        raise BenchError(f"after promotion: {left} still scheduled, {ready} ready of {backlog}")


def _promotion_result(broker: TimedBroker, backlog: int, batch: int, t0: float, done: float,
                      slow: list[int], evalsha: dict[str, Any], enqueue_s: float) -> Result:
    working = [c for c in broker.calls if c[2] > 0]
    first, last = working[0][0], working[-1][1]
    round_trips = [(end - start) for start, end, _ in working]
    return {
        "backlog": backlog, "batch": batch,
        "enqueue_per_s": backlog / enqueue_s,
        "promote_per_s": backlog / (last - first),
        "promote_per_s_incl_election": backlog / (done - t0),
        "seconds": last - first, "calls": len(broker.calls), "working_calls": len(working),
        "client_call_ms": distribution([r * 1000 for r in round_trips]),
        "server_call_ms": distribution([d / 1000 for d in slow]),
        "slowlog_entries": len(slow),
        "slowlog_complete": len(slow) >= len(working),
        "evalsha_usec_per_call": float(evalsha.get("usec_per_call", 0.0)),
        "evalsha_calls": int(evalsha.get("calls", 0)),
    }


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def print_lateness(results: Sequence[Result], concurrency: int) -> None:
    print(f"\na. delayed-job lateness through a master (pool {concurrency} x 1 thread, "
          "the scheduler child leading); ms")
    print(f"{'interval / phase':<30}{'n':>5}{'p50':>8}{'p99':>8}{'max':>8}{'min':>8}"
          f"{'claim p50':>11}{'claim p99':>11}")
    for res in results:
        print(f"  interval = {res['interval']!r}")
        for phase, label in (("spread", "spread (interleaved)"),
                             ("sooner", "due sooner than planned"), ("all", "all")):
            late, claim = res[phase]["start_minus_due_s"], res[phase]["claim_minus_due_s"]
            print(f"    {label:<26}{late['n']:>5}" +
                  "".join(f"{late[k] * 1000:>8.1f}" for k in ("p50", "p99", "max", "min")) +
                  f"{claim['p50'] * 1000:>11.1f}{claim['p99'] * 1000:>11.1f}")
    print("  lateness = the job's start time.time() - its due_at; claim = Redis' time when a "
          "child\n  fetched it - due_at")


def print_promotion(results: Sequence[Result]) -> None:
    backlog = results[0]["backlog"]
    print(f"\nb. promotion of a backlog of {backlog:,} due jobs (in-process Scheduler)")
    print(f"{'batch':>7}{'repeat':>7}{'jobs/s':>10}{'incl. election':>16}"
          f"{'server ms/call p50':>20}{'max':>7}{'logged':>9}{'client max ms':>15}")
    for res in results:
        s, c = res["server_call_ms"], res["client_call_ms"]
        logged = f"{res['slowlog_entries']}/{res['working_calls']}"
        print(f"{res['batch']:>7}{res['repeat']:>7}{res['promote_per_s']:>10,.0f}"
              f"{res['promote_per_s_incl_election']:>16,.0f}{s['p50']:>20.2f}{s['max']:>7.2f}"
              f"{logged:>9}{c['max']:>15.2f}")
    print("  server ms/call: a promote EVALSHA's own run time in Redis (SLOWLOG), i.e. how "
          "long\n  Redis serves nobody else per batch; logged: promote calls in the slowlog / "
          "calls that\n  promoted jobs; client: the call's round trip as the scheduler sees it")


def summarize_promotion(results: Sequence[Result]) -> dict[str, Result]:
    out: dict[str, Result] = {}
    for batch in sorted({r["batch"] for r in results}):
        runs = [r for r in results if r["batch"] == batch]
        out[str(batch)] = {
            "promote_per_s_median": median([r["promote_per_s"] for r in runs]),
            "promote_per_s_min": min(r["promote_per_s"] for r in runs),
            "server_call_ms_max": max(r["server_call_ms"]["max"] for r in runs),
            "client_call_ms_max": max(r["client_call_ms"]["max"] for r in runs),
        }
    return out


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"sections to run, comma-separated ({','.join(SECTIONS)})")
    parser.add_argument("--json", type=Path, help="write every sample here")
    parser.add_argument("--redis-server", help="redis-server binary (default: PATH)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per wait, seconds (60)")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temp dir (deployment files, master logs)")
    group = parser.add_argument_group("a. lateness")
    group.add_argument("--intervals", default="1s,5s", help="[scheduler] intervals (1s,5s)")
    group.add_argument("--concurrency", type=int, default=4, help="pool processes (4)")
    group.add_argument("--spread-jobs", type=int, default=200)
    group.add_argument("--spread-pace", type=float, default=0.01, help="s between enqueues")
    group.add_argument("--spread-min", type=float, default=0.2, help="delay, s (0.2)")
    group.add_argument("--spread-max", type=float, default=3.0, help="delay, s (3.0)")
    group.add_argument("--quiet", type=float, default=1.0,
                       help="idle pause before the 'sooner' phase, s (1.0)")
    group.add_argument("--anchor-delay", type=float, default=4.0,
                       help="delay of the job that sets the leader's planned wake-up (4.0)")
    group.add_argument("--sooner-jobs", type=int, default=100)
    group.add_argument("--sooner-pace", type=float, default=0.02)
    group.add_argument("--sooner-min", type=float, default=0.05, help="delay, s (0.05)")
    group.add_argument("--sooner-max", type=float, default=0.5, help="delay, s (0.5)")
    group = parser.add_argument_group("b. promotion")
    group.add_argument("--backlog", type=int, default=100_000, help="due jobs (100000)")
    group.add_argument("--backlog-delay", type=float, default=2.0,
                       help="their delay at enqueue, s (2.0)")
    group.add_argument("--batch", default="1000,250",
                       help="Scheduler batch size(s), comma-separated (1000,250; the "
                            "library's default is 500)")
    group.add_argument("--promote-repeat", type=int, default=3, help="repeats per batch (3)")
    group.add_argument("--slowlog-threshold-us", type=int, default=50,
                       help="slowlog-log-slower-than during promotion, us (50)")
    opts = parser.parse_args(argv)
    opts.only = chosen_sections(parser, opts.only, SECTIONS)
    opts.intervals = [s.strip() for s in opts.intervals.split(",") if s.strip()]
    opts.batch = [int(b) for b in opts.batch.split(",")]
    return opts


def run_sections(sess: Session, opts: argparse.Namespace) -> Result:
    results: Result = {}
    if "lateness" in opts.only:
        results["lateness"] = []
        for interval in opts.intervals:
            print(f"a. lateness at interval {interval} ...", flush=True)
            results["lateness"].append(measure_lateness(sess, opts, interval))
        print_lateness(results["lateness"], opts.concurrency)
    if "promote" in opts.only:
        runs = []
        for batch in opts.batch:
            for rep in range(opts.promote_repeat):
                print(f"\nb. promotion: batch {batch}, repeat {rep + 1} ...", end="", flush=True)
                result = measure_promotion(sess, opts, batch)
                result["repeat"] = rep + 1
                print(f" {result['promote_per_s']:,.0f} jobs/s", flush=True)
                runs.append(result)
        results["promote"] = {"runs": runs, "summary": summarize_promotion(runs)}
        print_promotion(runs)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("scheduler", "bananas-sched-bench-", NAMESPACE, parse_args(argv), app,
                    run_sections)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
