"""The systemd notify protocol: a datagram to $NOTIFY_SOCKET, nothing more.

READY=1 once every pool is up, RELOADING=1 / READY=1 around a reload,
STOPPING=1, STATUS= a one-line summary, WATCHDOG=1 when $WATCHDOG_USEC asks.
Without $NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and \
            (not pid or pid == str(os.getpid())) else None
        self._next_watchdog = 0.0
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> None:
        if not self.address:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.set_inheritable(False)
        try:
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd went away; nothing we can do about it

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        monotonic_usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        """Pet the watchdog at half its interval; call from every loop pass."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now >= self._next_watchdog:
            self.notify("WATCHDOG=1")
            self._next_watchdog = now + self.watchdog_interval

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
