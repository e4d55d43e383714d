"""Serving the dashboard: a threaded WSGI server from the standard library, run by
``bananas-prefork dashboard`` in the foreground or by a master beside its children.
"""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ...core.broker import Broker
from ...core.config import AlertsConfig
from ...supervisor.master import Master
from ..http_service import HttpService
from .app import Dashboard, Options

log = logging.getLogger(__name__)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow browser never holds up a stop


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def parse_bind(bind: str, default_port: int = 8765) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` or ``:PORT``; ValueError if not."""
    host, port = bind, str(default_port)
    if bind.startswith("["):
        host, _, rest = bind[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{bind!r}: expected [ADDRESS]:PORT")
            port = rest[1:]
    elif bind.count(":") == 1:
        host, port = bind.split(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{bind!r}: the port must be a number from 1 to 65535")
    return host or "127.0.0.1", int(port)


def make(application: Dashboard, host: str, port: int) -> WSGIServer:
    server_class = _Server6 if ":" in host else _Server
    return make_server(host, port, application, server_class=server_class,
                       handler_class=_Handler)


class DashboardService(HttpService):
    """The dashboard run by a master (``dashboard_port``), in a thread of its own."""

    what = "dashboard"

    def __init__(self, port: int, address: str, options: Options,
                 alerts: AlertsConfig | None = None) -> None:
        super().__init__(port, address)
        self.options, self.alerts = options, alerts
        self.path = f"{options.prefix}/"

    def serve(self, master: Master) -> TCPServer:
        server = make(Dashboard(master.new_broker(), self.options, self.alerts),
                      self.address, self.port)
        threading.Thread(target=server.serve_forever, daemon=True,
                         name="bananas-dashboard").start()
        return server


def serve(broker: Broker, host: str, port: int, options: Options,
          alerts: AlertsConfig | None = None) -> None:
    """Serve in the foreground until interrupted."""
    server = make(Dashboard(broker, options, alerts), host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"bananas-prefork dashboard on http://{shown}:{port}{options.prefix}/ "
          f"(actions {'on, with the token' if options.token else 'off'}; Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
