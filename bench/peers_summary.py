#!/usr/bin/env python3
"""The figures issue 12 asks for, from peers.py JSON files: each run's table with
bananas' ratios to Huey and its Redis execution time per job beside the
reliable peers' (Celery, Dramatiq).

    python3 bench/peers_summary.py bench/results/peers-issue12-run*.json

Redis execution time per job = ``redis_exec_us_enqueue`` (the enqueue phase:
script time when the peer uses scripts, else every command) +
``redis_exec_us_script`` + ``redis_exec_us_direct`` (the drain), as peers.py
counts them; one Redis core then carries at most 1,000,000 / that jobs/s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = [("enqueue/s", "enqueue_per_s", 0), ("bulk/s", "bulk_enqueue_per_s", 0),
           ("drain/s", "drain_per_s", 0), ("startup s", "startup_s", 2),
           ("p50 ms", "p50_ms", 1), ("p99 ms", "p99_ms", 1)]
RELIABLE = ("celery", "dramatiq")


def exec_us(median: dict[str, float]) -> float:
    return sum(median.get(k, 0.0) for k in ("redis_exec_us_enqueue", "redis_exec_us_script",
                                            "redis_exec_us_direct"))


def cell(result: dict[str, Any], key: str, digits: int) -> str:
    value = result["median"].get(key)
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    spread = result.get("spread_pct", {}).get(key)
    return f"{text} [{spread:.0f}%]" if spread is not None else text


def show(path: Path) -> None:
    data = json.loads(path.read_text())
    peers = {name: r for name, r in data["peers"].items() if r.get("repeats")}
    print(f"\n{path.name}: N={data['jobs']}, {data['repeat']} repeats, "
          f"redis {data.get('redis_version', '?')}")
    header = f"  {'peer':<16}" + "".join(f"{title:>18}" for title, _, _ in COLUMNS)
    print(header + f"{'exec us/job':>14}{'cpu us/job':>12}{'cmds':>7}")
    for name, result in peers.items():
        med = result["median"]
        label = name if result["jobs"] == data["jobs"] else f"{name} (N={result['jobs']})"
        cpu = med.get("redis_cpu_us_enqueue", 0.0) + med.get("redis_cpu_us_drain", 0.0)
        print(f"  {label:<16}" + "".join(f"{cell(result, key, d):>18}" for _, key, d in COLUMNS)
              + f"{exec_us(med):>14.1f}{cpu:>12.1f}{med.get('redis_cmds_per_job', 0):>7.1f}")
    bananas, huey = peers.get("bananas"), peers.get("huey")
    if not bananas:
        return
    med = bananas["median"]
    if huey:
        hm = huey["median"]
        drains = [round(b["drain_per_s"] / h["drain_per_s"], 2)
                  for b, h in zip(bananas["repeats"], huey["repeats"], strict=False)]
        print(f"  bananas / huey: drain {med['drain_per_s'] / hm['drain_per_s']:.2f}x "
              f"(repeat by repeat {drains}), enqueue "
              f"{med['enqueue_per_s'] / hm['enqueue_per_s']:.2f}x, bulk "
              f"{med.get('bulk_enqueue_per_s', 0) / hm.get('bulk_enqueue_per_s', 1):.1f}x")
    ours = exec_us(med)
    others = ", ".join(f"{n} {exec_us(peers[n]['median']):.1f}" for n in RELIABLE if n in peers)
    print(f"  bananas Redis exec per job {ours:.1f} us (enqueue "
          f"{med.get('redis_exec_us_enqueue', 0):.1f} + drain script "
          f"{med.get('redis_exec_us_script', 0):.1f} + commands "
          f"{med.get('redis_exec_us_direct', 0):.1f}) -> one Redis core: "
          f"{1e6 / ours:,.0f} jobs/s; reliable peers: {others}")


def main(paths: list[str]) -> int:
    for path in paths:
        show(Path(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
