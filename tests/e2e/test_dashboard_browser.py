"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real master that serves the dashboard on ``dashboard_port`` and a real Redis.

One master serves the whole module (starting one costs seconds); every test enqueues
its own jobs and waits for conditions, never for fixed times. The browser is the
system's Chromium (``BANANAS_TEST_CHROMIUM``, else ``chromium`` on PATH); Playwright
never downloads one. ``scripts/test`` installs Debian's package when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # collected without the browser extra: the fixture says what to do
    sync_playwright = None

from bananas_prefork import App
from bananas_prefork.core.embedded import RedisServer, free_port
from bananas_prefork.ops.status import gather
from tests.apps.dashboard_tasks import fixed_key
from tests.helpers import wait_until
from tests.masters import ROOT, MasterFactory, toml

CHROMIUM = os.environ.get("BANANAS_TEST_CHROMIUM") or shutil.which("chromium") or \
    "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TOKEN = "browser-test-token-0123"
HOSTILE = ('<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
           '<b id="bold">bold</b> &amp; "quotes"')
POOLS = """
[pools.high]
mode = "specialized"
priorities = ["high"]
concurrency = 2

[pools.rest]
mode = "specialized"
priorities = ["normal", "low"]
concurrency = 3
threads = 2
"""


@dataclass
class Cluster:
    url: str  # the dashboard's root, served by the master
    app: App
    rclient: redis.Redis
    redis_url: str
    namespace: str
    tmp: Path


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    namespace = "dash" + uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    masters = MasterFactory(tmp, redis_server.url, namespace)
    rclient = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        masters(toml(POOLS, app="tests.apps.dashboard_tasks:app", dashboard_port=port),
                env={"BANANAS_DASHBOARD_TOKEN": TOKEN})
        yield Cluster(f"http://127.0.0.1:{port}", App(redis_server.url, namespace=namespace),
                      rclient, redis_server.url, namespace, tmp)
    finally:
        for master in masters.started:
            master.stop()
        rclient.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.fail("the browser tests need Playwright: pip install -e '.[test,browser]' "
                    "(scripts/test installs it)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium "
                    "(scripts/test installs it), or set BANANAS_TEST_CHROMIUM")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], "scripts failed on the page"


def run_jobs(cluster: Cluster, count: int, task: str = "record") -> None:
    ids = cluster.app.enqueue_many([(task, [n]) for n in range(count)])
    wait_until(lambda: all(cluster.app.job(i).state == "succeeded" for i in ids),
               timeout=30, message=f"{count} {task} jobs succeed")


def field(row: Any, name: str) -> str:
    return str(row.locator(f'[data-field="{name}"]').inner_text()).strip()


def test_the_overview_shows_what_status_json_reports(cluster: Cluster, page: Page) -> None:
    run_jobs(cluster, 30)
    run_jobs(cluster, 10, "urgent")

    def settled() -> bool:  # nothing running, and every finished job counted
        status = gather(cluster.app.broker)
        done = sum(p["jobs_done"] for n in status["nodes"] for p in n["pools"])
        return status["in_flight"] == 0 and done >= 40 and all(
            c["state"] == "idle" for n in status["nodes"] for p in n["pools"]
            for c in p["processes"])

    wait_until(settled, timeout=20, message="the master's figures settle")
    result = subprocess.run(
        [sys.executable, "-m", "bananas_prefork", "status", "--json", "--redis",
         cluster.redis_url, "--namespace", cluster.namespace], cwd=cluster.tmp,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 3), result.stderr
    status = json.loads(result.stdout)

    page.goto(cluster.url + "/")
    assert [n.get_attribute("data-node") for n in page.locator("[data-node]").all()] == \
        [f"{n['host']}:{n['pid']}" for n in status["nodes"]]
    for node in status["nodes"]:
        rows = page.locator(f'[data-node="{node["host"]}:{node["pid"]}"] tr[data-pool]')
        assert [r.get_attribute("data-pool") for r in rows.all()] == \
            [p["name"] for p in node["pools"]]
        for pool in node["pools"]:
            row = page.locator(f'[data-node="{node["host"]}:{node["pid"]}"] '
                               f'tr[data-pool="{pool["name"]}"]')
            live = sum(1 for c in pool["processes"] if c["state"] in ("idle", "busy"))
            assert field(row, "mode") == pool["mode"]
            assert field(row, "processes") == f"{live}/{pool['processes_wanted']}"
            assert field(row, "busy").endswith(f"{pool['busy']}/{pool['slots']}")
            assert field(row, "jobs_done") == str(pool["jobs_done"])
            assert field(row, "jobs_failed") == str(pool["jobs_failed"])
            assert field(row, "restarts") == str(pool["restarts"])
            assert field(row, "state") == pool["state"]
    figures = {"nodes": len(status["nodes"]), "scheduled": status["scheduled"],
               "dead": status["dead"], "alerts": len(status["alerts"]),
               "children": sum(len(p["processes"]) for n in status["nodes"]
                               for p in n["pools"])}
    for name, value in figures.items():
        assert page.locator(f'[data-figure="{name}"]').inner_text() == str(value), name
    assert sum(p["jobs_done"] for p in status["nodes"][0]["pools"]) >= 40


