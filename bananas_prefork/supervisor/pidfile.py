"""The master's pidfile, locked for the master's whole life.

The master holds an exclusive flock on the file while it runs (its children
close their copy of the descriptor), so the lock, not the pid written in it,
says whether a master runs: a second master on the same file fails at once,
and ``stop``/``reload`` never signal a process that merely reuses a dead
master's pid. As a second guard the pid's process must have started before
the file was written, and the signal goes through psutil, which checks that
the process is still the one it looked at.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import psutil


class PidfileError(Exception):
    """Another live master owns the pidfile, or it cannot be written or read."""


def running_master(path: str | os.PathLike[str]) -> psutil.Process | None:
    """The master that holds this pidfile, or None when none does (missing or stale file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError(f"{path}: cannot read the pidfile: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: whatever pid it names is not a master of ours
        except BlockingIOError:
            pass
        text = os.read(fd, 64).decode(errors="replace")
        written = os.fstat(fd).st_mtime
    finally:
        os.close(fd)
    try:
        process = psutil.Process(int(text.split()[0]))
        started_before = process.create_time() <= written + 1.0
    except (ValueError, IndexError, psutil.Error):
        return None
    return process if started_before else None


def signal_master(path: str | os.PathLike[str], signum: int) -> psutil.Process:
    """Send ``signum`` to the master holding the pidfile, and return it. PidfileError
    (one line) when none runs, it exited meanwhile, or we may not signal it."""
    process = running_master(path)
    if process is None:
        raise PidfileError(f"no master is running ({path} is missing or stale)")
    try:
        process.send_signal(signum)  # psutil re-checks that the pid is still this process
    except psutil.NoSuchProcess:
        raise PidfileError(f"master {process.pid} exited before the signal reached it") from None
    except psutil.AccessDenied:
        raise PidfileError(f"not allowed to signal master {process.pid}: run this as the "
                           "user the master runs as (or root)") from None
    return process


class Pidfile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def create(self, pid: int) -> None:
        """Lock the file and write ``pid`` in it; PidfileError when a live master holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while self.fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o644)
                if not self._lock(fd):
                    continue  # we locked a file that its master removed as it exited
                os.ftruncate(fd, 0)
                os.write(fd, f"{pid}\n".encode())
                self.fd = fd
        except OSError as exc:
            raise PidfileError(f"{self.path}: cannot write the pidfile: {exc.strerror}") from None

    def _lock(self, fd: int) -> bool:
        """Take the lock on ``fd``: False (closed) if it is no longer the file at our path."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PidfileError(f"{self.path}: a master is already running (pid {other})") \
                from None
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = -1
        if current != os.fstat(fd).st_ino:
            os.close(fd)
            return False
        return True

    def remove(self) -> None:
        """Remove the file (it is ours: we hold its lock), then let go of the lock."""
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
