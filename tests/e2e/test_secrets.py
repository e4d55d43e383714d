"""Passwords stay secret: never on a command line any user can read with ps, never in
a log or an error message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from bananas_prefork.core.embedded import RedisServer
from tests.e2e.test_cli import one_line_error, run
from tests.helpers import wait_until
from tests.masters import ROOT

PASSWORD = "s3cr3t-on-no-cmdline"


@pytest.fixture
def locked_redis(private_redis: RedisServer) -> Iterator[str]:
    """The private server with a password; its URL."""
    with redis.Redis(port=private_redis.port) as admin:
        admin.config_set("requirepass", PASSWORD)
    yield f"redis://:{PASSWORD}@127.0.0.1:{private_redis.port}/0"


def command_lines(root: psutil.Process) -> dict[int, str]:
    """The command line of a process and of every descendant, as ps shows them."""
    found = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            found[process.pid] = " ".join(process.cmdline())
        except psutil.Error:
            continue
    return found


def test_the_demo_puts_no_password_on_any_command_line_or_in_its_logs(
        locked_redis: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), BANANAS_REDIS_URL=locked_redis,
               BANANAS_NAMESPACE="demo-secrets")
    env.pop("NOTIFY_SOCKET", None)
    demo = subprocess.Popen([sys.executable, "-m", "bananas_prefork", "demo", "--duration", "4",
                             "--rate", "30"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: dict[int, str] = {}
    try:
        def everyone_seen() -> bool:
            seen.update(command_lines(psutil.Process(demo.pid)))
            titles = " ".join(seen.values())
            return "examples.demo" in titles and "master" in titles and "scheduler" in titles

        wait_until(everyone_seen, timeout=30, interval=0.05, message="the demo's processes")
        output, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, output
    assert len(seen) >= 5, seen  # the demo, the master, its children, the load generator
    assert not [line for line in seen.values() if PASSWORD in line], seen
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / ".bananas").glob("*.log"))
    assert "jobs done" in output and "enqueueing" in logs
    assert PASSWORD not in output + logs


def test_a_url_given_on_the_command_line_is_redacted_in_ps(locked_redis: str,
                                                            tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    watch = subprocess.Popen([sys.executable, "-m", "bananas_prefork", "status", "--watch",
                              "--redis", locked_redis], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def title() -> str | None:
            line = " ".join(psutil.Process(watch.pid).cmdline())
            return line if "status --watch" in line and "***" in line else None

        assert PASSWORD not in wait_until(title, timeout=20, interval=0.02)
    finally:
        watch.kill()
        watch.wait()


def test_cli_errors_never_print_the_password(locked_redis: str, tmp_path: Path) -> None:
    closed = locked_redis.rsplit(":", 1)[0] + ":1/0"  # nothing listens on port 1
    for command in (["status"], ["enqueue", "record"], ["dead", "list"]):
        result = run(*command, "--redis", closed, cwd=tmp_path)
        one_line_error(result, 1)
        assert PASSWORD not in result.stderr and ":***@" in result.stderr
    wrong = locked_redis.replace(PASSWORD, PASSWORD + "-wrong")
    result = run("status", "--redis", wrong, cwd=tmp_path)
    one_line_error(result, 1)
    assert PASSWORD not in result.stderr
    url_file = tmp_path / "url"
    url_file.write_text(locked_redis)
    assert run("status", "--redis-file", str(url_file), cwd=tmp_path).returncode == 0
