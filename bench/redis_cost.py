#!/usr/bin/env python3
"""Redis' own work per job, script by script, and the fetch cost against job types.

No consumer processes and no job bodies: one client in this process enqueues
N jobs, then drains them through one ``StepChannel`` (settle the previous job
and fetch the next, as a consumer slot does), and reads ``INFO commandstats``
after each phase. The figures are execution time inside Redis (microseconds
per job): the script call (``evalsha``, which includes the commands it runs)
and the commands the script ran, each counted on its own, as peers.py counts
them. Round trips and the client's own time are not in these figures.

    .venv/bin/python bench/redis_cost.py                       # N=5000, 3 repeats, all sections
    .venv/bin/python bench/redis_cost.py --only types --json out.json

Sections:
  costs   enqueue (single calls), enqueue_many (batches), drain by '*' consumers
  types   drain cost for a consumer serving 1, 10 and 100 of the 100 job types that
          hold jobs (its jobs the oldest, in one of them), and for a one-type and a '*'
          consumer while 1, 10, 100 and 1000 other job types hold jobs in Redis
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bananas_prefork import App  # noqa: E402
from bananas_prefork.core.broker import SUCCEEDED, Settlement, StepChannel  # noqa: E402
from bananas_prefork.core.embedded import RedisServer  # noqa: E402

Result = dict[str, Any]
SCRIPT_COMMANDS = ("eval", "evalsha", "fcall")


def usec_by_command(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()
            if not name.startswith(("cmdstat_info", "cmdstat_config"))}


def phase_cost(client: redis.Redis, n: int, action: Callable[[], None]) -> Result:
    """Run ``action`` between a CONFIG RESETSTAT and INFO commandstats; per-job figures."""
    client.config_resetstat()
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    stats = usec_by_command(client)
    script = sum(usec for name, (_, usec) in stats.items() if name in SCRIPT_COMMANDS)
    inner = sum(usec for name, (_, usec) in stats.items() if name not in SCRIPT_COMMANDS)
    calls = sum(c for name, (c, _) in stats.items() if name not in SCRIPT_COMMANDS)
    return {
        "script_us": script / n,
        "commands_us": inner / n,
        "total_us": (script + inner) / n,  # as peers.py counts a drain
        "commands_per_job": calls / n,
        "client_jobs_per_s": n / elapsed,
        "by_command": {name: round(calls / n, 3) for name, (calls, _) in
                       sorted(stats.items(), key=lambda kv: -kv[1][1])},
    }


def drain(app: App, n: int, owner: str, job_types: Sequence[str]) -> Callable[[], None]:
    """A slot's loop without a job body: settle the last job and fetch the next, n times."""

    def run() -> None:
        channel = app.broker.channel(owner, 0, ("high", "normal", "low"), job_types)
        settlement: Settlement | None = None
        done = 0
        try:
            while done < n:
                _, job = channel.step(settlement, True)
                if job is None:
                    raise RuntimeError(f"queue empty after {done} of {n} jobs")
                settlement = Settlement(SUCCEEDED, job, "null")
                done += 1
            step_last(channel, settlement)
        finally:
            channel.close()

    return run


def step_last(channel: StepChannel, settlement: Settlement | None) -> None:
    if settlement is not None:
        channel.step(settlement, False)


def fill(app: App, names: Sequence[str], n: int) -> None:
    """n jobs, round-robin over ``names``, in batches (not measured)."""
    for start in range(0, n, 1000):
        app.enqueue_many([(names[i % len(names)], [0.0, 0])
                          for i in range(start, min(n, start + 1000))])


def costs(app: App, admin: redis.Redis, n: int) -> Result:
    admin.flushall()
    out: Result = {}
    out["enqueue"] = phase_cost(admin, n, lambda: [app.enqueue("noop", args=[0.0, 0])
                                                    for _ in range(n)] and None)
    out["drain"] = phase_cost(admin, n, drain(app, n, "bench-owner-1", ("*",)))
    admin.flushall()

    def many() -> None:
        fill(app, ["noop"], n)

    out["enqueue_many"] = phase_cost(admin, n, many)
    admin.flushall()
    return out


