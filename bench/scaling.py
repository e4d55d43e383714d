#!/usr/bin/env python3
"""Throughput through real masters as processes and threads grow.

Each case starts a master (``python -m bananas_prefork start FILE``, one pool,
scheduler off) on a queue filled beforehand, waits until the done counter in
db 15 reaches the number of jobs, and stops the master. Two job kinds, both
from bench/benchtasks.py: ``noop`` (one INCR, as peers.py) and ``io`` (sleeps
``--sleep`` seconds, then one INCR: an I/O-bound job). For ``io`` the
theoretical rate is processes x threads / sleep; the table shows the
steady-state rate (first job done -> last job done) and its share of that.

    .venv/bin/python bench/scaling.py                         # all cases, ~2 min
    .venv/bin/python bench/scaling.py --only threads --repeat 3 --json out.json

Sections: ``processes`` (1, 2, 4, 8 processes x 1 thread; noop and io),
``threads`` (1 process x 1, 4, 16 threads; io).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

from benchtasks import DONE_KEY, app  # noqa: E402
from harness import (  # noqa: E402
    BenchError,
    Result,
    Session,
    chosen_sections,
    deployment,
    run_main,
)

NAMESPACE = "benchscale"
SECTIONS = ("processes", "threads")


def fill(n: int, task: str, hold: float) -> None:
    args = [0.0, 0] if task == "noop" else [hold]
    for start in range(0, n, 1000):
        app.enqueue_many([(task, args)] * min(1000, n - start))


def drain(sess: Session, name: str, task: str, n: int, pool: dict[str, Any],
          hold: float) -> Result:
    """Queue n jobs, start a master with ``pool``, time the drain, stop it."""
    admin, counter = sess.admin(), sess.counter()
    admin.flushall()
    fill(n, task, hold)
    config = deployment("benchtasks:app", sess.url, NAMESPACE, {"bench": pool},
                        scheduler={"enabled": False})
    run = sess.master(f"{name}-{len(sess.masters)}", config,
                      env={"BANANAS_NAMESPACE": NAMESPACE})
    launched = run.start()
    first = None
    deadline = time.monotonic() + 300
    while True:
        done = int(counter.get(DONE_KEY) or 0)
        now = time.time()
        if done and first is None:
            first = now
        if done >= n:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: {done}/{n} jobs after 300 s:\n{run.tail()}")
        run.check_alive()
        time.sleep(0.005)
    run.stop()
    assert first is not None
    return {"jobs": n, "drain_per_s": n / (now - launched),
            "steady_per_s": (n - 1) / (now - first) if now > first else None,
            "startup_s": first - launched}


def case(sess: Session, opts: argparse.Namespace, task: str, processes: int,
         threads: int) -> Result:
    n = opts.jobs if task == "noop" else opts.io_jobs * processes * threads
    pool = {"concurrency": processes * threads, "threads": threads}
    runs = [drain(sess, f"{task}-{processes}x{threads}", task, n, pool, opts.sleep)
            for _ in range(opts.repeat)]
    out: Result = {"task": task, "processes": processes, "threads": threads,
                   "runs": runs}
    for key in ("drain_per_s", "steady_per_s", "startup_s"):
        out[key] = statistics.median(r[key] for r in runs)
    if task == "io":
        out["theoretical_per_s"] = processes * threads / opts.sleep
        out["share"] = out["steady_per_s"] / out["theoretical_per_s"]
    line = (f"  {task:<5}{processes:>4} x {threads:<3}"
            f"{out['drain_per_s']:>12,.0f}{out['steady_per_s']:>12,.0f}"
            f"{out['startup_s']:>10.2f}")
    if task == "io":
        line += f"{out['theoretical_per_s']:>12,.0f}{out['share'] * 100:>8.1f}%"
    print(line, flush=True)
    return out


def sections(sess: Session, opts: argparse.Namespace) -> Result:
    print(f"\n  {'job':<5}{'proc x thr':>10}{'drain/s':>12}{'steady/s':>12}"
          f"{'start s':>10}{'theory/s':>12}{'share':>9}")
    results: Result = {}
    if "processes" in opts.sections:
        results["processes"] = [case(sess, opts, task, p, 1) for task in ("noop", "io")
                                for p in (1, 2, 4, 8)]
    if "threads" in opts.sections:
        results["threads"] = [case(sess, opts, "io", 1, t) for t in (1, 4, 16)]
    print(f"\n  median of {opts.repeat}; noop N={opts.jobs}, io: {opts.io_jobs} jobs per slot "
          f"sleeping {opts.sleep * 1000:g} ms; steady = (N-1) / (first -> last job done)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10000, help="noop jobs per case")
    parser.add_argument("--io-jobs", type=int, default=100, help="io jobs per slot")
    parser.add_argument("--sleep", type=float, default=0.010, help="io job duration, s")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis-server", default=None)
    parser.add_argument("--keep-workdir", action="store_true")
    opts = parser.parse_args(argv)
    opts.sections = chosen_sections(parser, opts.only, SECTIONS)
    return run_main("scaling", "bananas-scaling-", NAMESPACE, opts, app, sections)


if __name__ == "__main__":
    raise SystemExit(main())
