"""The embedded redis-server as a master keeps it: started first, restarted when it
dies, stopped last, and shared with whoever already runs one on the same data dir.

Another process (a master, an ``App()``) may already run this data dir's server:
the master then uses that one rather than fork a second server onto the same
files, and takes its place, on the same address, if it goes away, so the
children reconnect without being told.
"""

from __future__ import annotations

import logging
import os
import time

from ..core.connection import redact
from ..core.embedded import (
    EmbeddedInUse,
    EmbeddedRedis,
    RedisUnavailable,
    answers,
    running_url,
)
from .exits import describe_exit

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0
FAILED_START_DELAY = 5.0


class EmbeddedKeeper:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.server: EmbeddedRedis | None = None  # ours, when we run it
        self.url = running_url(data_dir) or ""
        if not self.url:
            server = EmbeddedRedis(data_dir)
            if server.lock.acquire():
                self.server, self.url = server, server.url
            else:  # another process's server holds the data dir (paused?): share it
                self.url = server.recorded_url() or server.url
        self._next_attempt = 0.0

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server is not None else None

    def tick(self) -> None:
        """Start ours if it is not running (again, after a crash, or in place of a shared
        one that went away); called on every pass of the master's loop."""
        if time.monotonic() < self._next_attempt:
            return
        server = self.server
        if server is None:
            if answers(self.url):
                self._next_attempt = time.monotonic() + RESTART_DELAY
                return
            log.warning("the shared embedded Redis at %s went away; starting ours",
                        redact(self.url))
            server = self.server = EmbeddedRedis(self.data_dir)
        elif server.pid is not None:
            return
        try:
            server.start()
        except EmbeddedInUse as taken:  # another process's server (perhaps paused) has it
            self.server = None
            self.url = taken.url or self.url
            self._next_attempt = time.monotonic() + FAILED_START_DELAY
            log.warning("embedded Redis: %s; using that one", taken)
            return
        except RedisUnavailable as exc:
            self._next_attempt = time.monotonic() + FAILED_START_DELAY
            log.error("embedded Redis: %s", exc)
            return
        log.info("embedded Redis %s running at %s (pid %d, data in %s); commands run from "
                 "this directory find it, elsewhere pass --redis", server.server.binary,
                 redact(server.url), server.pid, server.data_dir)

    def reaped(self, pid: int, status: int) -> bool:
        """Whether ``pid`` (reaped by the master's waitpid) was our server."""
        if self.server is None or pid != self.server.pid:
            return False
        code = os.waitstatus_to_exitcode(status)
        self.server.exited(code)
        self._next_attempt = time.monotonic() + RESTART_DELAY
        log.error("embedded Redis %s; restarting it", describe_exit(code))
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
