"""The web dashboard under a big cluster state, and the Redis cost of the history.

    .venv/bin/python bench/dashboard.py                   # 500 queues, 10,000 dead jobs
    .venv/bin/python bench/dashboard.py --json bench/results/dashboard-2core.json

A private redis-server; one real master (``supervisedtasks:app``, one pool of two
children that serve only ``tick``) that serves the dashboard on ``dashboard_port``
and writes the history every second; 500 queues of 4 jobs each that no pool serves
(so they stay, and 500 ``unserved_queue`` alerts fire: the worst case for the
overview) and 10,000 dead jobs with a 1.5 KB traceback each, written directly.

Sections:
- ``render``: each page rendered by the WSGI application in this process, status
  cache cold (as for the first browser after a second), N times: milliseconds and
  the Redis commands one render sends (``INFO commandstats`` around one render,
  with the master stopped so that only the dashboard talks to Redis).
- ``browser``: Debian's Chromium (Playwright) loads each page from the master's
  dashboard: navigation start to the load event, and for the overview to charts
  with data.
- ``history``: ``HistoryStore.record`` (the master's once-a-second call):
  Redis time per call (``commandstats``), with the queue depths already measured
  that second (every master but one) and with the depths measured over the 500
  queues (one master a second); the round trip; the rings' size in Redis.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from harness import (
    BenchError,
    Result,
    Session,
    chosen_sections,
    deployment,
    distribution,
    run_main,
    wait_for,
)
from supervisedtasks import app as supervised_app

from bananas_prefork import App
from bananas_prefork.core.embedded import free_port
from bananas_prefork.core.history import MINUTE, SECOND, Delta, HistoryStore
from bananas_prefork.ops.dashboard.app import Dashboard, Options

NAMESPACE = "benchdash"
SECTIONS = ("render", "browser", "history")
TRACEBACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "/srv/app/tasks/module_{n}.py", line {100 + n}, in step_{n}\n'
    f"    result = call_the_next_layer(payload, attempt={n})\n" for n in range(16)) + \
    "RuntimeError: upstream refused the request (simulated)\n"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def fill(app: App, queues: int, per_queue: int, dead: int) -> None:
    """The cluster state: many queues nobody serves, many dead jobs."""
    priorities = ("high", "normal", "low")
    jobs = [(f"type_{n:03d}", [k], {}, {"priority": priorities[n % 3]})
            for n in range(queues) for k in range(per_queue)]
    for start in range(0, len(jobs), 1000):
        app.enqueue_many(jobs[start:start + 1000])
    client = app.broker.client
    keys = app.broker.keys
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for n in range(dead):
            job_id = f"dead-{n:05d}"
            pipe.hset(keys.job(job_id), mapping={
                "name": f"task_{n % 10}", "priority": "normal", "state": "dead",
                "attempts": "4", "args": "[1, 2]", "kwargs": "{}", "seq": str(n),
                "enqueued_at": str(now - 3600), "started_at": str(now - n),
                "finished_at": str(now - n), "error": "RuntimeError: upstream refused",
                "traceback": TRACEBACK})
            pipe.zadd(keys.dead, {job_id: now - n})
            if n % 1000 == 999:
                pipe.execute()
        pipe.execute()


def pages() -> list[tuple[str, str]]:
    return [("overview", "/"), ("queues", "/queues"), ("queues page 5", "/queues?page=5"),
            ("dead letters", "/dead"), ("dead letters page 200", "/dead?page=200"),
            ("dead search, task_7 (a page found)", "/dead?task=task_7"),
            ("dead search, no match (10,000 scanned)", "/dead?task=nothing"),
            ("scheduler", "/scheduler"), ("job", "/job?" + urlencode({"id": "dead-00042"})),
            ("history per second (JSON)", "/api/history?resolution=second"),
            ("history per minute (JSON)", "/api/history?resolution=minute"),
            ("live update of the overview", "/ partial")]


def render_once(dashboard: Dashboard, path: str) -> tuple[float, int]:
    """One request through the WSGI application, status cache cold; (seconds, bytes)."""
    target, _, query = path.partition("?")
    partial = target.endswith(" partial")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": target.split(" ")[0],
               "QUERY_STRING": query, "wsgi.input": io.BytesIO(b"")}
    if partial:
        environ["HTTP_X_BANANAS_PARTIAL"] = "1"
    dashboard.reader.forget_status()
    status: list[str] = []
    started = time.perf_counter()
    body = b"".join(dashboard(environ, lambda s, h: status.append(s)))
    took = time.perf_counter() - started
    if not status[0].startswith("200"):
        raise BenchError(f"{path}: {status[0]}")
    return took, len(body)


def commands(app: App, action: Any) -> int:
    """Redis commands (Lua's included) that ``action`` makes the server run."""
    client = app.broker.client
    client.config_resetstat()
    action()
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",
                                                                     "cmdstat_config"))


