"""Soak: a real master under a steady, mixed load for several times every retention.

The load leaves every kind of trace a job can leave: notes of jobs with nothing
to keep, results, retries, dead letters (beyond ``dead_max``), delayed jobs,
caller-given ids, a periodic entry, a consumer group, a new job type every
second (nobody has its task: dead at once, its queue to be pruned) and children
recycled every few hundred jobs (new owners). Redis' ``used_memory`` and key
count must level off while the load goes on, and what the jobs left must go
once it stops.

The CI profile runs for ``$BANANAS_SOAK_SECONDS`` (45) with retentions of a
tenth of that; ``scripts/soak`` runs a longer one and prints the samples.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.embedded import RedisServer
from bananas_prefork.core.keys import Keys
from tests.helpers import wait_until
from tests.masters import MasterFactory

SECONDS = float(os.environ.get("BANANAS_SOAK_SECONDS", "45"))
RATE = float(os.environ.get("BANANAS_SOAK_RATE", "200"))  # jobs enqueued per second
RETENTION = max(3.0, round(SECONDS / 10))  # result, done and dead ttl; prune interval
DEAD_MAX = 20  # below what dead_ttl alone would keep, so the cap is what holds
# Every retention has passed at least once after this long: a note lives up to 1.2 x
# done_ttl plus its slice, a queue goes after two prune looks, a group after 10 min
# (not reached: its consumers keep it).
WARM_UP = 1.2 * RETENTION + 1 + 2 * RETENTION + 2

pytestmark = pytest.mark.timeout(SECONDS + 240)

CONFIG = f"""
app = "tests.apps.soak:app"
shutdown_timeout = "10s"
result_ttl = "{RETENTION}s"
done_ttl = "{RETENTION}s"
dead_ttl = "{RETENTION}s"
dead_max = {DEAD_MAX}

[scheduler]
interval = "1s"
prune_interval = "{RETENTION}s"

[[periodic]]
task = "nothing"
every = "1s"

[pools.all]
concurrency = 4
threads = 2
max_jobs_per_child = 500

[pools.pair]
mode = "job-specialized"
job_types = ["answer", "quiet"]
concurrency = 2
threads = 2
"""


@dataclass
class Sample:
    at: float  # seconds since the load started
    used_memory: int
    keys: int
    enqueued: int
    dead: int


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of the soak's own: its memory and key count are the soak's alone."""
    binary = os.environ.get("BANANAS_TEST_REDIS_SERVER") or None
    server = RedisServer(tmp_path_factory.mktemp("redis-soak"), binary=binary).start()
    yield server
    server.kill()


def batch(second: int, tick: int, size: int) -> list[tuple[Any, ...]]:
    """One tenth of a second's jobs: mostly nothing to keep, some results, failures,
    delayed jobs and caller-given ids."""
    items: list[tuple[Any, ...]] = []
    for n in range(size):
        kind = n % 20
        if kind < 10:
            items.append(("nothing", [n]))
        elif kind < 14:
            items.append(("answer", [n]))
        elif kind < 16:
            items.append(("quiet", [n]))
        elif kind == 16:
            items.append(("fails", [n]))
        elif kind == 17:
            items.append(("nothing", [n], {}, {"delay": 0.5}))
        else:
            items.append(("nothing", [n], {}, {"job_id": f"soak-{second}-{tick}-{n}"}))
    if tick == 0:
        items.append((f"oneoff.{second}", []))  # a new job type every second
    return items


def load(app: App, stop: threading.Event, counts: dict[str, int]) -> None:
    size = max(1, round(RATE / 10))
    started = time.monotonic()
    tick = 0
    while not stop.is_set():
        second, part = divmod(tick, 10)
        counts["enqueued"] += len(app.enqueue_many(batch(second, part, size)))
        tick += 1
        stop.wait(max(0.0, started + tick / 10 - time.monotonic()))


def print_samples(samples: list[Sample]) -> None:
    print(f"\nsoak: {SECONDS:.0f} s at {RATE:.0f} jobs/s, retentions {RETENTION:.0f} s, "
          f"warm-up {WARM_UP:.0f} s")
    print(f"{'t (s)':>6} {'used_memory':>12} {'keys':>6} {'enqueued':>9} {'dead':>5}")
    for s in samples:
        print(f"{s.at:6.1f} {s.used_memory:12,d} {s.keys:6d} {s.enqueued:9d} {s.dead:5d}")


def test_redis_levels_off_under_sustained_load(server: RedisServer, tmp_path: Path,
                                               namespace: str) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    keys = Keys(namespace)
    masters = MasterFactory(tmp_path, server.url, namespace)
    app = App(server.url, namespace=namespace)
    stop, counts = threading.Event(), {"enqueued": 0}
    samples: list[Sample] = []
    try:
        master = masters(CONFIG)
        loader = threading.Thread(target=load, args=(app, stop, counts), daemon=True)
        started = time.monotonic()
        loader.start()
        while (elapsed := time.monotonic() - started) < SECONDS:
            samples.append(Sample(elapsed, int(client.info("memory")["used_memory"]),
                                  client.dbsize(), counts["enqueued"],
                                  client.zcard(keys.dead)))
            time.sleep(max(0.0, len(samples) - (time.monotonic() - started)))
        stop.set()
        loader.join(10)
        print_samples(samples)

        # While the load went on: the second half of the steady state is no bigger
        # than the first. Medians, as a client's buffers come and go; a leak of a key,
        # or of about 35 bytes, per job would show.
        steady = [s for s in samples if s.at >= WARM_UP]
        assert len(steady) >= 10, "the soak is too short for its warm-up"
        first, second = steady[:len(steady) // 2], steady[len(steady) // 2:]
        assert max(s.keys for s in second) <= 1.25 * max(s.keys for s in first) + 50
        growth = (statistics.median(s.used_memory for s in second)
                  - statistics.median(s.used_memory for s in first))
        jobs = statistics.median(s.enqueued for s in second) - statistics.median(
            s.enqueued for s in first)
        assert growth <= 96 * 1024, f"{growth:.0f} bytes more for {jobs:.0f} jobs more"
        assert max(s.dead for s in samples) == DEAD_MAX

        # Once it stops: every job ended, and what they left goes with its retention.
        def drained() -> bool:
            depths = app.queue_depths()
            counts = app.broker.counts()
            return (not any(n for types in depths.values() for n in types.values())
                    and counts["scheduled"] == counts["in_flight"] == 0)

        wait_until(drained, timeout=30, interval=0.2, message="the queues drained")
        wait_until(lambda: client.scard(keys.queues) <= 4, timeout=3 * RETENTION + 10,
                   interval=0.5, message="one-off queues pruned")
        assert client.hlen(keys.group_types) == 1  # the pair pool's group only
        assert client.zcard(keys.nodes) == 1
        assert client.scard(keys.owners) <= 4 + 2 + 1  # the live children's slots
        master.send(signal.SIGTERM)  # no more periodic jobs
        assert master.wait_exit() == 0

        def left() -> list[str]:
            return sorted(k for k in client.scan_iter(f"{keys.prefix}:*")
                          if k.split(":")[1] in ("job", "done", "ready") and k != keys.done_index)

        wait_until(lambda: not left(), timeout=WARM_UP + 10, interval=0.5,
                   message="finished jobs' traces expired")
        assert client.zcard(keys.dead) <= DEAD_MAX  # dead letters stay, capped
    finally:
        stop.set()
        for master in masters.started:
            master.stop()
        client.close()