def points(page: Page, chart: str, attribute: str = "data-sum") -> float:
    return float(page.locator(f"#chart-{chart}").get_attribute(attribute) or 0)


def test_the_charts_have_points(cluster: Cluster, page: Page) -> None:
    run_jobs(cluster, 25)
    page.goto(cluster.url + "/")
    wait_until(lambda: points(page, "throughput") >= 25, timeout=20,
               message="the per-second chart counts the jobs")
    # Pickup waits reach the master with a child's once-a-second stats, after the
    # scoreboard has counted the jobs done: the latency points may follow a report later.
    wait_until(lambda: points(page, "latency", "data-points") > 0, timeout=20,
               message="the latency chart has the jobs' pickup waits")
    assert points(page, "depth", "data-points") > 0  # the queues were measured
    assert page.locator("#chart-throughput canvas").count() >= 1
    page.click('button[data-resolution="minute"]')
    expect(page.locator("#charts")).to_have_attribute("data-loaded", "minute")
    wait_until(lambda: points(page, "throughput") >= 25, timeout=20,
               message="the per-minute chart counts the jobs")


def test_a_dead_job_retried_with_the_token_succeeds(cluster: Cluster, page: Page) -> None:
    job = cluster.app.enqueue("fixable", args=["r1"])
    wait_until(lambda: cluster.app.job(job).state == "dead", message="the job dies")
    page.goto(cluster.url + "/dead")
    retry = page.locator(f'tr[data-job="{job}"] button', has_text="retry")

    retry.click()  # without the token
    expect(page.locator('[data-field="message"]')).to_contain_text("needs the dashboard's token")
    assert cluster.app.job(job).state == "dead"

    page.goto(cluster.url + "/dead")
    page.fill('input[name="token"]', "not-the-token-at-all")
    page.click("text=unlock actions")
    expect(page.locator('[data-field="message"]')).to_contain_text("wrong token")

    cluster.rclient.set(fixed_key(cluster.namespace), "1")
    page.goto(cluster.url + "/dead")
    page.fill('input[name="token"]', TOKEN)
    page.click("text=unlock actions")
    expect(page.locator(".notice")).to_contain_text("unlocked")
    retry.click()
    expect(page.locator(".notice")).to_contain_text("1 job(s) sent back to their queues")
    wait_until(lambda: cluster.app.job(job).state == "succeeded", timeout=15,
               message="the retried job succeeds")
    assert cluster.app.job(job).result == "fixed r1"
    page.goto(cluster.url + "/job?" + urlencode({"id": job}))
    expect(page.locator('[data-field="state"]')).to_have_text("succeeded")


def test_an_error_with_markup_is_shown_as_text(cluster: Cluster, page: Page) -> None:
    job = cluster.app.enqueue("hostile", args=[HOSTILE], job_id=f"<i>{uuid.uuid4().hex}</i>")
    wait_until(lambda: cluster.app.job(job).state == "dead", message="the job dies")
    page.goto(cluster.url + "/dead?" + urlencode({"task": "hostile"}))
    row = page.locator("tr[data-job]").filter(has_text=job)
    assert field(row, "error") == f"ValueError: {HOSTILE}"
    row.locator("a.id").click()
    expect(page.locator('[data-field="id"]')).to_have_text(job)
    assert HOSTILE in field(page, "error")
    assert HOSTILE in field(page, "traceback")
    wait_until(lambda: page.locator("body").get_attribute("data-updated"),
               message="a live update of the page")
    assert HOSTILE in field(page, "error")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#bold").count() == 0 and page.locator("main i").count() == 0