def section_render(app: App, repeat: int) -> Result:
    dashboard = Dashboard(app.broker, Options(token="bench-token-0123456789"))
    out: Result = {}
    print(f"\n{'page (rendered, status cache cold)':<40} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'max ms':>8} {'KB':>6}")
    for name, path in pages():
        render_once(dashboard, path)  # templates compiled, connections made
        samples, size = [], 0
        for _ in range(repeat):
            took, size = render_once(dashboard, path)
            samples.append(took)
        stats = distribution(samples, (0.5, 0.95))
        out[name] = {"path": path, "seconds": stats, "bytes": size}
        print(f"{name:<40} {stats['p50'] * 1000:8.1f} {stats['p95'] * 1000:8.1f} "
              f"{stats['max'] * 1000:8.1f} {size / 1024:6.0f}", flush=True)
    return out


def count_commands(app: App, results: Result) -> None:
    """Redis commands per render, once the master is stopped (nobody else talks)."""
    dashboard = Dashboard(app.broker, Options(token="bench-token-0123456789"))
    print(f"\n{'page':<40} {'redis commands per render':>26}")
    for name, path in pages():
        count = commands(app, lambda path=path: render_once(dashboard, path))
        results[name]["redis_commands"] = count
        print(f"{name:<40} {count:>26}")


