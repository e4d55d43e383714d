"""What ``min_replicas_ack = 1`` costs: enqueue and drain rates with and without WAIT.

A private primary and one replica on loopback (AOF off, as in ``core.py``), rounds
alternating the two settings so that a busy machine weighs on both alike:

- enqueue/s: one thread, ``app.enqueue`` of one job at a time (the first call untimed);
- drain jobs/s: the jobs queued first, then 2 consumer processes of 2 threads
  (``run_consumer.py``), from the first job done until the counter reaches the
  number of jobs (steady state: process start-up left out).

usage: python bench/replicas_ack.py [--jobs 2000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bananas_prefork import App
from bananas_prefork.core.embedded import RedisServer, free_port

BENCH = Path(__file__).resolve().parent


def start_pair(tmp: Path) -> tuple[RedisServer, RedisServer]:
    primary = RedisServer(tmp / "primary", port=free_port(), appendonly=False).start()
    replica = RedisServer(tmp / "replica", port=free_port(), appendonly=False,
                          extra_config=f"replicaof 127.0.0.1 {primary.port}\n").start()
    with redis.Redis(port=replica.port, decode_responses=True) as client:
        deadline = time.monotonic() + 20
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not connect")
            time.sleep(0.05)
    return primary, replica


def one_round(primary: RedisServer, ack: int, jobs: int, tag: str) -> tuple[float, float]:
    namespace = f"wait{ack}{tag}"
    app = App(primary.url, namespace=namespace, min_replicas_ack=ack)
    app.enqueue("noop", args=[0.0, 0])
    started = time.perf_counter()
    for _ in range(jobs - 1):
        app.enqueue("noop", args=[0.0, 0])
    enqueue_rate = (jobs - 1) / (time.perf_counter() - started)
    counter = redis.Redis(port=primary.port, db=15)
    counter.delete("bench:done")
    env = dict(os.environ, BANANAS_REDIS_URL=primary.url, BANANAS_NAMESPACE=namespace,
               BANANAS_MIN_REPLICAS_ACK=str(ack),
               PYTHONPATH=os.pathsep.join([str(BENCH), str(BENCH.parent)]))
    consumers = [subprocess.Popen([sys.executable, str(BENCH / "run_consumer.py"), "2"],
                                  env=env, stdout=subprocess.DEVNULL, start_new_session=True)
                 for _ in range(2)]
    try:
        while not int(counter.get("bench:done") or 0):
            time.sleep(0.005)
        first, started = int(counter.get("bench:done") or 0), time.perf_counter()
        while int(counter.get("bench:done") or 0) < jobs:
            time.sleep(0.005)
        drain_rate = (jobs - first) / (time.perf_counter() - started)
    finally:
        for consumer in consumers:
            consumer.terminate()
        for consumer in consumers:
            consumer.wait(30)
        counter.close()
    return enqueue_rate, drain_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        primary, replica = start_pair(Path(tmp))
        try:
            rates: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
            for round_ in range(args.rounds):
                for ack in (0, 1):
                    rates[ack].append(one_round(primary, ack, args.jobs, str(round_)))
        finally:
            replica.kill()
            primary.kill()
    summary = {ack: {"enqueue_per_s": round(statistics.median(r[0] for r in runs)),
                     "drain_jobs_per_s": round(statistics.median(r[1] for r in runs)),
                     "runs": [[round(e), round(d)] for e, d in runs]}
               for ack, runs in rates.items()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print("min_replicas_ack  enqueue/s  drain jobs/s   (medians of "
          f"{args.rounds} rounds of {args.jobs} jobs)")
    for ack, row in summary.items():
        print(f"{ack:>16}  {row['enqueue_per_s']:>9}  {row['drain_jobs_per_s']:>12}")


if __name__ == "__main__":
    main()
