"""The dashboard's pages over HTTP on a real redis-server, without a browser: what each
page reads, paging and search, escaping of every job-supplied text, the guards, the
path prefix, and the ``dashboard`` command itself."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.embedded import free_port
from bananas_prefork.ops.dashboard.app import Dashboard, Options
from bananas_prefork.ops.dashboard.pages import DEAD_PER_PAGE, QUEUES_PER_PAGE
from tests.helpers import wait_until
from tests.masters import ROOT

TOKEN = "a-token-of-twenty-chars"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: str


@dataclass
class Client:
    """A browser in miniature: keeps cookies, talks WSGI to the dashboard directly."""

    app: Dashboard
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                **headers: str) -> Reply:
        target, _, query = path.partition("?")
        body = urlencode(form or {}).encode()
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": target, "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "HTTP_COOKIE": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
        }
        environ.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
        started: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
            started["status"], started["headers"] = status, response_headers

        chunks = b"".join(self.app(environ, start_response))
        cookies = [v for k, v in started["headers"] if k == "Set-Cookie"]
        for cookie in cookies:
            for name, morsel in SimpleCookie(cookie).items():
                self.cookies[name] = morsel.value
        return Reply(int(started["status"].split()[0]), dict(started["headers"]), cookies,
                     chunks.decode())

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, **headers)

    def post(self, path: str, form: dict[str, str], **headers: str) -> Reply:
        return self.request("POST", path, form, sec_fetch_site="same-origin", **headers)

    def csrf(self, path: str = "/dead") -> str:
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', self.get(path).body)
        assert match, "the page has a form"
        return match.group(1)


def dashboard(app: App, **options: Any) -> Client:
    return Client(Dashboard(app.broker, Options(**options)))


def bury(rclient: redis.Redis, app: App, job_id: str, name: str = "task", **fields: str) -> None:
    """A dead job as the step script leaves one (written directly: any text a job or a
    foreign client could put there)."""
    keys = app.broker.keys
    rclient.hset(keys.job(job_id), mapping={
        "name": name, "priority": "normal", "state": "dead", "attempts": "1",
        "args": "[]", "kwargs": "{}", "enqueued_at": "1.0", "finished_at": str(time.time()),
        "seq": "1", **fields})
    rclient.zadd(keys.dead, {job_id: time.time()})


def test_pages_answer(app: App) -> None:
    client = dashboard(app)
    app.enqueue("send_email", args=["a@example.com"])
    for path in ("/", "/queues", "/scheduler", "/dead"):
        reply = client.get(path)
        assert reply.status == 200, (path, reply.body[:500])
        assert "Content-Security-Policy" in reply.headers
        assert "<!doctype html>" in reply.body
    live = client.get("/queues", x_bananas_partial="1")
    assert "<html" not in live.body and 'data-queue="normal/send_email"' in live.body
    assert client.get("/nowhere").status == 404
    assert client.get("/dead/retry").status == 405
    assert client.get("/static/vendor/uPlot.iife.min.js").status == 200
    assert client.get("/static/../app.py").status == 404
    status = json.loads(client.get("/api/status").body)
    assert status["queues"]["normal"] == {"send_email": 1}
    history = json.loads(client.get("/api/history?resolution=minute").body)
    assert history["resolution"] == "minute" and len(history["t"]) == 1440


def test_every_job_supplied_text_is_escaped(app: App, rclient: redis.Redis) -> None:
    job_id = '"><svg/onload=alert(1)>'
    bury(rclient, app, job_id, name=HOSTILE, error=HOSTILE, traceback=HOSTILE,
         result=json.dumps(HOSTILE), owner=HOSTILE, args=json.dumps([HOSTILE]))
    client = dashboard(app, show_args=True, token=TOKEN)
    pages = [client.get("/dead").body, client.get("/dead?" + urlencode({"task": "script"})).body,
             client.get("/job?" + urlencode({"id": job_id})).body,
             client.get("/dead", x_bananas_partial="1").body]
    for body in pages:
        assert "<script>alert" not in body and "<svg/onload" not in body
        assert "<img src=x" not in body
        assert "&lt;script&gt;alert(" in body
    assert client.get("/job?" + urlencode({"id": job_id})).body.count("&lt;script&gt;") >= 4


def test_arguments_are_hidden_unless_enabled(app: App) -> None:
    job_id = app.enqueue("send_email", args=["secret-password-123"])
    page = "/job?" + urlencode({"id": job_id})
    assert "secret-password-123" not in dashboard(app).get(page).body
    assert "secret-password-123" in dashboard(app, show_args=True).get(page).body
    assert dashboard(app).get("/job?id=nope").status == 404


def test_dead_letters_are_paged_and_searched(app: App, rclient: redis.Redis) -> None:
    for n in range(120):
        bury(rclient, app, f"dead-{n:03d}", name="odd_task" if n % 40 == 0 else "plain")
    client = dashboard(app)
    first = client.get("/dead").body
    assert first.count('<tr data-job="') == DEAD_PER_PAGE and "page 1 of 3" in first
    last = client.get("/dead?page=3").body
    assert last.count('<tr data-job="') == 120 - 2 * DEAD_PER_PAGE
    found = client.get("/dead?task=ODD").body
    assert sorted(re.findall(r'<tr data-job="(dead-\d+)"', found)) == \
        ["dead-000", "dead-040", "dead-080"]


def test_queues_are_paged_and_the_unserved_come_first(app: App) -> None:
    app.enqueue_many([(f"type_{n:03d}", []) for n in range(QUEUES_PER_PAGE + 30)])
    client = dashboard(app)
    first = client.get("/queues").body
    assert first.count("<tr data-queue=") == QUEUES_PER_PAGE
    assert "UNSERVED" in first and "130 queue(s) with jobs that no live pool serves" in first
    second = client.get("/queues?page=2&sort=name").body
    assert second.count("<tr data-queue=") == 30
    assert "type_129" in second and "type_000" not in second
    assert client.get("/queues?q=type_12").body.count("<tr data-queue=") == 10


def test_actions_are_refused_without_the_token(app: App, rclient: redis.Redis) -> None:
    bury(rclient, app, "j1")
    off = dashboard(app)
    reply = off.post("/dead/retry", {"id": "j1"})
    assert reply.status == 403 and "actions are off" in reply.body
    assert 'action="/dead/retry"' not in off.get("/dead").body

    on = dashboard(app, token=TOKEN)
    csrf = on.csrf()
    for form in ({"id": "j1", "csrf": csrf}, {"id": "j1", "csrf": "0" * 64},
                 {"id": "j1", "token": TOKEN}):
        assert on.post("/dead/retry", form).status == 403, form
    assert on.post("/unlock", {"csrf": csrf, "token": "wrong" * 4}).status == 403
    assert rclient.zscore(app.broker.keys.dead, "j1") is not None

    unlocked = on.post("/unlock", {"csrf": csrf, "token": TOKEN, "next": "/dead?page=1"})
    assert unlocked.status == 303 and unlocked.headers["Location"] == \
        "/dead?page=1&notice=unlocked"
    done = on.post("/dead/retry", {"id": "j1", "csrf": csrf, "next": "//evil.example/x"})
    assert done.status == 303 and done.headers["Location"] == "/dead?notice=retried&n=1"
    assert rclient.zscore(app.broker.keys.dead, "j1") is None
    assert app.job("j1").state == "queued"
    bury(rclient, app, "j2")
    assert on.post("/lock", {"csrf": csrf}).status == 303
    assert on.post("/dead/delete", {"id": "j2", "csrf": csrf}).status == 403
    assert any("; Secure" in c for c in dashboard(app).get("/", x_forwarded_proto="https").cookies)


def test_retry_all_and_delete_by_script(app: App, rclient: redis.Redis) -> None:
    for n in range(3):
        bury(rclient, app, f"j{n}")
    client = dashboard(app, token=TOKEN)
    assert client.request("POST", "/dead/delete", {"id": "j0"},
                          x_bananas_token="x" * 20).status == 403
    assert client.request("POST", "/dead/delete", {"id": "j0"},
                          x_bananas_token=TOKEN).status == 303
    assert app.job("j0") is None
    assert client.request("POST", "/dead/retry", {"all": "1"},
                          x_bananas_token=TOKEN).status == 303
    assert rclient.zcard(app.broker.keys.dead) == 0
    assert client.request("POST", "/dead/retry", {}, x_bananas_token=TOKEN).status == 400


def test_basic_auth_guards_every_page_but_health(app: App) -> None:
    client = dashboard(app, auth="admin:s3cret")
    assert client.get("/health").status == 200
    for path in ("/", "/api/status", "/static/dashboard.js"):
        reply = client.get(path)
        assert reply.status == 401 and "WWW-Authenticate" in reply.headers, path
    login = "Basic " + base64.b64encode(b"admin:s3cret").decode()
    assert client.get("/", authorization=login).status == 200


def test_behind_a_proxy_every_link_has_the_prefix(app: App) -> None:
    for client, headers in ((dashboard(app, prefix="/bananas"), {}),
                            (dashboard(app), {"x_forwarded_prefix": "/bananas"})):
        body = client.get("/dead", **headers).body
        links = re.findall(r'(?:href|src|action)="([^"]+)"', body)
        assert links and all(link.startswith("/bananas/") for link in links), links
        assert all("Path=/bananas;" in c for c in client.get("/", **headers).cookies)


# -- the command -------------------------------------------------------------------------


@pytest.fixture
def served(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[str]:
    """``bananas-prefork dashboard`` under a prefix, read-only, from the environment."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), BANANAS_DASHBOARD_AUTH="ops:pass-word")
    env.pop("BANANAS_DASHBOARD_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bananas_prefork", "dashboard", "--redis", redis_url,
         "--namespace", namespace, "--bind", f"127.0.0.1:{port}", "--prefix", "/bananas"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url + "/bananas/health"), timeout=20,
                   message="the dashboard answers")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def test_the_dashboard_command(served: str, app: App) -> None:
    app.enqueue("send_email")
    login = "Basic " + base64.b64encode(b"ops:pass-word").decode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(served + "/bananas/queues", timeout=5)
    assert refused.value.code == 401
    refused.value.close()
    request = urllib.request.Request(served + "/bananas/queues",
                                     headers={"Authorization": login})
    with urllib.request.urlopen(request, timeout=5) as reply:
        body = reply.read().decode()
    assert 'data-queue="normal/send_email"' in body and 'href="/bananas/dead"' in body


def test_the_command_refuses_a_bad_bind_and_prefix(tmp_path: Path, redis_url: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (["--bind", "127.0.0.1:http"], ["--prefix", "no slash"]):
        result = subprocess.run([sys.executable, "-m", "bananas_prefork", "dashboard",
                                 "--redis", redis_url, *argv], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and result.stderr.startswith("bananas-prefork: "), \
            result.stderr