def section_browser(url: str, repeat: int) -> Result:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("BANANAS_TEST_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise BenchError("no chromium on PATH (apt-get install chromium)")
    out: Result = {}
    print(f"\n{'page (Chromium, headless)':<40} {'load p50 ms':>12} {'load max ms':>12}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, path in [("overview", "/"), ("queues", "/queues"), ("dead letters", "/dead"),
                           ("scheduler", "/scheduler")]:
            page.goto(url + path)  # warm: connections, static files cached
            samples = []
            for _ in range(repeat):
                page.goto(url + path, wait_until="load")
                samples.append(float(page.evaluate(
                    "performance.getEntriesByType('navigation')[0].loadEventEnd")) / 1000)
            stats = distribution(samples, (0.5,))
            out[name] = {"load_seconds": stats}
            print(f"{name:<40} {stats['p50'] * 1000:12.1f} {stats['max'] * 1000:12.1f}")
        charts = []
        for _ in range(repeat):
            started = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_selector("#charts[data-loaded='second']")
            charts.append(time.perf_counter() - started)
        out["overview with charts drawn"] = {"seconds": distribution(charts, (0.5,))}
        print(f"{'overview to charts drawn':<40} "
              f"{distribution(charts, (0.5,))['p50'] * 1000:12.1f}")
        browser.close()
    return out


def section_history(app: App, calls: int, queues: int) -> Result:
    history = HistoryStore(app.broker.client, app.broker.keys)
    client = app.broker.client
    second_key = app.broker.keys.history(SECOND.name)
    delta = Delta(done=25, failed=1, started=26, waited=0.8)
    out: Result = {}
    for label, measure_depth in (("depths already measured this second", False),
                                 (f"depths measured over {queues} queues", True)):
        client.config_resetstat()
        trips = []
        for _ in range(calls):
            if measure_depth:  # as if this call were the first of its second
                client.hdel(second_key, str(int(client.time()[0]) % SECOND.slots))
            started = time.perf_counter()
            history.record(delta)
            trips.append(time.perf_counter() - started)
        stats = client.info("commandstats")
        evalsha = stats.get("cmdstat_evalsha") or stats.get("cmdstat_eval") or {}
        inner = sum(int(v["calls"]) for k, v in stats.items()
                    if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_hdel",
                                 "cmdstat_time", "cmdstat_config", "cmdstat_info"))
        out[label] = {"redis_usec_per_call": float(evalsha.get("usec_per_call", 0.0)),
                      "round_trip": distribution(trips, (0.5, 0.99)),
                      "commands_inside_per_call": inner / calls}
        print(f"history write, {label:<40} Redis {evalsha.get('usec_per_call', 0):7.1f} us "
              f"per call, round trip p50 {distribution(trips)['p50'] * 1e6:6.0f} us, "
              f"{inner / calls:6.1f} commands inside")
    now = int(client.time()[0])
    for resolution in (SECOND, MINUTE):
        key = app.broker.keys.history(resolution.name)
        full = f"{key}:bench-full"  # every slot written, as after a day of uptime
        client.hset(full, mapping={
            str(slot): f"{now - slot * resolution.width},{2400 // 60 * resolution.width},"
                       f"{resolution.width * 2},{resolution.width * 35000},"
                       f"{2400 // 60 * resolution.width},12,340,1790"
            for slot in range(resolution.slots)})
        out[f"{resolution.name} ring"] = {"fields_now": client.hlen(key),
                                          "bytes_now": client.memory_usage(key),
                                          "fields_full": resolution.slots,
                                          "bytes_full": client.memory_usage(full)}
        client.delete(full)
        print(f"{resolution.name} ring: {resolution.slots} fields at most, "
              f"{out[f'{resolution.name} ring']['bytes_full'] / 1024:.0f} KB full")
    return out


def run(sess: Session, opts: argparse.Namespace, sections: list[str]) -> Result:
    app = App(sess.url, namespace=NAMESPACE)
    started = time.perf_counter()
    fill(app, opts.queues, 4, opts.dead)
    print(f"filled {opts.queues} queues and {opts.dead:,} dead jobs in "
          f"{time.perf_counter() - started:.1f}s")
    port = free_port()
    master = sess.master("dash", deployment(
        "supervisedtasks:app", sess.url, NAMESPACE,
        {"ticks": {"mode": "job-specialized", "job_types": ["tick"], "concurrency": 2}},
        dashboard_port=port))
    master.start()
    master.wait_notify("READY=1")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: app.broker.client.hlen(app.broker.keys.history("second")) >= 3, 30,
             "the master writes the history")
    results: Result = {"queues": opts.queues, "dead": opts.dead}
    if "browser" in sections:
        results["browser"] = section_browser(url, opts.repeat)
    if "render" in sections:
        results["render"] = section_render(app, opts.repeat)
    master.stop()
    if "render" in sections:
        count_commands(app, results["render"])
    if "history" in sections:
        results["history"] = section_history(app, opts.calls, opts.queues)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=500)
    parser.add_argument("--dead", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20, help="samples per page")
    parser.add_argument("--calls", type=int, default=2000, help="history writes measured")
    parser.add_argument("--only", default=",".join(SECTIONS), help=",".join(SECTIONS))
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--redis-server", help="redis-server binary")
    parser.add_argument("--keep-workdir", action="store_true")
    opts = parser.parse_args()
    sections = chosen_sections(parser, opts.only, SECTIONS)
    return run_main("dashboard", "bench-dash-", NAMESPACE, opts, supervised_app,
                    lambda sess, o: run(sess, o, sections))


if __name__ == "__main__":
    sys.exit(main())
