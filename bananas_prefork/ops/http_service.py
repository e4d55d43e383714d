"""An HTTP server a master runs beside its children (metrics, the dashboard).

It serves from a thread of the master, never from a child: every child closes
its socket after fork (``fileno``), and the master shuts it down last.
"""

from __future__ import annotations

import logging
from socketserver import TCPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..supervisor.master import Master

log = logging.getLogger(__name__)


class HttpService:
    """Subclasses say what they serve (``what``, ``path``) and build the running
    server in ``serve``."""

    what = "http"
    path = "/"

    def __init__(self, port: int, address: str) -> None:
        self.port, self.address = port, address
        self.server: TCPServer | None = None

    def serve(self, master: Master) -> TCPServer:
        """Build the server and start it in a thread; OSError when the port is taken."""
        raise NotImplementedError

    def start(self, master: Master) -> None:
        try:
            self.server = self.serve(master)
        except OSError as exc:
            log.error("cannot serve %s on %s:%d: %s", self.what, self.address, self.port,
                      exc.strerror)
            return
        log.info("%s on http://%s:%d%s", self.what, self.address, self.port, self.path)

    def fileno(self) -> int | None:
        return self.server.fileno() if self.server is not None else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