def types_section(app: App, admin: redis.Redis, n: int) -> Result:
    out: Result = {"served": {}, "in_redis": {}}
    # 100 job types hold jobs; a consumer serves K of them. Its n jobs are all of the
    # first type and older than every other job, so for every K it pops from the same
    # list and the cost measured is that of choosing among its K types.
    names = [f"t{i:03d}" for i in range(100)]
    for k in (1, 10, 100):
        admin.flushall()
        fill(app, names[:1], n)
        fill(app, names[1:], 20 * 99)
        out["served"][str(k)] = phase_cost(admin, n, drain(app, n, f"typed-{k}", names[:k]))
    # A consumer of one type while T other types hold jobs it must not touch,
    # and a '*' consumer while T types hold jobs (it drains them all, oldest first).
    for t in (1, 10, 100, 1000):
        admin.flushall()
        others = [f"o{i:04d}" for i in range(t)]
        fill(app, others, max(t, 2000))
        fill(app, ["noop"], n)
        out["in_redis"][f"typed:{t}"] = phase_cost(admin, n, drain(app, n, f"one-{t}", ["noop"]))
        admin.flushall()
        fill(app, [*others, "noop"], n)
        out["in_redis"][f"any:{t}"] = phase_cost(admin, n, drain(app, n, f"any-{t}", ["*"]))
    admin.flushall()
    return out


def median_of(repeats: Sequence[Result]) -> Result:
    """The median of every numeric leaf across repeats (by_command from the last one)."""
    first = repeats[0]
    out: Result = {}
    for key, value in first.items():
        if isinstance(value, dict) and key != "by_command":
            out[key] = median_of([r[key] for r in repeats])
        elif isinstance(value, int | float):
            out[key] = statistics.median(r[key] for r in repeats)
            out[key + "_range"] = [min(r[key] for r in repeats), max(r[key] for r in repeats)]
        else:
            out[key] = repeats[-1][key]
    return out


def show(title: str, rows: dict[str, Result]) -> None:
    print(f"\n{title}")
    print(f"  {'case':<16}{'script us':>10}{'cmds us':>9}{'total us':>10}{'min total':>10}"
          f"{'cmds':>7}{'client/s':>10}")
    for name, r in rows.items():
        print(f"  {name:<16}{r['script_us']:>10.1f}{r['commands_us']:>9.1f}{r['total_us']:>10.1f}"
              f"{r['total_us_range'][0]:>10.1f}{r['commands_per_job']:>7.1f}"
              f"{r['client_jobs_per_s']:>10,.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="costs,types")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis-server", default=None)
    opts = parser.parse_args(argv)
    sections = set(opts.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bananas-redis-cost-") as tmp:
        server = RedisServer(Path(tmp) / "redis", binary=opts.redis_server,
                             appendonly=False).start()
        try:
            app = App(server.url, namespace="bench", result_ttl=3600)
            app.task(name="noop")(lambda *a: None)
            admin = redis.Redis.from_url(server.url)
            version = admin.info("server")["redis_version"]
            app.broker.load_scripts()
            result: Result = {"redis_version": version, "jobs": opts.jobs}
            if "costs" in sections:
                result["costs"] = median_of([costs(app, admin, opts.jobs)
                                             for _ in range(opts.repeat)])
                show(f"Redis us per job (redis {version}, N={opts.jobs}, median of "
                     f"{opts.repeat})", result["costs"])
            if "types" in sections:
                result["types"] = median_of([types_section(app, admin, opts.jobs)
                                             for _ in range(opts.repeat)])
                show("drain: a consumer serving K of the 100 types that hold jobs", {
                    f"K={k}": v for k, v in result["types"]["served"].items()})
                show("drain: T other types hold jobs in Redis", {
                    k: v for k, v in result["types"]["in_redis"].items()})
        finally:
            server.kill()
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
