"""The master's life: start, readiness, graceful and fast stops, pidfile commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.leadership import LeaderLock
from tests.apps.recorder import runs_key
from tests.helpers import wait_until
from tests.masters import ROOT, MasterFactory, toml

TWO_POOLS = """
[pools.high]
mode = "specialized"
priorities = ["high"]
concurrency = 2

[pools.rest]
priorities = ["normal", "low"]
concurrency = 4
threads = 2
"""


def test_start_forks_every_pool_and_runs_jobs_where_they_belong(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    master = masters(toml(TWO_POOLS))
    kids = master.wait_children({"high": 2, "rest": 2, "scheduler": 1})
    titles = master.titles()
    assert "bananas-prefork: high[0] idle" in titles and "bananas-prefork: rest[1] idle" in titles
    high = app.enqueue("record", args=["h"], priority="high")
    low = app.enqueue("record", args=["l"], priority="low")
    wait_until(lambda: rclient.llen(runs_key(namespace)) == 2)
    ran = {r.split("|")[0]: r.split("|") for r in rclient.lrange(runs_key(namespace), 0, -1)}
    assert int(ran[high][2]) in kids["high"] and ran[high][4] == "high"
    assert int(ran[low][2]) in kids["rest"] and ran[low][4] == "rest"
    assert "STATUS=" in master.messages[0] and f"MAINPID={master.pid}" in master.messages[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_lets_running_jobs_finish(masters: MasterFactory, app: App,
                                                signum: int) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 2\n", pidfile="m.pid"))
    pidfile = master.tmp / "m.pid"
    assert pidfile.read_text().strip() == str(master.pid)
    job_id = app.enqueue("sleep", args=[1.0])
    wait_until(lambda: app.job(job_id).state == "running")
    master.send(signum)
    master.wait_notify("STOPPING=1")
    assert master.wait_exit(15) == 0
    assert app.job(job_id).state == "succeeded"
    assert not pidfile.exists()
    assert master.children() == {}


def test_shutdown_timeout_returns_unfinished_jobs(masters: MasterFactory, app: App) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n", shutdown_timeout="1s"))
    job_id = app.enqueue("sleep", args=[60])
    wait_until(lambda: app.job(job_id).state == "running")
    began = time.monotonic()
    master.send(signal.SIGTERM)
    assert master.wait_exit(10) == 0
    assert time.monotonic() - began < 5
    info = app.job(job_id)
    assert (info.state, info.redeliveries) == ("queued", 0)


def test_second_term_escalates_to_a_fast_stop(masters: MasterFactory, app: App) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n", shutdown_timeout="60s"))
    job_id = app.enqueue("sleep", args=[60])
    wait_until(lambda: app.job(job_id).state == "running")
    master.send(signal.SIGTERM)
    master.wait_notify("STOPPING=1")
    master.send(signal.SIGTERM)
    assert master.wait_exit(10) == 0
    assert app.job(job_id).state == "queued"


def test_quit_kills_children_now_and_keeps_their_jobs(masters: MasterFactory, app: App) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 2\n"))
    ids = [app.enqueue("sleep", args=[60]) for _ in range(2)]
    wait_until(lambda: all(app.job(i).state == "running" for i in ids))
    began = time.monotonic()
    master.send(signal.SIGQUIT)
    assert master.wait_exit(10) == 0
    assert time.monotonic() - began < 3
    assert [app.job(i).state for i in ids] == ["queued", "queued"]


@pytest.mark.parametrize("leader_dies_too", [False, True])
def test_a_dead_machines_jobs_return_within_owner_ttl(masters: MasterFactory, app: App,
                                                      leader_dies_too: bool) -> None:
    """Master and children SIGKILLed at once (the machine is gone), just after a liveness
    renewal (the worst moment): another machine's scheduler leader returns their jobs
    within owner_ttl of the kill."""
    worker_file = toml("[pools.default]\nconcurrency = 2\n", owner_ttl="5s")
    other_file = toml('[pools.s]\nmode = "scheduler-only"\n', owner_ttl="5s")
    lease = '[scheduler]\nlease = "1s"\n'  # a dead leader is replaced within a second
    if leader_dies_too:
        doomed = masters(worker_file.replace("[pools.", lease + "[pools.", 1), name="doomed")
        wait_until(lambda: f":{doomed.pid}:" in (LeaderLock(app.broker).holder()[0] or ""))
        masters(other_file.replace("[pools.", lease + "[pools.", 1), name="other")
    else:
        masters(other_file, name="other")
        wait_until(lambda: LeaderLock(app.broker).holder()[0] is not None)
        doomed = masters(worker_file.replace("[pools.",
                                             "[scheduler]\nenabled = false\n[pools.", 1),
                         name="doomed")
    ids = [app.enqueue("sleep", args=[60]) for _ in range(2)]
    wait_until(lambda: all(app.job(i).state == "running" for i in ids))
    (owner, *_) = [o for o in app.broker.members(app.broker.keys.owners)
                   if f":{doomed.pid}:" in o]
    liveness_key = app.broker.keys.owner(owner)
    ttls = [app.broker.client.pttl(liveness_key)]

    def renewed() -> bool:  # the TTL went up: the master renewed it just now
        ttls.append(app.broker.client.pttl(liveness_key))
        return ttls[-1] > ttls[-2]

    wait_until(renewed, timeout=30, interval=0.002, message="a liveness renewal")
    os.killpg(doomed.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: all(app.job(i).state == "queued" for i in ids), timeout=10,
               interval=0.02)
    elapsed = time.monotonic() - killed
    assert elapsed <= 5.0, elapsed


def test_redis_down_at_start_is_retried(masters: MasterFactory, private_redis: object,
                                        app: App) -> None:
    server = private_redis
    url = server.url  # type: ignore[attr-defined]
    server.stop()  # type: ignore[attr-defined]
    master = masters(toml("[pools.default]\nconcurrency = 1\n", redis_url=url),
                     wait_ready=False)
    wait_until(lambda: master.read_log().count("redis unavailable") >= 2, timeout=10)
    assert master.children() == {}
    server.start()  # type: ignore[attr-defined]
    master.wait_notify("READY=1", timeout=30)
    client_app = App(url, namespace=app.namespace)
    job_id = client_app.enqueue("record")
    wait_until(lambda: client_app.job(job_id).state == "succeeded")


def _cli(*args: str, cwd: Path,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "bananas_prefork", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=60)


def test_pidfile_commands(masters: MasterFactory, tmp_path: Path) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n", pidfile="run/m.pid"))
    config = str(master.config_path)
    # a second master with the same pidfile refuses to start
    second = masters(master.config_path.read_text(), start=False, name="second")
    second.start(wait_ready=False)
    assert second.wait_exit(20) == 1
    assert "already running" in second.read_log()
    reload = _cli("reload", config, cwd=tmp_path)
    assert reload.returncode == 0, reload.stderr
    master.wait_notify("RELOADING=1")
    master.wait_notify("READY=1")
    # the file was broken since: reload refuses it, stop still finds the master
    good = master.config_path.read_text()
    master.config_path.write_text(good + "\n[[[ half-typed\n")
    refused = _cli("reload", config, cwd=tmp_path)
    assert refused.returncode == 2 and "invalid TOML" in refused.stderr
    stop = _cli("stop", config, "--wait", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert master.wait_exit(10) == 0
    master.config_path.write_text(good)
    # now stale: nothing to signal
    assert not (tmp_path / "run" / "m.pid").exists()
    (tmp_path / "run" / "m.pid").write_text("999999\n")
    for command in ("reload", "stop"):
        result = _cli(command, config, cwd=tmp_path)
        assert result.returncode == 1
        assert "no master is running" in result.stderr and "Traceback" not in result.stderr


def test_reload_without_pidfile_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('app = "tests.apps.recorder:app"\n')
    result = _cli("stop", "p.toml", cwd=tmp_path)
    assert result.returncode == 1 and "no pidfile is configured" in result.stderr
    for command in ("stop", "reload"):  # environment mode: no app needed to find a master
        result = _cli(command, cwd=tmp_path, env={"BANANAS_APP": "", "BANANAS_PIDFILE": ""})
        assert result.returncode == 1 and "no pidfile is configured" in result.stderr, result
        (tmp_path / ".env").write_text(f"BANANAS_PIDFILE={tmp_path / 'gone.pid'}\n")
        result = _cli(command, cwd=tmp_path, env={"BANANAS_APP": ""})
        assert result.returncode == 1 and "gone.pid is missing or stale" in result.stderr
        (tmp_path / ".env").unlink()


def test_watchdog_and_json_logs(masters: MasterFactory) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n", log_format="json"),
                     env={"WATCHDOG_USEC": "400000"})
    master.wait_notify("WATCHDOG=1", timeout=5)
    master.send(signal.SIGTERM)
    master.wait_exit(10)
    lines = [json.loads(line) for line in master.read_log().splitlines() if line.startswith("{")]
    assert lines and {"ts", "level", "role", "pid", "msg"} <= set(lines[0])
    assert any(line["role"] == "default[0]" for line in lines)
    assert any("spawned default[0]" in line["msg"] for line in lines)


def test_a_stalled_master_does_not_lose_its_childrens_jobs(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    """A master stopped (SIGSTOP, a slow re-import, a hung call) longer than owner_ttl:
    its children still run their jobs, so nobody may take those jobs from them."""
    master = masters(toml("[pools.default]\nconcurrency = 1\n", owner_ttl="3s"))
    job_id = app.enqueue("sleep", args=[7])
    wait_until(lambda: app.job(job_id).state == "running")
    master.send(signal.SIGSTOP)
    try:
        stalled = time.monotonic()
        wait_until(lambda: time.monotonic() - stalled > 5, timeout=10,
                   message="a stall longer than owner_ttl")  # the scheduler scans meanwhile
    finally:
        master.send(signal.SIGCONT)
    wait_until(lambda: app.job(job_id).state == "succeeded", timeout=15)
    assert app.job(job_id).attempts == 1
    runs = [r for r in rclient.lrange(runs_key(namespace), 0, -1) if r.startswith(job_id)]
    assert len(runs) == 1, runs


def test_the_watchdog_is_petted_while_redis_hangs(masters: MasterFactory,
                                                  private_redis: object) -> None:
    """A master blocked on a Redis that does not answer must not miss the systemd
    watchdog (it would be killed and restarted for no fault of its own)."""
    server = private_redis
    master = masters(toml("[pools.default]\nconcurrency = 1\n"),
                     env={"WATCHDOG_USEC": "6000000",  # WatchdogSec=6: pets every 3 s
                          "BANANAS_REDIS_URL": server.url})  # type: ignore[attr-defined]
    master.wait_notify("WATCHDOG=1", timeout=10)
    os.kill(server.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        start = len(master.messages)
        hung = time.monotonic()
        while time.monotonic() - hung < 15:
            master.poll_notify()
        pets = [m for m in master.messages[start:] if "WATCHDOG=1" in m]
        assert len(pets) >= 3, master.read_log()[-3000:]  # ~5 expected in 15 s
    finally:
        os.kill(server.pid, signal.SIGCONT)  # type: ignore[attr-defined]


def test_usr1_does_not_stop_the_master(masters: MasterFactory) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n"))
    before = master.wait_children({"default": 1, "scheduler": 1})
    master.send(signal.SIGUSR1)
    wait_until(lambda: "USR1" in master.read_log(), timeout=5)
    assert master.proc is not None and master.proc.poll() is None
    assert master.children() == before
