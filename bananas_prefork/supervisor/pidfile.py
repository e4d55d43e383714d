"""The master's pidfile: written atomically, removed on exit, stale ones detected."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psutil


class PidfileError(Exception):
    """Another live master owns the pidfile, or it cannot be written."""


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid in the file if that process is alive and is a bananas-prefork master."""
    try:
        pid = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_master(pid) else None


def is_master(pid: int) -> bool:
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "bananas-prefork" in cmdline or "bananas_prefork" in cmdline


class Pidfile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.pid: int | None = None

    def create(self, pid: int) -> None:
        """Write ``pid`` atomically; a live master's file is refused, a stale one replaced."""
        other = read_pid(self.path)
        if other is not None and other != pid:
            raise PidfileError(f"{self.path}: a master is already running (pid {other})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pid-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{pid}\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise PidfileError(f"{self.path}: cannot write the pidfile: {exc.strerror}") from None
        self.pid = pid

    def remove(self) -> None:
        """Remove the file if it is still ours."""
        try:
            if self.pid is not None and int(self.path.read_text().strip()) == self.pid:
                self.path.unlink()
        except (OSError, ValueError):
            pass
