"""The operator's view: status table and JSON, liveness of nodes, alerts, metrics, dead letters."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bananas_prefork import App
from bananas_prefork.core.config import AlertsConfig
from bananas_prefork.core.embedded import free_port
from bananas_prefork.core.identity import NodeId
from bananas_prefork.ops.status import ClusterStatus, evaluate, gather
from bananas_prefork.ops.status_view import render
from bananas_prefork.supervisor.publisher import Publisher
from tests.helpers import wait_until
from tests.masters import ROOT, MasterFactory, toml

THREE_POOLS = """
[pools.high]
mode = "specialized"
priorities = ["high"]
concurrency = 2

[pools.normal]
mode = "specialized"
priorities = ["normal"]
concurrency = 2
threads = 2

[pools.io]
mode = "job-specialized"
priorities = ["low"]
job_types = ["fetch_data"]
concurrency = 1
"""


def cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="160")
    return subprocess.run([sys.executable, "-m", "bananas_prefork", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def status_json(redis_url: str, namespace: str, cwd: Path) -> dict[str, Any]:
    result = cli("status", "--json", "--redis", redis_url, "--namespace", namespace, cwd=cwd)
    assert result.returncode in (0, 3), result.stderr
    return json.loads(result.stdout)


def text_of(status: dict[str, Any], width: int = 160) -> str:
    with open(os.devnull, "w") as sink:
        console = Console(width=width, record=True, file=sink)
        console.print(render(status, show_processes=True))
    return console.export_text()


def test_status_of_a_running_three_pool_master(masters: MasterFactory, app: App,
                                               tmp_path: Path, redis_url: str,
                                               namespace: str) -> None:
    master = masters(toml(THREE_POOLS))
    busy = [app.enqueue("sleep", args=[3], priority="high") for _ in range(2)]
    done = app.enqueue_many([("record", [n]) for n in range(20)])
    app.enqueue("send_email", priority="low")  # nobody serves low/send_email
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in done))
    wait_until(lambda: all(app.job(i).state == "running" for i in busy))

    def settled() -> dict[str, Any] | None:  # figures are at most a second or two old
        data = status_json(redis_url, namespace, tmp_path)
        pools = {p["name"]: p for n in data["nodes"] for p in n["pools"]}
        stats = pools.get("normal", {}).get("job_type_stats", {}).get("record", {})
        return data if stats.get("outcomes", {}).get("succeeded") == 20 else None

    data = wait_until(settled, timeout=5, interval=0.2)
    (node,) = data["nodes"]
    assert node["pid"] == master.pid and node["config"] == str(master.config_path)
    assert node["host"] and node["started_at"] > 0 and node["state"] == "running"
    pools = {p["name"]: p for p in node["pools"]}
    assert set(pools) == {"high", "normal", "io"}
    high_pool = pools["high"]
    assert (high_pool["mode"], high_pool["priorities"], high_pool["concurrency"]) == (
        "specialized", ["high"], 2)
    assert pools["io"]["job_types"] == ["fetch_data"]
    high = pools["high"]["processes"]
    assert {p["state"] for p in high} == {"busy"}
    assert {p["current_job"] for p in high} == {"sleep"}
    assert all(p["rss_mb"] > 5 and p["cpu_percent"] is not None for p in high)
    assert pools["normal"]["jobs_done"] == 20  # the numbers match what happened
    assert sum(p["jobs_done"] for p in pools["normal"]["processes"]) == 20
    assert pools["normal"]["job_type_stats"]["record"]["outcomes"]["succeeded"] == 20
    assert data["queues"]["low"] == {"send_email": 1}
    assert data["served_by"]["low"]["send_email"] == []
    assert data["scheduler"]["leader"] == f"{node['host']}:{master.pid}"
    assert 0 < data["scheduler"]["lease_expires_in"] <= 10
    assert {"scheduled", "dead", "in_flight"} <= set(data)
    assert any(a["name"] == "unserved_queue" for a in data["alerts"])

    text = text_of(data)
    for fragment in ("Pools", "high", "specialized", "job-specialized", "low / fetch_data",
                     "Children", "high[0]", "busy", "sleep", "Queues", "send_email",
                     "UNSERVED", f"scheduler leader {node['host']}:{master.pid}",
                     "unserved_queue"):
        assert fragment in text, (fragment, text)
    result = cli("status", "--redis", redis_url, "--namespace", namespace, cwd=tmp_path)
    assert result.returncode == 0 and "UNSERVED" in result.stdout and "Pools" in result.stdout


def published(app: App, pid: int) -> None:
    """Wait until the master's node is in Redis with every pool up and its scheduler leads."""
    def up() -> bool:
        status = gather(app.broker)
        nodes = [n for n in status["nodes"] if n["pid"] == pid]
        return bool(nodes) and all(p["state"] == "running" for p in nodes[0]["pools"]) \
            and status["scheduler"]["leader"] is not None

    wait_until(up, timeout=15, interval=0.1, message=f"master {pid} published")


