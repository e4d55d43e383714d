"""The screenshots of docs/dashboard.md, taken under the demo's load.

    .venv/bin/python bench/dashboard_screenshots.py            # about 80 s
    .venv/bin/python bench/dashboard_screenshots.py --seconds 20 --out /tmp/shots

A private redis-server; a real master on the demo deployment
(``bananas_prefork/examples/demo.toml``) that also serves the dashboard; the demo's
load generator at ``--rate`` jobs a second. After ``--seconds`` of load (a minute
gives the per-second charts a minute of points), Debian's Chromium takes the
overview, the queues and the dead letters (actions on, with a token from the
environment, so their forms show). Three unknown tasks are sent at high
priority (they die: a dead letter to show) and three of a type no pool serves at
low priority (an unserved queue to show).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from harness import ROOT, BenchError, Result, Session, run_main, wait_for
from supervisedtasks import app as supervised_app

from bananas_prefork import App
from bananas_prefork.core.embedded import free_port

NAMESPACE = "bananas"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SHOTS = (("dashboard-overview.png", "/"), ("dashboard-queues.png", "/queues"),
         ("dashboard-dead.png", "/dead"))


def shoot(url: str, out: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("BANANAS_TEST_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise BenchError("no chromium on PATH (apt-get install chromium)")
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for name, path in SHOTS:
            page.goto(url + path)
            if path == "/":
                page.wait_for_selector("#charts[data-loaded='second']")
            page.screenshot(path=str(out / name), full_page=True)
            written.append(str(out / name))
        browser.close()
    return written


def run(sess: Session, opts: argparse.Namespace) -> Result:
    demo = (resources.files("bananas_prefork") / "examples" / "demo.toml").read_text()
    port = free_port()
    config = (f'redis_url = "{sess.url}"\nnamespace = "{NAMESPACE}"\n'
              f"dashboard_port = {port}\n{demo}")
    master = sess.master("demo", config, {"BANANAS_DASHBOARD_TOKEN": "screenshot-token-0123"})
    master.config_path = Path(master.config_path.name)  # shown as given: no temp path
    master.start()
    master.wait_notify("READY=1")
    app = App(sess.url, namespace=NAMESPACE)
    load = subprocess.Popen(
        [sys.executable, "-m", "bananas_prefork.examples.demo", "--rate", str(opts.rate),
         "--redis", sess.url, "--namespace", NAMESPACE],
        cwd=sess.workdir, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        app.enqueue_many([("legacy_report", [n], {}, {"priority": "high"}) for n in range(3)])
        app.enqueue_many([("legacy_export", [n], {}, {"priority": "low"}) for n in range(3)])
        print(f"demo load at {opts.rate}/s for {opts.seconds:g}s ...", flush=True)
        deadline = time.monotonic() + opts.seconds
        wait_for(lambda: time.monotonic() > deadline or load.poll() is not None,
                 opts.seconds + 10, "the load runs")
        if load.poll() is not None:
            raise BenchError(f"the load generator exited ({load.returncode})")
        opts.out.mkdir(parents=True, exist_ok=True)
        written = shoot(f"http://127.0.0.1:{port}", opts.out)
    finally:
        if load.poll() is None:
            os.killpg(load.pid, signal.SIGTERM)
        load.wait(30)
        master.stop()
    for path in written:
        print(f"wrote {path}")
    return {"screenshots": written}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=70.0, help="load before the shots")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="demo jobs a second (the demo's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--redis-server", help="redis-server binary")
    parser.add_argument("--keep-workdir", action="store_true")
    return run_main("dashboard screenshots", "bench-shots-", NAMESPACE, parser.parse_args(),
                    supervised_app, run)


if __name__ == "__main__":
    sys.exit(main())
