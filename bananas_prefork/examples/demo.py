"""A load generator for the demo app: a steady, realistic mix of jobs.

    python -m bananas_prefork.examples.demo --rate 50 --duration 60

Jobs are enqueued by task name in one round trip per tick
(``app.enqueue_many``), so the pools that run them may be on any machine. Most jobs take
their task's default priority; some are sent with another one (a weekly digest
email is not urgent, an on-demand report is) and some with a ``delay``, so the
scheduler has work too. One line per second shows what was sent and what is
waiting. Ctrl-C or SIGTERM stops it cleanly after the current tick.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import redis

from bananas_prefork.core.app import App
from bananas_prefork.core.connection import redact
from bananas_prefork.core.keys import PRIORITIES
from bananas_prefork.examples.tasks import app as demo_app

TICK = 0.1  # seconds between batches: smooth load without a round trip per job
DELAYED_SHARE = 0.1  # of jobs sent with a delay of 1-10 s

Item = tuple[str, list[Any], dict[str, Any], dict[str, Any]]
SOURCES = ("crm", "billing", "inventory", "weather", "exchange-rates")


def _email(rng: random.Random) -> Item:
    to = f"user{rng.randrange(100_000)}@example.com"
    if rng.random() < 0.8:  # transactional: the task's default, high
        return "send_email", [to], {"subject": "Your receipt"}, {}
    return "send_email", [to], {"subject": "Weekly digest"}, {"priority": "low"}


def _fetch(rng: random.Random) -> Item:
    priority = {"priority": "high"} if rng.random() < 0.1 else {}  # a user clicked "refresh"
    return "fetch_data", [rng.choice(SOURCES)], {"page": rng.randint(1, 20)}, priority


def _images(rng: random.Random) -> Item:
    return "process_images", [rng.randrange(1_000_000)], {}, {}


def _analytics(rng: random.Random) -> Item:
    priority = {"priority": "low"} if rng.random() < 0.5 else {}  # nightly backfill
    return "process_analytics", [], {"events": rng.choice((2_000, 5_000, 10_000))}, priority


def _report(rng: random.Random) -> Item:
    priority = {"priority": "normal"} if rng.random() < 0.2 else {}  # requested on demand
    return "generate_report", [rng.randrange(1_000_000)], {}, priority


MIX: tuple[tuple[Callable[[random.Random], Item], int], ...] = (
    (_email, 35), (_fetch, 25), (_images, 15), (_analytics, 15), (_report, 10))


def make_batch(rng: random.Random, size: int) -> list[Item]:
    """``size`` jobs drawn from the weighted mix, some of them delayed."""
    factories = rng.choices([f for f, _ in MIX], weights=[w for _, w in MIX], k=size)
    batch = []
    for factory in factories:
        name, args, kwargs, options = factory(rng)
        if rng.random() < DELAYED_SHARE:
            options = {**options, "delay": round(rng.uniform(1.0, 10.0), 1)}
        batch.append((name, args, kwargs, options))
    return batch


def summary(app: App, second: int, sent_now: int, sent_total: int) -> str:
    """One status line: what this second sent, what waits, what runs."""
    depths = app.queue_depths()
    counts = app.broker.counts()
    waiting = ", ".join(f"{p} {sum(depths.get(p, {}).values())}" for p in PRIORITIES)
    return (f"[{second:4d}s] +{sent_now} jobs ({sent_total} total) | waiting {waiting} | "
            f"scheduled {counts['scheduled']}, running {counts['in_flight']}, "
            f"dead {counts['dead']}")


def run(app: App, rate: float, duration: float | None, rng: random.Random,
        stop: threading.Event, out: TextIO = sys.stdout) -> Counter[str]:
    """Enqueue ``rate`` jobs a second until ``duration`` passes or ``stop`` is set."""
    sent: Counter[str] = Counter()
    start = time.monotonic()
    reported = (0, 0)  # (second, total) of the last summary line
    while True:
        elapsed = time.monotonic() - start
        if duration is not None:
            elapsed = min(elapsed, duration)
        due = int(rate * elapsed) - sent.total()
        if due > 0:
            batch = make_batch(rng, due)
            app.enqueue_many(batch)
            sent.update(name for name, *_ in batch)
        if int(elapsed) > reported[0]:
            print(summary(app, int(elapsed), sent.total() - reported[1], sent.total()),
                  file=out, flush=True)
            reported = (int(elapsed), sent.total())
        if stop.is_set() or (duration is not None and elapsed >= duration):
            return sent
        stop.wait(TICK)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` instead of interrupting a round trip mid-way."""
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bananas_prefork.examples.demo",
        description="Enqueue a realistic mix of demo jobs (see bananas_prefork.examples.tasks).")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="jobs per second (default 20)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds to run (default: until Ctrl-C or SIGTERM)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="Redis URL (default: BANANAS_REDIS_URL, BANANAS_REDIS_URL_FILE, "
                             "REDIS_URL, then the local default); a URL with a password is "
                             "better given in the environment, where ps does not show it")
    parser.add_argument("--namespace", default=os.environ.get("BANANAS_NAMESPACE", "bananas"),
                        help="key namespace (default: BANANAS_NAMESPACE, else bananas)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed, for a reproducible sequence of jobs")
    args = parser.parse_args(argv)
    if args.rate <= 0 or (args.duration is not None and args.duration <= 0):
        parser.error("--rate and --duration must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load generator; 0 when it stopped as asked, 1 if Redis is unreachable."""
    args = parse_args(argv)
    demo_app.configure(redis_url=args.redis, namespace=args.namespace)
    stop = threading.Event()
    print(f"enqueueing {args.rate:g} jobs/s into {redact(demo_app.redis_url)} "
          f"(namespace {demo_app.namespace}); Ctrl-C to stop", flush=True)
    started = time.monotonic()
    try:
        with stop_on_signals(stop):
            sent = run(demo_app, args.rate, args.duration, random.Random(args.seed), stop)
    except redis.RedisError as exc:
        print(f"demo: cannot reach Redis at {redact(demo_app.redis_url)}: {exc}",
              file=sys.stderr)
        return 1
    by_type = ", ".join(f"{name} {count}" for name, count in sent.most_common())
    print(f"enqueued {sent.total()} jobs in {time.monotonic() - started:.1f}s"
          + (f": {by_type}" if by_type else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