def test_check_exit_codes(masters: MasterFactory, tmp_path: Path, redis_url: str,
                          namespace: str) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n"))
    published(App(redis_url, namespace=namespace), master.pid)
    healthy = cli("status", "--check", "--redis", redis_url, "--namespace", namespace,
                  cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stdout
    assert "no alerts" in healthy.stdout
    unreachable = cli("status", "--check", "--redis", "redis://127.0.0.1:1/0", cwd=tmp_path)
    assert unreachable.returncode == 1 and "cannot reach Redis" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_an_evicting_redis_is_an_alert(private_redis: object, tmp_path: Path,
                                       namespace: str) -> None:
    """With any maxmemory-policy but noeviction, Redis may drop jobs, owner keys and
    locks under memory pressure: status says so, and --check fails."""
    url = private_redis.url  # type: ignore[attr-defined]
    admin = redis.Redis.from_url(url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    result = cli("status", "--check", "--redis", url, "--namespace", namespace, cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "eviction" in result.stdout and "allkeys-lru" in result.stdout
    data = json.loads(cli("status", "--json", "--redis", url, "--namespace", namespace,
                          cwd=tmp_path).stdout)
    assert data["redis"]["maxmemory_policy"] == "allkeys-lru"
    admin.config_set("maxmemory-policy", "noeviction")
    result = cli("status", "--check", "--redis", url, "--namespace", namespace, cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    admin.close()


def test_unserved_queue_makes_check_fail(masters: MasterFactory, app: App, tmp_path: Path,
                                         redis_url: str, namespace: str) -> None:
    master = masters(toml(THREE_POOLS))
    app.enqueue("send_email", priority="low")
    published(app, master.pid)
    result = cli("status", "--check", "--redis", redis_url, "--namespace", namespace,
                 cwd=tmp_path)
    assert result.returncode == 3
    assert "UNSERVED" in result.stdout and "unserved_queue" in result.stdout


def test_a_killed_master_is_shown_lost_then_gone(masters: MasterFactory, app: App) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n", node_ttl="8s"))
    wait_until(lambda: len(gather(app.broker)["nodes"]) == 1, timeout=5)
    os.killpg(master.pid, signal.SIGKILL)
    killed = time.monotonic()
    lost = wait_until(lambda: [n for n in gather(app.broker)["nodes"] if n["state"] == "lost"],
                      timeout=10)
    assert time.monotonic() - killed >= 4
    assert any(a["name"] == "node_lost" for a in gather(app.broker)["alerts"])
    assert lost[0]["pid"] == master.pid
    wait_until(lambda: gather(app.broker)["nodes"] == [], timeout=10)
    assert time.monotonic() - killed <= 10


def test_a_graceful_stop_removes_the_node_at_once(masters: MasterFactory, app: App) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n"))
    wait_until(lambda: len(gather(app.broker)["nodes"]) == 1, timeout=5)
    master.send(signal.SIGTERM)
    master.wait_exit(10)
    assert gather(app.broker)["nodes"] == []


def test_metrics_over_http(masters: MasterFactory, app: App) -> None:
    port = free_port()
    masters(toml("[pools.default]\nconcurrency = 2\n", metrics_port=port))
    ids = app.enqueue_many([("record", [n]) for n in range(7)])
    app.enqueue("always_fails")
    app.enqueue("send_email", delay=3600)
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in ids))
    succeeded = ("bananas_jobs_total", (("job_type", "record"), ("outcome", "succeeded"),
                                        ("pool", "default")))

    def scrape() -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] | None:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = body.decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        settled = samples.get(succeeded) == 7 and samples.get(("bananas_scheduler_leader", ()))
        return (text, samples) if settled else None

    # children report once a second and the master publishes once a second
    body, samples = wait_until(scrape, timeout=10, interval=0.2)
    assert samples[("bananas_job_duration_seconds_count", (("job_type", "record"),
                                                           ("pool", "default")))] == 7
    assert samples[("bananas_jobs_scheduled", ())] >= 1
    assert samples[("bananas_pool_slots", (("pool", "default"),))] == 2
    assert samples[("bananas_scheduler_leader", ())] == 1
    assert samples[("bananas_scheduler_has_leader", ())] == 1
    assert samples[("bananas_redis_up", ())] == 1
    assert ("bananas_queue_depth", (("job_type", "record"), ("priority", "normal"))) in samples
    assert "process_resident_memory_bytes" in body


def test_dead_letter_commands(app: App, tmp_path: Path, redis_url: str, namespace: str,
                              consumers: list) -> None:
    from bananas_prefork.core.consumer import Consumer

    @app.task(name="broken", max_retries=0)
    def broken(secret: str) -> None:
        raise ValueError("bad input")

    ids = [app.enqueue("broken", args=[f"password{n}"]) for n in range(3)]
    consumer = Consumer(app)
    consumer.start()
    consumers.append(consumer)
    wait_until(lambda: all(app.job(i).state == "dead" for i in ids))
    target = ("--redis", redis_url, "--namespace", namespace)
    listed = cli("dead", "list", *target, cwd=tmp_path)
    assert listed.returncode == 0 and "ValueError: bad input" in listed.stdout
    assert "password" not in listed.stdout  # arguments only when asked
    as_json = json.loads(cli("dead", "list", "--json", "--show-args", *target,
                             cwd=tmp_path).stdout)
    assert {j["id"] for j in as_json} == set(ids) and as_json[0]["args"][0].startswith("password")
    shown = cli("job", ids[0], *target, cwd=tmp_path)
    assert "state: dead" in shown.stdout and "raise ValueError" in shown.stdout
    assert "password" not in shown.stdout
    assert cli("job", "nope", *target, cwd=tmp_path).returncode == 1
    consumer.stop(timeout=5)
    retried = cli("dead", "retry", ids[0], *target, cwd=tmp_path)
    assert retried.returncode == 0 and "requeued 1" in retried.stdout
    assert app.job(ids[0]).state == "queued"
    assert cli("dead", "retry", *target, cwd=tmp_path).returncode == 2
    purged = cli("dead", "purge", "--json", *target, cwd=tmp_path)
    assert json.loads(purged.stdout) == {"purged": 2}
    assert app.broker.dead_ids() == [] and app.job(ids[1]) is None
    all_retry = cli("dead", "retry", "--all", *target, cwd=tmp_path)
    assert "requeued 0" in all_retry.stdout


HOSTILE = "[/var/data] [bold]not bold[/bold] \x1b[2J\x1b]0;title\x07 line1\nFORGED log line"


def test_job_supplied_text_is_shown_literally_everywhere(
        app: App, tmp_path: Path, redis_url: str, namespace: str, consumers: list,
        caplog: pytest.LogCaptureFixture) -> None:
    """Errors, tracebacks and ids are data: no markup, no terminal escapes, no forged
    log lines, in every command that shows them."""
    from bananas_prefork.core.consumer import Consumer

    @app.task(name="hostile", max_retries=0)
    def hostile() -> None:
        raise RuntimeError(HOSTILE)

    job_id = app.enqueue("hostile", job_id="id-[red]x[/red]")
    consumer = Consumer(app)
    consumer.start()
    consumers.append(consumer)
    wait_until(lambda: app.job(job_id).state == "dead")
    target = ("--redis", redis_url, "--namespace", namespace)
    for args in (("dead", "list"), ("job", job_id), ("dead", "list", "--json"),
                 ("job", job_id, "--json")):
        shown = cli(*args, *target, cwd=tmp_path)
        assert shown.returncode == 0 and "Traceback (most recent" not in shown.stderr, shown
        out = shown.stdout
        assert "\x1b" not in out and "\x07" not in out, (args, out)
        if "--json" not in args:
            assert "[/var/data]" in out and "[bold]not bold[/bold]" in out, (args, out)
            assert "id-[red]x[/red]" in out, (args, out)
    from bananas_prefork.core.logs import ProcessFilter, TextFormatter

    records = [r for r in caplog.records if "hostile" in r.getMessage()]
    formatted = [TextFormatter().format(r) for r in records if ProcessFilter().filter(r)]
    assert formatted and all("\n" not in line and "\x1b" not in line for line in formatted)
    assert "FORGED" in formatted[0]  # still there, on the same line


def test_watch_refreshes_until_interrupted(masters: MasterFactory, tmp_path: Path,
                                           redis_url: str, namespace: str) -> None:
    import pty
    import select

    masters(toml("[pools.default]\nconcurrency = 1\n"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="140", LINES="60")
    leader, follower = pty.openpty()  # a terminal, so rich redraws in place
    proc = subprocess.Popen([sys.executable, "-m", "bananas_prefork", "status", "--watch",
                             "--interval", "0.2", "--redis", redis_url, "--namespace",
                             namespace], cwd=tmp_path, env=env, stdout=follower,
                            stderr=subprocess.PIPE, text=True)
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:


        if select.select([leader], [], [], 0.1)[0]:
            output += os.read(leader, 65536)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    os.close(leader)
    assert proc.returncode == 130, err
    assert output.count(b"Pools") >= 3 and "Traceback" not in err


# -- alert rules, on synthetic figures --------------------------------------------------------


def figures(**overrides: Any) -> Any:
    base: dict[str, Any] = {"time": 10_000.0, "nodes": [], "queues": {"high": {}, "normal": {},
                            "low": {}}, "served_by": {}, "scheduled": 0,
                            "scheduler": {"leader": "vm:1", "lease_expires_in": 5.0},
                            "periodic": {"entries": [], "conflicts": {}},
                            "redis": {"maxmemory_policy": "noeviction"}}
    base.update(overrides)
    return base


def names(alerts: list[Any]) -> list[str]:
    return [a.name for a in alerts]


def test_depth_alerts_fire_only_after_their_duration() -> None:
    status = figures(queues={"high": {"send_email": 150}, "normal": {"x": 2000}, "low": {}},
                     served_by={"high": {"send_email": ["a"]}, "normal": {"x": ["a"]}})
    config = AlertsConfig()
    assert names(evaluate(status, {"high_depth>100": 9_950.0, "depth>1000:normal:x": 9_950.0},
                          config)) == []
    assert names(evaluate(status, {"high_depth>100": 9_800.0, "depth>1000:normal:x": 9_600.0},
                          config)) == ["high_depth", "queue_depth"]
    assert names(evaluate(status, {"high_depth>50": 9_800.0}, config)) == []  # not ours


def test_pool_and_node_alerts() -> None:
    pool = {"name": "p", "state": "failing", "last_error": "ImportError: x",
            "no_live_child_since": 9_980.0, "utilization_high_since": 9_600.0}
    nodes = [{"host": "vm", "pid": 1, "state": "running", "updated_at": 10_000.0,
              "pools": [pool]},
             {"host": "vm2", "pid": 2, "state": "lost", "updated_at": 9_990.0, "pools": []}]
    alerts = evaluate(figures(nodes=nodes, scheduler={"leader": None, "lease_expires_in": None}),
                      {}, AlertsConfig())
    assert names(alerts) == ["crash_loop", "no_live_child", "utilization", "node_lost",
                             "no_scheduler_leader"]


@pytest.mark.parametrize("leader, scheduled, fires", [(None, 3, True), ("vm:1", 3, False),
                                                       (None, 0, False)])
def test_no_leader_alert(leader: str | None, scheduled: int, fires: bool) -> None:
    status = figures(scheduler={"leader": leader, "lease_expires_in": None},
                     scheduled=scheduled)
    assert ("no_scheduler_leader" in names(evaluate(status, {}, AlertsConfig()))) is fires


def test_status_reads_alert_thresholds_from_the_file(tmp_path: Path, rclient: redis.Redis,
                                                     redis_url: str, namespace: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'app = "x:app"\nredis_url = "{redis_url}"\nnamespace = "{namespace}"\n'
                    '[alerts]\nhigh_depth = 2\nhigh_depth_for = "0s"\n')
    app = App(redis_url, namespace=namespace)
    for _ in range(3):
        app.enqueue("send_email", priority="high")
    rclient.hset(app.broker.keys.alerts_since, "high_depth>2", f"{time.time() - 1}|{time.time()}")
    data = json.loads(cli("status", str(path), "--json", cwd=tmp_path).stdout)
    assert "high_depth" in [a["name"] for a in data["alerts"]]


def test_masters_time_their_own_conditions_and_status_uses_their_thresholds(app: App) -> None:
    """Two masters with different [alerts] tables: neither clears the other's condition,
    and status without a file judges with the most sensitive thresholds they publish."""
    eager = AlertsConfig(high_depth=2, high_depth_for=0.0)
    relaxed = AlertsConfig()
    publishers = [Publisher(app.broker, NodeId(host, 1, "n"), config, ttl=60)
                  for host, config in (("vm1", eager), ("vm2", relaxed))]
    for _ in range(3):
        app.enqueue("send_email", priority="high")
    assert names_of(gather(app.broker)) == []  # no master yet: default thresholds
    for publisher in publishers:
        publisher.publish({"host": publisher.node.host, "pid": 1, "pools": [],  # type: ignore
                           "state": "running", "updated_at": time.time(),
                           "alerts": dataclasses.asdict(publisher.alerts)})
    assert set(app.broker.fields(app.broker.keys.alerts_since)) == {"high_depth>2"}
    data = gather(app.broker)
    assert data["alert_thresholds"]["source"] == "nodes"
    assert data["alert_thresholds"]["high_depth"] == 2
    assert data["alert_thresholds"]["depth"] == 1000
    assert names_of(data) == ["high_depth"]
    assert names_of(gather(app.broker, relaxed)) == []  # a file's thresholds win

    # an entry nobody confirmed lately counts for nothing, and restarts when seen again
    long_ago = time.time() - 600
    app.broker.client.hset(app.broker.keys.alerts_since, "high_depth>2",
                           f"{long_ago}|{long_ago}")
    assert names_of(gather(app.broker)) == []
    publishers[0].track_queue_conditions()
    since = float(app.broker.fields(app.broker.keys.alerts_since)["high_depth>2"].split("|")[0])
    assert since > time.time() - 5
    # drained: the master that owns the condition clears it
    app.broker.client.delete(app.broker.keys.ready("high", "send_email"))
    app.broker.client.delete(app.broker.keys.heads("high"))
    publishers[0].track_queue_conditions()
    assert app.broker.fields(app.broker.keys.alerts_since) == {}


def names_of(data: ClusterStatus) -> list[str]:
    """The depth alerts that fire (these masters are stand-ins: no pools, no scheduler)."""
    return [a["name"] for a in data["alerts"] if a["name"] in ("high_depth", "queue_depth")]


def test_status_shows_the_dead_cap_and_the_cap_holds(masters: MasterFactory, app: App,
                                                     tmp_path: Path, redis_url: str,
                                                     namespace: str) -> None:
    masters(toml("[pools.default]\nconcurrency = 2\n", dead_max=2, done_ttl="2m"))
    ids = [app.enqueue("always_fails", args=[n], max_retries=0) for n in range(5)]

    def capped() -> bool:
        states = [job.state if (job := app.job(i)) else None for i in ids]  # one read each
        return (app.broker.dead_count() == 2 and states.count("dead") == 2
                and states.count(None) == 3)

    wait_until(capped, timeout=15, message="two dead jobs kept, three dropped")
    data = wait_until(lambda: (d := status_json(redis_url, namespace, tmp_path))["nodes"]
                      and d, timeout=10)
    assert data["dead"] == 2
    assert data["retention"] == {"result_ttl": 3600.0, "done_ttl": 120.0,
                                 "dead_ttl": 7 * 86400.0, "dead_max": 2, "source": "nodes"}
    assert "dead 2 (at most 2)" in text_of(data)
