#!/usr/bin/env python3
"""Speed of the core queue: enqueue rates, drain throughput, pickup latency, delayed lateness.

Everything runs against one private redis-server started here and killed by
its pid at exit (also on Ctrl-C, SIGTERM and errors). Consumers are separate
OS processes (bench/run_consumer.py, one thread each), each in its own
session, stopped by process group. The quantities and their method follow
../shared/bench/peers.py so that the numbers can be compared with it; see
bench/README.md.

    .venv/bin/python bench/core.py                      # N=10000, 3 repeats
    .venv/bin/python bench/core.py --jobs 5000 --repeat 1 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# Run as a script, only bench/ is on sys.path; the project is not necessarily installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from benchtasks import (  # noqa: E402
    COUNT_ONLY,
    DONE_KEY,
    LAT_KEY,
    RECORD_LATENCY,
    RECORD_START,
    STARTED_KEY,
    app,
    counter_url,
)

from bananas_prefork.core.embedded import RedisServer  # noqa: E402
from bananas_prefork.core.scheduler import Scheduler  # noqa: E402

NAMESPACE = "bench"
BATCH = 1000  # enqueue_many batch size
THREADS_PER_CONSUMER = 1  # one job at a time per process, as in peers.py
POLL_INTERVAL = 0.005  # the driver polls the done counter every 5 ms, as peers.py
SETTLE_PAUSE = 0.5  # after a drain, wait this long before checking for duplicate runs

Result = dict[str, Any]


class BenchError(Exception):
    """A benchmark step failed (timeout, a consumer died, wrong number of samples)."""


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

class Procs:
    """Consumer processes we started, each its own process group; stopped by that group."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []
        self.log_of: dict[int, Path] = {}  # pid -> its stdout/stderr log
        self.spawned = 0

    def spawn(self, argv: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.live.append(proc)
        self.log_of[proc.pid] = log
        self.spawned += 1
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> float:
        """SIGTERM the group, SIGKILL it after ``grace`` s; returns seconds taken."""
        started = time.perf_counter()
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        if proc in self.live:
            self.live.remove(proc)
        return time.perf_counter() - started

    def stop_all(self, grace: float = 2.0) -> None:
        for proc in list(self.live):
            self.stop(proc, grace)


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    # Only while the leader is unreaped: its pid (= the group id) cannot be reused yet.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"


# ---------------------------------------------------------------------------
# The driver's view of Redis
# ---------------------------------------------------------------------------

@dataclass
class Bench:
    """Everything one run needs: options, the server, our clients and children."""

    opts: argparse.Namespace
    server: RedisServer
    procs: Procs
    logs: Path
    admin: redis.Redis  # db 0: FLUSHALL, CONFIG RESETSTAT, INFO
    counter: redis.Redis  # db 15: the jobs' completion counter and samples
    env: dict[str, str]  # for consumer processes

    def flush(self) -> None:
        self.admin.flushall()

    def done(self) -> int:
        value = self.counter.get(DONE_KEY)
        return int(value) if value else 0

    def reset_counter(self, *sample_keys: str) -> None:
        self.counter.set(DONE_KEY, 0)
        if sample_keys:
            self.counter.delete(*sample_keys)

    def wait_done(self, target: int, t0: float,
                  workers: Sequence[subprocess.Popen[bytes]]) -> tuple[float, float, int]:
        """Poll the counter every 5 ms until it reaches ``target``.

        Returns (first job done, last job done, number of polls), perf_counter
        times. Fails fast when a consumer exits or the step times out.
        """
        first: float | None = None
        polls = 0
        while True:
            count = self.done()
            polls += 1
            now = time.perf_counter()
            if count >= 1 and first is None:
                first = now
            if count >= target:
                return first if first is not None else now, now, polls
            if now - t0 > self.opts.timeout:
                raise BenchError(f"timeout: {count}/{target} jobs done after {now - t0:.0f}s")
            for worker in workers:
                if worker.poll() is not None:
                    raise BenchError(f"consumer {worker.pid} exited early "
                                     f"(rc={worker.returncode}, {count}/{target} done):\n"
                                     + tail(self.procs.log_of[worker.pid]))
            time.sleep(POLL_INTERVAL)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since CONFIG RESETSTAT, all dbs, Lua-called ones included."""
        stats = self.admin.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(value["calls"])
                 for name, value in stats.items()}
        return {name: n for name, n in calls.items()
                if not name.startswith(("info", "config"))}

    def spawn_consumer(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, str(BENCH_DIR / "run_consumer.py"), str(THREADS_PER_CONSUMER)]
        return self.procs.spawn(argv, self.logs / f"consumer-{self.procs.spawned + 1}.log",
                                self.env)


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, the same definition as peers.py."""
    k = math.ceil(q * len(sorted_values) - 1e-9) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def paced(interval: float) -> Callable[[int], None]:
    """A pacer: ``wait(i)`` sleeps until the i-th slot, ``interval`` s apart from now+50 ms."""
    start = time.time() + 0.05

    def wait(i: int) -> None:
        pause = start + i * interval - time.time()
        if pause > 0:
            time.sleep(pause)

    return wait


# ---------------------------------------------------------------------------
# 1-2. Enqueue rates (no consumers running)
# ---------------------------------------------------------------------------

def measure_enqueue(bench: Bench) -> Result:
    """Client cost per job: one call per job, then enqueue_many in batches and in one batch."""
    n = bench.opts.jobs
    bench.flush()
    app.enqueue("noop", args=[0.0, COUNT_ONLY])  # untimed: connection, first script call
    t0 = time.perf_counter()
    for _ in range(n - 1):
        app.enqueue("noop", args=[0.0, COUNT_ONLY])
    out: Result = {"enqueue_per_s": (n - 1) / (time.perf_counter() - t0)}
    check_queued(n)
    for key, batch in (("enqueue_many_per_s", BATCH), ("enqueue_one_batch_per_s", n)):
        bench.flush()
        out[key] = timed_enqueue_many(n, batch)
        check_queued(n)
    bench.flush()
    return out


def timed_enqueue_many(n: int, batch: int) -> float:
    """Jobs/s of enqueue_many for N jobs; the first job goes alone, untimed (as peers.py)."""
    app.enqueue_many([("noop", [0.0, COUNT_ONLY])])
    remaining = n - 1
    t0 = time.perf_counter()
    while remaining > 0:
        size = min(batch, remaining)
        app.enqueue_many([("noop", [0.0, COUNT_ONLY]) for _ in range(size)])
        remaining -= size
    return (n - 1) / (time.perf_counter() - t0)


def check_queued(n: int) -> None:
    queued = app.queue_depths()["normal"].get("noop", 0)
    if queued != n:
        raise BenchError(f"expected {n} queued jobs after enqueueing, found {queued}")


def fill(n: int) -> None:
    """Queue N drain jobs quickly (the fill is not what is measured)."""
    for start in range(0, n, BATCH):
        app.enqueue_many([("noop", [0.0, COUNT_ONLY]) for _ in range(min(BATCH, n - start))])


# ---------------------------------------------------------------------------
# 3-5. Drain, pickup latency and delayed lateness with K consumer processes
# ---------------------------------------------------------------------------

def measure_consumers(bench: Bench, count: int) -> Result:
    """Drain N queued jobs with ``count`` fresh consumers, then measure them idle."""
    n = bench.opts.jobs
    bench.flush()
    fill(n)
    if bench.done() != 0:
        raise BenchError("jobs ran before the consumers were started")
    workers: list[subprocess.Popen[bytes]] = []
    out: Result = {}
    try:
        bench.admin.config_resetstat()
        t0 = time.perf_counter()
        workers = [bench.spawn_consumer() for _ in range(count)]
        first, last, polls = bench.wait_done(n, t0, workers)
        out.update(commands_per_job(bench.command_calls(), n, polls))
        out.update(startup_s=first - t0, drain_s=last - t0, drain_per_s=n / (last - t0),
                   drain_after_first_per_s=(n - 1) / (last - first) if last > first else None)
        time.sleep(SETTLE_PAUSE)
        out["extra_runs"] = bench.done() - n  # > 0 would mean duplicate execution
        out.update(pickup_latency(bench, workers))
        out.update(delayed_lateness(bench, workers))
    finally:
        shutdown = [bench.procs.stop(worker) for worker in workers]
    out["shutdown_s"] = max(shutdown)
    out["dead_jobs"] = app.broker.counts()["dead"]
    bench.flush()
    return out


def commands_per_job(calls: dict[str, int], n: int, polls: int) -> Result:
    """Redis commands per drained job, minus the driver's GET polls and the jobs' INCRs.

    redis-py's ``incr()`` sends INCRBY, so that is where the jobs' completions are
    (peers.py subtracts "incr" instead, so its figures are 1.0 higher; see README).
    """
    calls = dict(calls)
    calls["get"] = calls.get("get", 0) - polls
    calls["incrby"] = calls.get("incrby", 0) - n
    calls = {name: c for name, c in calls.items() if c > 0}
    return {"redis_cmds_per_job": sum(calls.values()) / n,
            "redis_cmds": {name: round(c / n, 3)
                           for name, c in sorted(calls.items(), key=lambda kv: -kv[1])}}


def pickup_latency(bench: Bench, workers: Sequence[subprocess.Popen[bytes]]) -> Result:
    """Idle consumers: enqueue-to-start delay of jobs enqueued one by one, 10 ms apart."""
    m = bench.opts.latency_jobs
    bench.reset_counter(LAT_KEY)
    app.enqueue("noop", args=[0.0, COUNT_ONLY])  # warm-up job, not recorded (as peers.py)
    wait = paced(bench.opts.latency_interval)
    for i in range(m):
        wait(i)
        app.enqueue("noop", args=[time.time(), RECORD_LATENCY])
    bench.wait_done(m + 1, time.perf_counter(), workers)
    samples = sorted(float(x) * 1000.0 for x in bench.counter.lrange(LAT_KEY, 0, -1))
    if len(samples) != m:
        raise BenchError(f"expected {m} latency samples, got {len(samples)}")
    return {"pickup_p50_ms": nearest_rank(samples, 0.50),
            "pickup_p99_ms": nearest_rank(samples, 0.99), "pickup_max_ms": samples[-1]}


def delayed_lateness(bench: Bench, workers: Sequence[subprocess.Popen[bytes]]) -> Result:
    """Start time minus due time of delayed jobs, promoted by a Scheduler in a thread.

    Jobs are enqueued 10 ms apart with a delay of 0.5 s plus a random spread,
    so due times interleave and the "due sooner" wake-up path is exercised.
    """
    opts = bench.opts
    bench.reset_counter(STARTED_KEY)
    rng = random.Random(1)
    scheduler = Scheduler(app.broker, interval=1.0)
    thread = threading.Thread(target=scheduler.run, name="bench-scheduler", daemon=True)
    thread.start()
    try:
        wait_for(lambda: scheduler.is_leader, 5.0, "the scheduler did not become leader")
        wait = paced(opts.latency_interval)
        ids = []
        for i in range(opts.delayed_jobs):
            wait(i)
            delay = opts.delay + rng.uniform(0.0, opts.delay_spread)
            ids.append(app.enqueue("noop", args=[0.0, RECORD_START], delay=delay))
        bench.wait_done(opts.delayed_jobs, time.perf_counter(), workers)
    finally:
        scheduler.stop()
        thread.join(5.0)
    started = bench.counter.hgetall(STARTED_KEY)
    if len(started) != len(ids):
        raise BenchError(f"expected {len(ids)} delayed start times, got {len(started)}")
    samples = sorted((float(started[job_id]) - due_at(job_id)) * 1000.0 for job_id in ids)
    return {"delayed_p50_ms": nearest_rank(samples, 0.50),
            "delayed_p99_ms": nearest_rank(samples, 0.99), "delayed_max_ms": samples[-1],
            "delayed_min_ms": samples[0]}


def due_at(job_id: str) -> float:
    """When the job was due, in Redis' clock (the same machine clock as time.time())."""
    info = app.job(job_id)
    if info is None or info.due_at is None:
        raise BenchError(f"delayed job {job_id} has no record or no due_at")
    return info.due_at


def wait_for(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(message)
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# Repeats, summary, output
# ---------------------------------------------------------------------------

def group_name(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def run_repeat(bench: Bench) -> dict[str, Result]:
    """One repeat: enqueue rates, then each consumer count on a fresh queue."""
    out = {"enqueue": measure_enqueue(bench)}
    for count in bench.opts.consumers:
        out[group_name(count)] = measure_consumers(bench, count)
    return out


def summarize(repeats: Sequence[dict[str, Result]]) -> dict[str, dict[str, Result]]:
    """Median, min, max and spread ((max-min)/median) of every numeric metric."""
    summary: dict[str, dict[str, Result]] = {}
    for group in repeats[0]:
        for key in repeats[0][group]:
            values = [r[group][key] for r in repeats
                      if isinstance(r[group].get(key), int | float)]
            if not values:
                continue
            median = statistics.median(values)
            summary.setdefault(group, {})[key] = {
                "median": median, "min": min(values), "max": max(values),
                "spread_pct": (max(values) - min(values)) / median * 100.0 if median else 0.0}
    return summary


ENQUEUE_ROWS = [
    ("enqueue_per_s", "enqueue/s  app.enqueue, 1 call per job", 0),
    ("enqueue_many_per_s", f"enqueue/s  enqueue_many, batches of {BATCH}", 0),
    ("enqueue_one_batch_per_s", "enqueue/s  enqueue_many, one batch of N", 0),
]
CONSUMER_ROWS = [
    ("drain_per_s", "drain jobs/s  (launch -> last job)", 0),
    ("drain_after_first_per_s", "drain jobs/s  after the first job", 0),
    ("startup_s", "startup s  (launch -> first job)", 2),
    ("redis_cmds_per_job", "redis commands per job", 1),
    ("pickup_p50_ms", "idle pickup p50 ms", 1),
    ("pickup_p99_ms", "idle pickup p99 ms", 1),
    ("delayed_p50_ms", "delayed lateness p50 ms", 1),
    ("delayed_p99_ms", "delayed lateness p99 ms", 1),
]


def fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def print_table(summary: dict[str, dict[str, Result]], info: Result, repeats: int) -> None:
    print()
    print("bananas-prefork core: N=%(jobs)d, %(repeat)d repeat(s), redis %(redis_version)s "
          "(appendonly %(appendonly)s), Python %(python)s, %(cpus)s CPUs" % info)
    header = f"{'metric':<44} {'median':>10} {'spread':>7} {'min':>10} {'max':>10}"
    print(header)
    print("-" * len(header))
    for group, stats in summary.items():
        rows = ENQUEUE_ROWS if group == "enqueue" else CONSUMER_ROWS
        if group != "enqueue":
            print(f"{group} x {THREADS_PER_CONSUMER} thread:")
        for key, label, digits in rows:
            if key not in stats:
                continue
            s = stats[key]
            spread = f"{s['spread_pct']:.0f}%" if repeats > 1 else "-"
            print(f"{'  ' + label:<44} {fmt(s['median'], digits):>10} {spread:>7} "
                  f"{fmt(s['min'], digits):>10} {fmt(s['max'], digits):>10}")
    print("spread = (max - min) / median over the repeats; compare ratios within one run.")


def machine_info(bench: Bench) -> Result:
    return {
        "jobs": bench.opts.jobs, "repeat": bench.opts.repeat,
        "redis_version": bench.admin.info("server")["redis_version"],
        "appendonly": "yes" if bench.opts.appendonly else "no",
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "latency_jobs": bench.opts.latency_jobs,
        "latency_interval_s": bench.opts.latency_interval,
        "delayed_jobs": bench.opts.delayed_jobs, "delay_s": bench.opts.delay,
        "delay_spread_s": bench.opts.delay_spread,
        "consumers": bench.opts.consumers, "threads_per_consumer": THREADS_PER_CONSUMER,
    }


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10000, help="N jobs per step (10000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (3); medians are shown")
    parser.add_argument("--json", type=Path, help="write every repeat and the summary here")
    parser.add_argument("--redis-server", help="redis-server binary (default: PATH)")
    parser.add_argument("--consumers", default="1,2",
                        help="consumer process counts to drain with (1,2)")
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--latency-interval", type=float, default=0.01,
                        help="seconds between latency (and delayed) enqueues (0.01)")
    parser.add_argument("--delayed-jobs", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.5, help="delayed jobs' delay (0.5)")
    parser.add_argument("--delay-spread", type=float, default=0.05,
                        help="random extra delay, uniform in [0, this] (0.05)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per step, seconds")
    parser.add_argument("--appendonly", action="store_true",
                        help="AOF on (everysec); off by default, like peers.py's server")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temp dir with redis data and consumer logs")
    opts = parser.parse_args(argv)
    opts.consumers = [int(c) for c in opts.consumers.split(",")]
    if opts.jobs < 2 or opts.repeat < 1 or min(opts.consumers) < 1:
        parser.error("--jobs must be >= 2, --repeat and --consumers >= 1")
    return opts


def open_bench(opts: argparse.Namespace, server: RedisServer, procs: Procs,
               workdir: Path) -> Bench:
    """Point the app at the server, load the scripts, prepare the consumers' environment."""
    app.configure(redis_url=server.url, namespace=NAMESPACE)
    app.broker.load_scripts()  # so no drain pays for a first SCRIPT LOAD
    logs = workdir / "logs"
    logs.mkdir()
    env = dict(os.environ)
    env.update(BANANAS_REDIS_URL=server.url, BANANAS_NAMESPACE=NAMESPACE,
               BENCH_COUNTER_URL=counter_url(server.url), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(BENCH_DIR),
                                                        env.get("PYTHONPATH")])))
    counter = redis.Redis.from_url(counter_url(server.url), decode_responses=True)
    counter.ping()  # connect now, before any CONFIG RESETSTAT
    return Bench(opts=opts, server=server, procs=procs, logs=logs,
                 admin=redis.Redis.from_url(server.url, decode_responses=True),
                 counter=counter, env=env)


