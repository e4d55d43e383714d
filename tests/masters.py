"""Running real masters in tests: a process group each, readiness through the
systemd notify socket, children seen through psutil, everything killed at the end."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
TITLE = re.compile(r"^bananas-prefork: (?P<label>\S+?)(\[(?P<index>\d+)\])? (?P<state>.*)$")


class MasterProcess:
    """One ``bananas-prefork start`` process, its notify socket and its log."""

    def __init__(self, tmp: Path, redis_url: str, namespace: str, config: str | None,
                 env: dict[str, str] | None = None, name: str = "master",
                 cwd: Path | None = None) -> None:
        self.tmp = tmp
        self.name = name
        self.config_path = tmp / f"{name}.toml" if config is not None else None
        if self.config_path is not None:
            self.config_path.write_text(config or "")
        self.notify_path = tmp / f"{name}.notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.1)
        self.messages: list[str] = []
        self.log_path = tmp / f"{name}.log"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), BANANAS_NAMESPACE=namespace,
                        BANANAS_REDIS_URL=redis_url, NOTIFY_SOCKET=str(self.notify_path),
                        PYTHONUNBUFFERED="1")
        self.env.update(env or {})
        self.cwd = cwd or tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> MasterProcess:
        argv = [sys.executable, "-m", "bananas_prefork", "start"]
        if self.config_path is not None:
            argv.append(str(self.config_path))
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=self.env, cwd=self.cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            self.wait_notify("READY=1", timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_notify(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        start = len(self.messages)
        while time.monotonic() < deadline:
            for message in self.messages[start:]:
                if needle in message:
                    return message
            start = len(self.messages)
            self.poll_notify()
            if self.proc is not None and self.proc.poll() is not None:
                break
        raise AssertionError(f"{self.name}: no {needle!r} from the master; log:\n"
                             f"{self.read_log()[-4000:]}")

    def poll_notify(self) -> None:
        try:
            self.messages.append(self.notify.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            pass

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def children(self) -> dict[str, list[int]]:
        """Live children by label (pool name, or 'scheduler'), from their process titles."""
        found: dict[str, list[int]] = {}
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return found
        for kid in kids:
            try:
                title = " ".join(kid.cmdline()).strip()
                if kid.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            match = TITLE.match(title)
            if match:
                found.setdefault(match.group("label"), []).append(kid.pid)
        return {k: sorted(v) for k, v in found.items()}

    def titles(self) -> list[str]:
        out = []
        for kid in psutil.Process(self.pid).children():
            try:
                out.append(" ".join(kid.cmdline()).strip())
            except psutil.Error:
                pass
        return out

    def wait_children(self, expected: dict[str, int],
                      timeout: float = 15.0) -> dict[str, list[int]]:
        """Wait until exactly these numbers of children run per label."""
        def matches() -> dict[str, list[int]] | None:
            kids = self.children()
            counts = {k: len(v) for k, v in kids.items()}
            return kids if counts == expected else None

        try:
            return wait_until(matches, timeout=timeout, interval=0.05,
                              message=f"children {expected}")
        except AssertionError:
            raise AssertionError(f"children {self.children()} != {expected}; log:\n"
                                 f"{self.read_log()[-4000:]}") from None

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self.proc is not None:
            try:  # children that outlived a killed master (tests assert they do not)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.notify.close()
        if hasattr(self, "log"):
            self.log.close()


@pytest.fixture
def masters(tmp_path: Path, redis_url: str, namespace: str) -> Iterator[MasterFactory]:
    factory = MasterFactory(tmp_path, redis_url, namespace)
    yield factory
    for master in factory.started:
        master.stop()


class MasterFactory:
    def __init__(self, tmp: Path, redis_url: str, namespace: str) -> None:
        self.tmp, self.redis_url, self.namespace = tmp, redis_url, namespace
        self.started: list[MasterProcess] = []

    def __call__(self, config: str | None, *, start: bool = True, wait_ready: bool = True,
                 env: dict[str, str] | None = None, name: str | None = None,
                 cwd: Path | None = None) -> MasterProcess:
        name = name or f"master{len(self.started)}"
        master = MasterProcess(self.tmp, self.redis_url, self.namespace, config, env, name, cwd)
        self.started.append(master)
        if start:
            master.start(wait_ready=wait_ready)
        return master


def toml(body: str, **top: object) -> str:
    """A deployment file for the recorder app, with top-level keys first."""
    header = {"app": "tests.apps.recorder:app", "shutdown_timeout": "10s", **top}
    lines = [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {str(value).lower()}"
             for key, value in header.items()]
    return "\n".join(lines).replace("'", '"') + "\n\n" + body
