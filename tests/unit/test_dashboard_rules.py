"""The dashboard's rules without Redis: the history's arithmetic, the guards that make
it safe to expose, addresses and prefixes, and where its settings come from."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import pytest

from bananas_prefork import App
from bananas_prefork.core.config import ConfigError, Deployment, from_mapping
from bananas_prefork.core.history import MINUTE, SECOND, Tally, series
from bananas_prefork.core.nodes import PoolStatus
from bananas_prefork.ops.dashboard.app import Options
from bananas_prefork.ops.dashboard.pages import Reader
from bananas_prefork.ops.dashboard.server import parse_bind
from bananas_prefork.ops.dashboard.web import CSRF_COOKIE, Guard, HTTPError, Request, Response

TOKEN = "a-token-of-twenty-chars"


def pool(name: str, generation: int, done: int, failed: int, started: int = 0,
         waited: float = 0.0) -> PoolStatus:
    return {"name": name, "generation": generation, "jobs_done": done,  # type: ignore[typeddict-item]
            "jobs_failed": failed,
            "job_type_stats": {"t": {"started": started, "waited": waited}}}


def test_the_first_report_only_takes_the_baseline() -> None:
    tally = Tally()
    delta, baseline = tally.delta([pool("a", 1, 500, 3, 510, 20.0)])
    assert delta is None
    tally.commit(baseline)
    delta, baseline = tally.delta([pool("a", 1, 520, 4, 530, 21.5)])
    assert delta is not None
    assert (delta.done, delta.failed, delta.started, delta.waited) == (20, 1, 20, 1.5)


def test_a_replaced_pool_counts_from_zero_and_a_gone_one_counts_nothing() -> None:
    tally = Tally()
    tally.commit(tally.delta([pool("a", 1, 100, 0), pool("b", 1, 50, 0)])[1])
    delta, baseline = tally.delta([pool("a", 2, 7, 1), pool("b", 1, 55, 0)])
    assert delta is not None and (delta.done, delta.failed) == (12, 1)
    tally.commit(baseline)
    delta, _ = tally.delta([pool("b", 1, 60, 0)])
    assert delta is not None and delta.done == 5


def test_an_uncommitted_delta_is_counted_again_next_time() -> None:
    """Redis failed: the next report still carries the jobs of the one that failed."""
    tally = Tally()
    tally.commit(tally.delta([pool("a", 1, 0, 0)])[1])
    tally.delta([pool("a", 1, 10, 0)])
    delta, _ = tally.delta([pool("a", 1, 25, 0)])
    assert delta is not None and delta.done == 25


def test_series_puts_buckets_in_place_and_leaves_gaps_empty() -> None:
    now = 1_800_000_123
    raw = {"3": f"{now},7,1,300,3,4,-1,0", "0": f"{now - 5},2,0,0,0,1,2,3",
           "9": f"{now - SECOND.slots},99,0,0,0,0,0,0", "x": "garbage"}
    out = series(SECOND, now, raw)
    assert len(out["t"]) == SECOND.slots and out["t"][-1] == now
    assert out["done"][-1] == 7 and out["failed"][-1] == 1
    assert out["latency_ms"][-1] == 100.0
    assert out["depth"]["high"][-1] == 4 and out["depth"]["normal"][-1] is None
    assert out["done"][-6] == 2 and out["latency_ms"][-6] is None
    assert out["done"][-2] is None  # nobody reported that second
    assert 99 not in out["done"]  # older than the window


def test_minute_series_are_aligned_to_minutes() -> None:
    out = series(MINUTE, 1_800_000_123, {})
    assert all(t % 60 == 0 for t in out["t"]) and len(out["t"]) == MINUTE.slots


# -- requests and guards ------------------------------------------------------------------


def environ(path: str = "/", method: str = "GET", body: str = "", **headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
                           "CONTENT_LENGTH": str(len(body)),
                           "wsgi.input": io.BytesIO(body.encode())}
    env.update({"HTTP_" + k.upper(): v for k, v in headers.items()})
    return env


def test_the_prefix_comes_from_the_option_else_the_proxy_header() -> None:
    assert Request(environ("/queues"), "/bananas").base == "/bananas"
    assert Request(environ("/bananas/queues"), "/bananas").path == "/queues"  # not stripped
    forwarded = Request(environ("/queues", x_forwarded_prefix="/ops/q/"), "")
    assert (forwarded.base, forwarded.path) == ("/ops/q", "/queues")
    hostile = Request(environ("/", x_forwarded_prefix='/"><script>'), "")
    assert hostile.base == ""
    assert forwarded.url("/job", id="a&b c", page=None) == "/ops/q/job?id=a%26b+c"


def test_basic_auth_when_configured() -> None:
    guard = Guard("admin:s3cret", None)
    with pytest.raises(HTTPError) as refused:
        guard.check_read(Request(environ(), ""))
    assert refused.value.status == 401
    wrong = base64.b64encode(b"admin:nope").decode()
    with pytest.raises(HTTPError):
        guard.check_read(Request(environ(authorization=f"Basic {wrong}"), ""))
    right = base64.b64encode(b"admin:s3cret").decode()
    guard.check_read(Request(environ(authorization=f"Basic {right}"), ""))
    Guard(None, None).check_read(Request(environ(), ""))


def posted(guard: Guard, fields: str, site: str = "same-origin",
           browser: str | None = None, **headers: str) -> Request:
    request = Request(environ("/dead/retry", "POST", fields, sec_fetch_site=site,
                              **headers), "")
    if browser is not None:
        request.cookies[CSRF_COOKIE] = browser
    return request


def csrf_for(guard: Guard) -> tuple[str, str]:
    """(browser cookie, form token) as a page of this dashboard hands them out."""
    request, response = Request(environ(), ""), Response()
    token = guard.csrf_token(request, response)
    assert any("HttpOnly; SameSite=Strict" in v for _, v in response.headers)
    return request.cookies[CSRF_COOKIE], token


def test_actions_are_off_without_a_token() -> None:
    guard = Guard(None, None)
    browser, csrf = csrf_for(guard)
    with pytest.raises(HTTPError, match="actions are off"):
        guard.check_action(posted(guard, f"csrf={csrf}&token=anything", browser=browser))


def test_an_action_needs_the_csrf_token_and_the_token() -> None:
    guard = Guard(None, TOKEN)
    browser, csrf = csrf_for(guard)
    with pytest.raises(HTTPError, match="needs the dashboard's token"):
        guard.check_action(posted(guard, f"csrf={csrf}", browser=browser))
    with pytest.raises(HTTPError, match="expired or did not come"):
        guard.check_action(posted(guard, f"token={TOKEN}", browser=browser))
    with pytest.raises(HTTPError, match="expired or did not come"):
        guard.check_action(posted(guard, f"csrf={csrf}&token={TOKEN}", browser="f" * 64))
    with pytest.raises(HTTPError, match="another site"):
        guard.check_action(posted(guard, f"csrf={csrf}&token={TOKEN}", "cross-site", browser))
    guard.check_action(posted(guard, f"csrf={csrf}&token={TOKEN}", browser=browser))
    assert not Guard(None, TOKEN).unlocked(posted(guard, "", browser=browser))


def test_unlocking_binds_the_actions_cookie_to_the_browser() -> None:
    guard = Guard(None, TOKEN)
    browser, csrf = csrf_for(guard)
    response = Response()
    assert not guard.unlock(posted(guard, f"csrf={csrf}&token=wrong", browser=browser),
                            response, 60)
    assert guard.unlock(posted(guard, f"csrf={csrf}&token={TOKEN}", browser=browser),
                        response, 60)
    cookie = next(v for _, v in response.headers if v.startswith("bananas_actions="))
    value = cookie.split(";")[0].split("=", 1)[1]
    request = posted(guard, f"csrf={csrf}", browser=browser)
    request.cookies["bananas_actions"] = value
    guard.check_action(request)
    other_browser, other_csrf = csrf_for(guard)
    stolen = posted(guard, f"csrf={other_csrf}", browser=other_browser)
    stolen.cookies["bananas_actions"] = value
    with pytest.raises(HTTPError):
        guard.check_action(stolen)


def test_a_script_may_act_with_the_token_in_a_header() -> None:
    guard = Guard(None, TOKEN)
    guard.check_action(posted(guard, "", site="", x_bananas_token=TOKEN))
    with pytest.raises(HTTPError, match="wrong token"):
        guard.check_action(posted(guard, "", site="", x_bananas_token="x" * 20))


# -- addresses and settings ---------------------------------------------------------------


@pytest.mark.parametrize(("bind", "expected"), [
    ("127.0.0.1:9000", ("127.0.0.1", 9000)), (":9000", ("127.0.0.1", 9000)),
    ("0.0.0.0", ("0.0.0.0", 8765)), ("[::1]:9000", ("::1", 9000)), ("[::]", ("::", 8765)),
])
def test_bind_addresses(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["host:port", "127.0.0.1:0", "[::1]9000", "h:70000"])
def test_bad_bind_addresses(bind: str) -> None:
    with pytest.raises(ValueError):
        parse_bind(bind)


def test_settings_from_the_file_and_secrets_from_the_environment() -> None:
    deployment = from_mapping({"app": "x:app", "dashboard_port": 8080,
                               "dashboard_prefix": "/bananas/", "dashboard_show_args": True},
                              "f.toml")
    options = Options.of(deployment, {"BANANAS_DASHBOARD_TOKEN": TOKEN,
                                      "BANANAS_DASHBOARD_PREFIX": "/ignored"})
    assert (options.prefix, options.token, options.show_args, options.auth) == \
        ("/bananas", TOKEN, True, None)
    assert Options.of(None, {"BANANAS_DASHBOARD_AUTH": "u:p"}).auth == "u:p"
    assert Options.of(Deployment(app="x"), {}).token is None


def test_a_bad_secret_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as short:
        Options.of(None, {"BANANAS_DASHBOARD_TOKEN": "tooshort"})
    assert "tooshort" not in str(short.value) and "BANANAS_DASHBOARD_TOKEN" in str(short.value)
    with pytest.raises(ConfigError) as bad:
        from_mapping({"app": "x:app", "dashboard_auth": "nopassword"}, "f.toml")
    assert "nopassword" not in str(bad.value)
    with pytest.raises(ConfigError, match="dashboard_prefix"):
        from_mapping({"app": "x:app", "dashboard_prefix": "/a b"}, "f.toml")


def test_the_overview_counts_the_slots_running_now() -> None:
    """A pool grown by TTIN runs more slots than it declares: the overview's busy total
    and utilization are over the slots, as ``status`` and the metrics count them."""
    pages = Reader(App("redis://127.0.0.1:1/0", namespace="unit").broker)
    grown = {"mode": "default", "concurrency": 2, "slots": 3, "busy": 3,
             "processed_per_min": 0.0, "failed_per_min": 0.0, "processes": []}
    scheduler = {**grown, "mode": "scheduler-only", "slots": 0, "busy": 0}
    status = {"nodes": [{"state": "running", "pools": [grown, scheduler]}], "queues": {}}
    pages._status = (time.monotonic(), status)  # type: ignore[assignment]
    totals = pages.overview()["totals"]
    assert (totals["busy"], totals["slots"], totals["utilization"]) == (3, 3, 1.0)