def run(bench: Bench) -> list[dict[str, Result]]:
    repeats: list[dict[str, Result]] = []
    for rep in range(bench.opts.repeat):
        print(f"repeat {rep + 1}/{bench.opts.repeat} (N={bench.opts.jobs}) ...", end="",
              flush=True)
        t0 = time.perf_counter()
        try:
            result = run_repeat(bench)
        except BenchError:
            print(" FAILED")
            raise
        drains = ", ".join(f"{g} {r['drain_per_s']:,.0f}/s" for g, r in result.items()
                           if "drain_per_s" in r)
        print(f" {time.perf_counter() - t0:.1f}s  enqueue "
              f"{result['enqueue']['enqueue_per_s']:,.0f}/s, drain {drains}", flush=True)
        warn_anomalies(result)
        repeats.append(result)
    return repeats


def warn_anomalies(result: dict[str, Result]) -> None:
    for group, values in result.items():
        if values.get("extra_runs"):
            print(f"  WARNING {group}: {values['extra_runs']} duplicate runs", file=sys.stderr)
        if values.get("dead_jobs"):
            print(f"  WARNING {group}: {values['dead_jobs']} dead jobs", file=sys.stderr)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that kills our children


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="bananas-core-bench-"))
    procs = Procs()
    server = RedisServer(workdir / "redis", binary=opts.redis_server,
                         appendonly=opts.appendonly)
    repeats: list[dict[str, Result]] = []
    try:
        server.start()
        bench = open_bench(opts, server, procs, workdir)
        info = machine_info(bench)
        try:
            repeats = run(bench)
        except BenchError as exc:
            print(str(exc), file=sys.stderr)
        if repeats:
            summary = summarize(repeats)
            info["repeat"] = len(repeats)
            print_table(summary, info, len(repeats))
            if opts.json:
                opts.json.write_text(json.dumps(
                    {"machine": info, "argv": sys.argv, "summary": summary,
                     "repeats": repeats}, indent=2) + "\n")
                print(f"wrote {opts.json}")
        return 0 if len(repeats) == opts.repeat else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        server.kill()
        if opts.keep_workdir:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
