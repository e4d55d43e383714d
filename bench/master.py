#!/usr/bin/env python3
"""Supervisor figures: child replacement time, start-up of 50 children, master RSS/CPU, preload.

Every figure comes from real masters (``python -m bananas_prefork start FILE``,
each in its own session, ready through the systemd notify socket) against one
private redis-server started here. Everything started is killed at exit (the
server by pid, masters by process group), also on Ctrl-C, SIGTERM and errors.
See bench/README.md for the method.

    .venv/bin/python bench/master.py                          # all sections (~2.5 min)
    .venv/bin/python bench/master.py --only replace --kills 10
    .venv/bin/python bench/master.py --json bench/results/master-2core.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from harness import (
    BenchError,
    MasterRun,
    Result,
    Session,
    chosen_sections,
    deployment,
    distribution,
    fmt_ms,
    median,
    pool_events,
    run_main,
    wait_for,
)
from supervisedtasks import COLLECTED_KEY, COUNT_KEY, FIRST_KEY, app

from bananas_prefork.ops.status import gather

NAMESPACE = "benchmaster"
SECTIONS = ("replace", "startup", "idle", "scaling", "preload")
MB = 1048576.0


# ---------------------------------------------------------------------------
# Keeping a queue non-empty
# ---------------------------------------------------------------------------

class Feeder:
    """A thread that tops the ``tick`` queue up whenever it falls below ``low`` jobs."""

    def __init__(self, hold: float, low: int = 2000, batch: int = 2000) -> None:
        self.hold, self.low, self.batch = hold, low, batch
        self.key = app.broker.keys.ready("normal", "tick")
        self.enqueued = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self._fill()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if self.error is not None:
            raise BenchError(f"feeder failed: {self.error!r}")

    def _fill(self) -> None:
        if int(app.broker.client.llen(self.key)) < self.low:
            app.enqueue_many([("tick", [self.hold])] * self.batch)
            self.enqueued += self.batch

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                self._fill()
        except BaseException as exc:  # reported by stop()
            self.error = exc


def flush(sess: Session) -> None:
    sess.admin().flushall()


def pool_config(pools: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"pools": pools, "scheduler": {"enabled": False}, **top}


def start_master(sess: Session, name: str, app_path: str, pools: dict[str, dict[str, Any]],
                 timeout: float, **top: Any) -> tuple[MasterRun, float, float]:
    """Start a master and wait for READY=1: (run, launched_at, ready_at)."""
    config = deployment(app_path, sess.url, NAMESPACE, pools, {"enabled": False}, **top)
    run = sess.master(name, config)
    launched = run.start()
    ready = run.wait_notify("READY=1", timeout)
    return run, launched, ready


# ---------------------------------------------------------------------------
# a. Replacement time
# ---------------------------------------------------------------------------

def measure_replacement(sess: Session, opts: argparse.Namespace, spacing: float) -> Result:
    """SIGKILL the oldest child, one at a time; time until its replacement takes a job."""
    flush(sess)
    counter = sess.counter()
    feeder = Feeder(opts.job_hold)
    feeder.start()
    pools = {"default": {"concurrency": opts.replace_concurrency, "threads": 1}}
    run, _, _ = start_master(sess, f"replace-{spacing:g}", "supervisedtasks:app", pools,
                             opts.timeout)
    kills: list[Result] = []
    try:
        def all_started() -> dict[int, float] | None:
            firsts = _first_jobs(counter)
            return firsts if len(firsts) >= opts.replace_concurrency else None

        seen = set(wait_for(all_started, opts.timeout, "every child taking jobs"))
        time.sleep(opts.warmup)
        for _ in range(opts.kills):
            kills.append(_kill_one(run, counter, seen, opts.timeout))
            time.sleep(spacing)
    finally:
        feeder.stop()
        stopped = run.stop()
    jobs = int(counter.get(COUNT_KEY) or 0)
    _add_log_times(kills, pool_events(run.events()))
    return _summarize_kills(kills, spacing, jobs, stopped)


def _first_jobs(counter: Any) -> dict[int, float]:
    return {int(pid): float(t) for pid, t in counter.hgetall(FIRST_KEY).items()}


def _kill_one(run: MasterRun, counter: Any, seen: set[int], timeout: float) -> Result:
    run.check_alive()
    victim = min(run.children(), key=lambda p: p.create_time())
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)

    def replacement() -> tuple[int, float] | None:
        fresh = {pid: t for pid, t in _first_jobs(counter).items() if pid not in seen}
        return min(fresh.items(), key=lambda kv: kv[1]) if fresh else None

    pid, first = wait_for(replacement, timeout, f"a replacement for pid {victim.pid}",
                          interval=0.005)
    seen.add(pid)
    return {"victim": victim.pid, "killed_at": killed_at, "pid": pid,
            "first_job_s": first - killed_at}


def _add_log_times(kills: list[Result], lives: dict[int, dict[str, Any]]) -> None:
    """kill -> reaped / spawned / ready, from the master's log (ms timestamps).

    The victim's age is taken from its "spawned" line too: the master's own view
    (psutil's create_time was found ~0.7 s off on this machine).
    """
    for kill in kills:
        victim, fresh = lives.get(kill["victim"], {}), lives.get(kill["pid"], {})
        spawned = victim.get("spawned")
        kill["victim_age_s"] = None if spawned is None else kill["killed_at"] - spawned
        for key, value in (("reaped_s", victim.get("exited")), ("spawned_s", fresh.get("spawned")),
                           ("ready_s", fresh.get("ready"))):
            kill[key] = None if value is None else value - kill["killed_at"]


def _summarize_kills(kills: list[Result], spacing: float, jobs: int,
                     stopped: float | None) -> Result:
    out: Result = {"spacing_s": spacing, "kills": kills, "jobs_run": jobs,
                   "graceful_stop_s": stopped}
    for key in ("reaped_s", "spawned_s", "ready_s", "first_job_s"):
        values = [k[key] for k in kills if k.get(key) is not None]
        out[key] = distribution(values)
    ages = [k["victim_age_s"] for k in kills if k.get("victim_age_s") is not None]
    out["victim_age_s"] = distribution(ages)
    # The master spawns at once unless the pool's restart backoff holds the spawn back.
    out["deferred_spawns"] = sum(1 for k in kills if k.get("spawned_s") is not None and
                                 k.get("reaped_s") is not None and
                                 k["spawned_s"] - k["reaped_s"] > 0.1)
    return out


# ---------------------------------------------------------------------------
# b. Start-up of 50 children, c. idle master
# ---------------------------------------------------------------------------

def startup_pools(opts: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {f"p{i}": {"concurrency": opts.pool_size, "threads": 1} for i in range(opts.pools)}


def measure_startup(sess: Session, opts: argparse.Namespace, want_idle: bool) -> Result:
    """Launch -> READY=1 and launch -> every child ready, ``--startup-repeat`` times.

    The last master stays up for the idle (and busy) samples when ``want_idle``.
    """
    runs: list[Result] = []
    idle: Result | None = None
    for rep in range(opts.startup_repeat):
        flush(sess)
        run, launched, ready = start_master(sess, f"startup-{rep}", "supervisedtasks:app",
                                            startup_pools(opts), opts.timeout)
        try:
            result = _startup_timeline(run, launched, ready, opts.pools * opts.pool_size)
            result["status_idle"] = _status_idle(opts.timeout)
            if want_idle and rep == opts.startup_repeat - 1:
                idle = measure_idle(sess, run, opts)
        finally:
            result_stop = run.stop()
        result["graceful_stop_s"] = result_stop
        runs.append(result)
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
    summary = {k: {"median": median([r[k] for r in runs]), "min": min(r[k] for r in runs),
                   "max": max(r[k] for r in runs)} for k in keys
               if all(isinstance(r.get(k), int | float) for r in runs)}
    return {"children": opts.pools * opts.pool_size, "pools": opts.pools, "runs": runs,
            "summary": summary, "idle": idle}


def _startup_timeline(run: MasterRun, launched: float, ready: float, children: int) -> Result:
    wait_for(lambda: sum("ready" in life for life in pool_events(run.events()).values())
             >= children, 10.0, "every child's 'is ready' line in the log")
    events = run.events()
    lives = pool_events(events)
    spawned = sorted(life["spawned"] for life in lives.values() if "spawned" in life)
    readies = sorted(life["ready"] for life in lives.values() if "ready" in life)
    starting = next(e.ts for e in events if e.role == "master" and "starting" in e.msg)
    consuming = sorted(e.ts for e in events if e.role != "master" and
                       e.msg.startswith("consumer ") and " started: " in e.msg)
    return {"launch_to_master_log_s": starting - launched,
            "launch_to_first_consuming_s": consuming[0] - launched,
            "launch_to_all_consuming_s": consuming[-1] - launched,
            "launch_to_first_spawn_s": spawned[0] - launched,
            "launch_to_last_spawn_s": spawned[-1] - launched,
            "launch_to_first_ready_s": readies[0] - launched,
            "launch_to_all_ready_s": readies[children - 1] - launched,
            "launch_to_notify_ready_s": ready - launched,
            "children_spawned": len(spawned), "children_ready": len(readies)}


def _status_idle(timeout: float) -> int:
    """Children that ``status`` (gather) shows idle, once it shows them all."""
    def idle_count() -> int | None:
        nodes = gather(app.broker)["nodes"]
        procs = [p for n in nodes for pool in n.get("pools", []) for p in pool["processes"]]
        idle = sum(p["state"] == "idle" for p in procs)
        return idle if procs and idle == len(procs) else None

    return int(wait_for(idle_count, timeout, "status showing every child idle", 0.2))


def measure_idle(sess: Session, run: MasterRun, opts: argparse.Namespace,
                 seconds: float | None = None) -> Result:
    """The master (and its children, and Redis) sampled idle, then busy, ``seconds`` each."""
    seconds = opts.idle_seconds if seconds is None else seconds
    children = len(run.children())
    time.sleep(opts.settle)
    out: Result = {"idle": _sample(sess, run, seconds)}
    if opts.busy_hold > 0:
        feeder = Feeder(opts.busy_hold, low=max(200, children * 4), batch=500)
        feeder.start()
        try:
            time.sleep(opts.settle)
            out["busy"] = _sample(sess, run, seconds)
            out["busy"]["job_hold_s"] = opts.busy_hold
        finally:
            feeder.stop()
    return out


def measure_scaling(sess: Session, opts: argparse.Namespace) -> list[Result]:
    """Master CPU, idle and busy, for several numbers of children (pools of 10)."""
    out = []
    for children in opts.scaling_children:
        flush(sess)
        pools = {f"p{i}": {"concurrency": min(10, children - 10 * i), "threads": 1}
                 for i in range((children + 9) // 10)}
        run, _, _ = start_master(sess, f"scaling-{children}", "supervisedtasks:app", pools,
                                 opts.timeout)
        try:
            sampled = measure_idle(sess, run, opts, opts.scaling_seconds)
        finally:
            run.stop()
        out.append({"children": children, **sampled})
    return out


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _sample(sess: Session, run: MasterRun, seconds: float) -> Result:
    master, kids = psutil.Process(run.pid), run.children()
    server = psutil.Process(sess.server.pid or 0)
    before = {p.pid: _cpu(p) for p in [master, server, *kids]}
    counter, jobs0 = sess.counter(), int(sess.counter().get(COUNT_KEY) or 0)
    t0, rss = time.perf_counter(), []
    while time.perf_counter() - t0 < seconds:
        rss.append(master.memory_info().rss / MB)
        time.sleep(1.0)
    elapsed = time.perf_counter() - t0
    cpu = {p.pid: (_cpu(p) - before[p.pid]) / elapsed * 100 for p in [master, server, *kids]}
    jobs = int(counter.get(COUNT_KEY) or 0) - jobs0
    master_mem = _memory(master)
    kid_mem = [_memory(k) for k in kids]
    return {"seconds": round(elapsed, 2), "children": len(kids),
            "master_cpu_pct": cpu[master.pid], "master_rss_mb_mean": sum(rss) / len(rss),
            "master_rss_mb_max": max(rss), "master_uss_mb": master_mem["uss_mb"],
            "master_pss_mb": master_mem["pss_mb"],
            "children_cpu_pct_total": sum(cpu[k.pid] for k in kids),
            "redis_cpu_pct": cpu[server.pid], "jobs_per_s": jobs / elapsed,
            **{f"child_{k}_mean": sum(m[k] for m in kid_mem) / len(kid_mem)
               for k in ("rss_mb", "uss_mb", "pss_mb")}}


def _memory(proc: psutil.Process) -> Result:
    info = proc.memory_full_info()
    pss = getattr(info, "pss", None)
    return {"pid": proc.pid, "rss_mb": info.rss / MB, "uss_mb": info.uss / MB,
            "pss_mb": None if pss is None else pss / MB,
            "shared_mb": (info.rss - info.uss) / MB}


# ---------------------------------------------------------------------------
# d. Memory shared thanks to preloading
# ---------------------------------------------------------------------------

def measure_preload(sess: Session, opts: argparse.Namespace) -> Result:
    out: Result = {"children": opts.preload_children, "ballast_mb": opts.ballast_mb,
                   "table_rows": opts.table_rows}
    cases = [("preload", True, False), ("no_preload", False, False)]
    if opts.freeze_case:
        cases.append(("preload_frozen", True, True))
    for name, preload, freeze in cases:
        out[name] = _preload_case(sess, opts, name, preload, freeze)
    return out


def _preload_case(sess: Session, opts: argparse.Namespace, name: str, preload: bool,
                  freeze: bool) -> Result:
    flush(sess)
    pools = {"default": {"concurrency": opts.preload_children, "threads": 1}}
    env = {"BENCH_BALLAST_MB": str(opts.ballast_mb), "BENCH_TABLE_ROWS": str(opts.table_rows),
           "BENCH_GC_FREEZE": "1" if freeze else "0"}
    config = deployment("heavytasks:app", sess.url, NAMESPACE, pools, {"enabled": False},
                        preload_app=preload)
    run = sess.master(name, config, env=env)
    run.start()
    run.wait_notify("READY=1", opts.timeout)
    try:
        time.sleep(opts.settle)
        fresh = _memory_snapshot(run)
        _collect_everywhere(sess, run, opts.timeout)
        time.sleep(0.5)
        after_gc = _memory_snapshot(run)
    finally:
        run.stop()
    lives = pool_events(run.events())
    boot = [life["ready"] - life["spawned"] for life in lives.values()
            if "ready" in life and "spawned" in life]
    return {"fresh": fresh, "after_gc": after_gc, "spawn_to_ready_s": distribution(boot)}


def _memory_snapshot(run: MasterRun) -> Result:
    kids = [_memory(k) for k in run.children()]
    totals = {f"children_{k}_total": sum(m[k] or 0.0 for m in kids)
              for k in ("rss_mb", "uss_mb", "pss_mb", "shared_mb")}
    master = _memory(psutil.Process(run.pid))
    return {"master": master, "children": kids, **totals,
            "deployment_pss_mb": totals["children_pss_mb_total"] + (master["pss_mb"] or 0.0)}


def _collect_everywhere(sess: Session, run: MasterRun, timeout: float) -> None:
    """One full gc.collect() in every child: ``collect`` jobs until each child ran one."""
    counter = sess.counter()
    counter.delete(COLLECTED_KEY)
    kids = {k.pid for k in run.children()}
    deadline = time.monotonic() + timeout
    while {int(p) for p in counter.hkeys(COLLECTED_KEY)} < kids:
        if time.monotonic() > deadline:
            raise BenchError("not every child ran a collect job")
        app.enqueue_many([("collect", [0.5])] * len(kids))
        time.sleep(1.0)
    wait_for(lambda: not sum(app.queue_depths()["normal"].values()), timeout,
             "collect jobs drained")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def print_replacement(results: Sequence[Result], concurrency: int) -> None:
    print(f"\na. replacement of a SIGKILLed child (pool: {concurrency} processes x 1 thread, "
          "queue kept non-empty)")
    print(f"{'kill -> ...':<40} {'n':>4} {'p50 ms':>9} {'p90 ms':>9} {'max ms':>9}")
    for res in results:
        print(f"  kills spaced {res['spacing_s']:g}s; victim age p50 "
              f"{res['victim_age_s']['p50']:.1f}s, min {res['victim_age_s']['min']:.1f}s; "
              f"{res['deferred_spawns']} spawn(s) held back > 100 ms by the restart backoff")
        for key, label in (("reaped_s", "reaped (master's log)"),
                           ("spawned_s", "replacement spawned (master's log)"),
                           ("ready_s", "replacement ready (master's log)"),
                           ("first_job_s", "replacement's first job started")):
            d = res[key]
            if d["n"]:
                print(f"  {label:<38} {d['n']:>4} {fmt_ms(d['p50']):>9} {fmt_ms(d['p90']):>9} "
                      f"{fmt_ms(d['max']):>9}")


def print_startup(res: Result) -> None:
    s = res["summary"]
    print(f"\nb. start-up: {res['pools']} pools, {res['children']} children x 1 thread, "
          f"{len(res['runs'])} launch(es)")
    print(f"{'launch -> ...':<40} {'median s':>9} {'min s':>9} {'max s':>9}")
    for key, label in (("launch_to_master_log_s", "master's first log line"),
                       ("launch_to_first_spawn_s", "first child spawned"),
                       ("launch_to_last_spawn_s", "last child spawned"),
                       ("launch_to_first_consuming_s", "first child consuming (child's log)"),
                       ("launch_to_all_consuming_s", "all children consuming (child's log)"),
                       ("launch_to_first_ready_s", "first 'is ready' (master's log)"),
                       ("launch_to_all_ready_s", f"all {res['children']} 'is ready' (master)"),
                       ("launch_to_notify_ready_s", "READY=1 on the notify socket"),
                       ("graceful_stop_s", "(graceful stop: SIGTERM -> exit)")):
        if key in s:
            print(f"  {label:<38} {s[key]['median']:>9.3f} {s[key]['min']:>9.3f} "
                  f"{s[key]['max']:>9.3f}")


def print_idle(idle: Result, children: int) -> None:
    print(f"\nc. master with {children} children, sampled over {idle['idle']['seconds']:g}s")
    rows = [("master CPU %", "master_cpu_pct", 2),
            ("master RSS MB (mean)", "master_rss_mb_mean", 1),
            ("master USS MB", "master_uss_mb", 1), ("master PSS MB", "master_pss_mb", 1),
            ("children CPU % (sum)", "children_cpu_pct_total", 2),
            ("redis-server CPU %", "redis_cpu_pct", 2),
            ("child RSS MB (mean)", "child_rss_mb_mean", 1),
            ("child USS MB (mean)", "child_uss_mb_mean", 1),
            ("child PSS MB (mean)", "child_pss_mb_mean", 1), ("jobs/s", "jobs_per_s", 0)]
    phases = [p for p in ("idle", "busy") if p in idle]
    busy_note = f" (busy: jobs sleeping {idle['busy']['job_hold_s']:g}s)" if "busy" in idle else ""
    print(f"{'':<40}" + "".join(f"{p:>10}" for p in phases) + busy_note)
    for label, key, digits in rows:
        print(f"  {label:<38}" + "".join(f"{idle[p][key]:>10,.{digits}f}" for p in phases))


PRELOAD_LABELS = {"preload": "preload_app = true", "no_preload": "preload_app = false",
                  "preload_frozen": "true + gc.freeze()"}


def print_scaling(results: Sequence[Result], hold: float) -> None:
    print(f"\nc'. master CPU vs number of children (pools of 10 x 1 thread); busy: jobs "
          f"sleeping {hold:g}s\n    keep every child busy")
    print(f"{'children':>10}{'master CPU % idle':>19}{'busy':>8}{'jobs/s':>8}"
          f"{'children CPU % busy':>21}{'redis CPU % busy':>18}")
    for res in results:
        idle, busy = res["idle"], res.get("busy", {})
        print(f"{res['children']:>10}{idle['master_cpu_pct']:>19.1f}"
              f"{busy.get('master_cpu_pct', float('nan')):>8.1f}"
              f"{busy.get('jobs_per_s', float('nan')):>8.0f}"
              f"{busy.get('children_cpu_pct_total', float('nan')):>21.1f}"
              f"{busy.get('redis_cpu_pct', float('nan')):>18.1f}")


def print_preload(res: Result) -> None:
    n = res["children"]
    print(f"\nd. preload_app: {n} children of an app with a {res['ballast_mb']} MB blob + a "
          f"{res['table_rows']:,}-row dict; MB")
    print(f"{'':<30}{'child mean':^32}{'sum of ' + str(n) + ' children':^24}")
    print(f"{'case':<30}" + "".join(f"{h:>8}" for h in ("RSS", "USS", "PSS", "RSS-USS",
                                                          "USS", "PSS", "+master")) +
          f"{'boot s':>8}")
    for case, label in PRELOAD_LABELS.items():
        if case not in res:
            continue
        for phase in ("fresh", "after_gc"):
            snap = res[case][phase]
            values = [snap[f"children_{k}_total"] / n
                      for k in ("rss_mb", "uss_mb", "pss_mb", "shared_mb")]
            values += [snap["children_uss_mb_total"], snap["children_pss_mb_total"],
                       snap["deployment_pss_mb"]]
            boot = f"{res[case]['spawn_to_ready_s']['p50']:>8.3f}" if phase == "fresh" else ""
            name = label if phase == "fresh" else "  after a full gc in each"
            print(f"  {name:<28}" + "".join(f"{v:>8,.1f}" for v in values) + boot)
    print("  +master: the children's PSS plus the master's (the deployment's real memory);\n"
          "  boot s: p50 of a child's spawn -> ready; after a full gc: one gc.collect() "
          "per child\n  (a collect job each); gc.freeze(): at the end of the app's import")


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
    group = parser.add_argument_group("a. replacement")
    group.add_argument("--kills", type=int, default=20, help="SIGKILLs per spacing (20)")
    group.add_argument("--spacing", default="0.3,1.5",
                       help="pause(s) after each replacement took its first job, comma-"
                            "separated: one series per value (0.3,1.5)")
    group.add_argument("--replace-concurrency", type=int, default=4, help="processes (4)")
    group.add_argument("--warmup", type=float, default=6.0,
                       help="seconds between every child taking jobs and the first kill (6: "
                            "older than the pool's 5 s 'quick death' window)")
    group.add_argument("--job-hold", type=float, default=0.005,
                       help="each backlog job sleeps this long (0.005; 0 = pure no-op)")
    group = parser.add_argument_group("b/c. start-up and idle master")
    group.add_argument("--pools", type=int, default=5, help="pools (5)")
    group.add_argument("--pool-size", type=int, default=10, help="processes per pool (10)")
    group.add_argument("--startup-repeat", type=int, default=3, help="launches (3)")
    group.add_argument("--idle-seconds", type=float, default=10.0, help="sample length (10)")
    group.add_argument("--settle", type=float, default=3.0, help="pause before sampling (3)")
    group.add_argument("--busy-hold", type=float, default=0.2,
                       help="also sample while every child runs jobs sleeping this long "
                            "(0.2; 0 = skip)")
    group.add_argument("--scaling-children", default="10,20,50,100",
                       help="scaling section: numbers of children (10,20,50,100)")
    group.add_argument("--scaling-seconds", type=float, default=5.0,
                       help="scaling section: sample length, idle and busy (5)")
    group = parser.add_argument_group("d. preload")
    group.add_argument("--preload-children", type=int, default=8, help="processes (8)")
    group.add_argument("--ballast-mb", type=int, default=32, help="bytes blob, MB (32)")
    group.add_argument("--table-rows", type=int, default=200_000, help="dict rows (200000)")
    group.add_argument("--freeze-case", action=argparse.BooleanOptionalAction, default=True,
                       help="also measure preload with gc.freeze() in the app (on)")
    opts = parser.parse_args(argv)
    opts.only = chosen_sections(parser, opts.only, SECTIONS)
    opts.spacing = [float(s) for s in opts.spacing.split(",")]
    opts.scaling_children = [int(c) for c in opts.scaling_children.split(",")]
    return opts


def run_sections(sess: Session, opts: argparse.Namespace) -> Result:
    results: Result = {}
    if "replace" in opts.only:
        results["replace"] = []
        for spacing in opts.spacing:
            print(f"a. replacement: {opts.kills} kills, spacing {spacing:g}s ...", flush=True)
            results["replace"].append(measure_replacement(sess, opts, spacing))
        print_replacement(results["replace"], opts.replace_concurrency)
    if "startup" in opts.only or "idle" in opts.only:
        print(f"\nb/c. start-up of {opts.pools * opts.pool_size} children ...", flush=True)
        results["startup"] = measure_startup(sess, opts, want_idle="idle" in opts.only)
        print_startup(results["startup"])
        if results["startup"]["idle"]:
            print_idle(results["startup"]["idle"], opts.pools * opts.pool_size)
    if "scaling" in opts.only:
        print(f"\nc'. master CPU for {opts.scaling_children} children ...", flush=True)
        results["scaling"] = measure_scaling(sess, opts)
        print_scaling(results["scaling"], opts.busy_hold)
    if "preload" in opts.only:
        print(f"\nd. preload: {opts.preload_children} children, preload_app true/false ...",
              flush=True)
        results["preload"] = measure_preload(sess, opts)
        print_preload(results["preload"])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("supervisor", "bananas-master-bench-", NAMESPACE, parse_args(argv), app,
                    run_sections)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
