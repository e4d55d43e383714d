"""``start``, without the command-line library in the way (see entry.py).

The master's start-up is on the path of every restart, deploy and drain of a
backlog, and importing typer (with pydantic and rich) takes longer than
importing the rest of the master. So ``bananas-prefork start [FILE]`` in its
plain form goes straight to ``run``; every other command line (options,
``--help``, other commands) goes to the full CLI (``cli.py``), whose
``start`` calls the same ``run``.
"""

from __future__ import annotations

from pathlib import Path

from ..core import config as config_module
from ..core import logs
from ..core.config import ConfigError
from ..supervisor import loader
from .exit_codes import EXIT_FAILURE, EXIT_USAGE


class StartError(Exception):
    """Why the master could not run, with the exit code to leave with."""

    def __init__(self, message: object, code: int) -> None:
        super().__init__(str(message))
        self.code = code


def run(file: Path | None, log_level: str | None = None, log_format: str | None = None) -> int:
    """Run the master in the foreground; returns its exit code."""
    from ..core.embedded import RedisUnavailable
    from ..core.errors import RedisRefused
    from ..supervisor.master import Master, Service
    from ..supervisor.pidfile import PidfileError

    try:
        deployment = config_module.load(file)
    except ConfigError as exc:
        raise StartError(exc, EXIT_USAGE) from None
    level = (log_level or deployment.log_level).lower()
    fmt = (log_format or deployment.log_format).lower()
    if level not in ("debug", "info", "warning", "error") or fmt not in ("text", "json"):
        raise StartError("--log-level is debug, info, warning or error; --log-format is text "
                         "or json", EXIT_USAGE)
    logs.setup(level, fmt)
    try:
        app = loader.first_import(deployment)
        services: list[Service] = []
        if deployment.metrics_port is not None:
            from .metrics import MetricsService  # prometheus_client only when asked for

            services.append(MetricsService(deployment.metrics_port, deployment.metrics_bind))
        if deployment.dashboard_port is not None:
            from .dashboard.app import Options
            from .dashboard.server import DashboardService

            services.append(DashboardService(deployment.dashboard_port,
                                             deployment.dashboard_bind, Options.of(deployment),
                                             deployment.alerts))
        return Master(deployment, app, config_path=str(file) if file else None,
                      services=services).run()
    except ConfigError as exc:
        raise StartError(exc, EXIT_USAGE) from None
    except (PidfileError, RedisUnavailable, RedisRefused) as exc:
        raise StartError(exc, EXIT_FAILURE) from None
