"""``bananas-prefork demo``: a master, a load generator and the live status, together.

Both run as real processes, exactly as an operator would run them, so the demo
shows the product rather than a mock-up of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import IO, Any

import redis
from rich.console import Console

from ..core.app import App
from ..core.config import ConfigError, Deployment, load_file
from ..core.connection import DEFAULT_URL, EMBEDDED, environment_url, resolve
from ..core.embedded import RedisUnavailable, refused
from .status import gather
from .status_view import render, watch

READY_TIMEOUT = 60.0


class DemoRunner:
    def __init__(self, rate: float, duration: float | None, config: Path | None) -> None:
        self.rate = rate
        self.duration = duration
        self.config = config or Path(str(resources.files("bananas_prefork") / "examples" /
                                         "demo.toml"))
        self.console = Console()
        self.data_dir = Path(".bananas")
        self.procs: list[subprocess.Popen[bytes]] = []

    def run(self) -> int:
        try:
            deployment = load_file(self.config)
        except ConfigError as exc:
            self.console.print(f"[red]bananas-prefork: {exc}[/red]")
            return 2
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        log_path = self.data_dir / "demo-master.log"
        with open(log_path, "ab") as log:
            master = self._spawn([sys.executable, "-m", "bananas_prefork", "start",
                                  str(self.config)], log, self._master_environment(deployment))
            try:
                app = self._wait_until_up(master, deployment.namespace, log_path)
                if app is None:
                    return 1
                # The URL (and its password) goes in the environment, never on argv: ps
                # shows every process's command line to every user of the machine.
                load = self._spawn([sys.executable, "-m", "bananas_prefork.examples.demo",
                                    "--rate", str(self.rate), "--namespace", app.namespace],
                                   log, dict(os.environ, BANANAS_REDIS_URL=app.redis_url))
                self._show(app, load)
            except KeyboardInterrupt:
                pass
            finally:
                self._stop_all()
        self.console.print(f"stopped; the master's log is in {log_path}")
        return 0

    def _spawn(self, argv: list[str], log: IO[bytes],
               env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _master_environment(deployment: Deployment) -> dict[str, str]:
        """The demo's own choice of Redis: the configured one, else the local one, else an
        embedded one asked for by name (the master's first-run fallback is not needed)."""
        env = dict(os.environ)
        if deployment.redis_url is None and environment_url() is None \
                and refused(DEFAULT_URL):
            env["BANANAS_REDIS_URL"] = EMBEDDED
        return env

    def _wait_until_up(self, master: subprocess.Popen[bytes], namespace: str | None,
                       log_path: Path) -> App | None:
        """Wait for the master's node to appear in Redis; find Redis as a client would."""
        self.console.print(f"starting a master for {self.config} (log: {log_path}) ...")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if master.poll() is not None:
                self.console.print(f"[red]the master exited ({master.returncode}):[/red]\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
                return None
            try:
                app = App(resolve(), namespace=namespace)
                if any(n["pid"] == master.pid for n in gather(app.broker)["nodes"]):
                    return app
            except (RedisUnavailable, redis.RedisError):  # not up yet
                pass
            time.sleep(0.2)
        self.console.print("[red]the master did not come up in time[/red]")
        return None

    def _show(self, app: App, load: subprocess.Popen[Any]) -> None:
        until = time.monotonic() + self.duration if self.duration else None
        if self.console.is_terminal:
            watch(self.console, lambda: gather(app.broker), 1.0, None, until)
        else:
            while until is None or time.monotonic() < until:
                time.sleep(min(2.0, max(0.0, (until or 0) - time.monotonic()) or 2.0))
                if load.poll() is not None:
                    break
            self.console.print(render(gather(app.broker)))
        totals = [p for n in gather(app.broker)["nodes"] for p in n["pools"]]
        done = sum(p["jobs_done"] for p in totals)
        failed = sum(p["jobs_failed"] for p in totals)
        self.console.print(f"jobs done: {done}, failed runs: {failed}")

    def _stop_all(self) -> None:
        """The load first, then the master (graceful: running jobs finish).

        Only the master is signalled: it stops its children and then its embedded
        Redis, in that order. Signalling its whole group would stop them all at once,
        the Redis under the children's feet. The group is killed only if the master
        does not stop in time.
        """
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
