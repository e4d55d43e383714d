"""The operating system, faked for the supervisor's unit tests (as gunicorn tests its
arbiter): fork returns made-up pids and never runs a child, kill and waitpid go
through a process table, psutil sees what the test says, and the clocks move
only when the test moves them. The master's and the workforce's decisions then
run in microseconds, deterministically.
"""

from __future__ import annotations

import os
import selectors
import signal
from dataclasses import dataclass, field
from typing import Any

import pytest

from bananas_prefork.core.app import App
from bananas_prefork.core.broker import Broker
from bananas_prefork.core.config import Deployment, from_mapping
from bananas_prefork.core.connection import connect
from bananas_prefork.core.identity import NodeId
from bananas_prefork.supervisor import master as master_module
from bananas_prefork.supervisor import monitor, pool, publisher, scoreboard, timing, workforce
from bananas_prefork.supervisor.master import Master
from bananas_prefork.supervisor.workforce import Workforce

UNREACHABLE = "redis://127.0.0.1:1/0"
_real_pipe = os.pipe  # never contacted: Redis calls are recorded instead


class FakeClock:
    """``time`` for the supervisor's modules: monotonic and wall clocks the test moves."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (an NTP step); monotonic time does not."""
        self.wall += seconds


@dataclass
class FakeProcess:
    """What psutil reports about one fake child."""

    pid: int
    rss_mb: float = 40.0
    cpu: float = 1.0
    alive: bool = True

    def cpu_percent(self, interval: object = None) -> float:
        return self.cpu

    def memory_info(self) -> Any:
        return type("mem", (), {"rss": int(self.rss_mb * 1048576)})()

    def oneshot(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


@dataclass
class FakeOS:
    clock: FakeClock = field(default_factory=FakeClock)
    next_pid: int = 5000
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    signals: list[tuple[int, int]] = field(default_factory=list)  # (pid, signal) sent
    exits: list[tuple[int, int]] = field(default_factory=list)  # (pid, wait status) to reap
    forks: int = 0
    fail_forks: int = 0
    writers: dict[int, int] = field(default_factory=dict)  # report pipe: read end -> write end

    def pipe(self) -> tuple[int, int]:
        """A real pipe whose write end stays open for the test (the master closes its copy
        after fork; the child would keep its own)."""
        read, write = _real_pipe()
        self.writers[read] = os.dup(write)
        return read, write

    def report(self, child: Any, line: bytes) -> None:
        """What a child writes to its master."""
        os.write(self.writers[child.report_fd], line + b"\n")

    def fork(self) -> int:
        if self.fail_forks:
            self.fail_forks -= 1
            raise OSError(11, "Resource temporarily unavailable")
        self.forks += 1
        self.next_pid += 1
        self.processes[self.next_pid] = FakeProcess(self.next_pid)
        return self.next_pid

    def kill(self, pid: int, signum: int) -> None:
        if pid not in self.processes or not self.processes[pid].alive:
            raise ProcessLookupError(pid)
        self.signals.append((pid, signum))
        if signum == 0:
            return
        if signum == signal.SIGKILL:
            self.exit(pid, signal=signal.SIGKILL)

    def exit(self, pid: int, code: int = 0, signal: int | None = None) -> None:
        """The child ends; its status waits to be reaped."""
        self.processes[pid].alive = False
        status = signal if signal is not None else code << 8
        self.exits.append((pid, status))

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        if not self.exits:
            if not any(p.alive for p in self.processes.values()):
                raise ChildProcessError
            return 0, 0
        return self.exits.pop(0)

    def sent(self, signum: int) -> list[int]:
        return [pid for pid, sig in self.signals if sig == signum]

    def psutil_process(self, pid: int) -> FakeProcess:
        if pid not in self.processes:
            import psutil

            raise psutil.NoSuchProcess(pid)
        return self.processes[pid]


class RecordingBroker(Broker):
    """A broker whose Redis calls the tests inspect instead of sending them."""

    def __init__(self) -> None:
        super().__init__(connect(UNREACHABLE), "unit")
        self.recovered: list[tuple[str, bool, str]] = []
        self.renewed: list[list[str]] = []
        self.settled: list[tuple[str, int, str]] = []

    def recover(self, owner: str, *, known_dead: bool, lost_run: bool = True,
                reason: str = "worker lost") -> tuple[int, int]:
        self.recovered.append((owner, lost_run, reason))
        return 0, 0

    def renew_owners(self, owners: Any) -> None:
        self.renewed.append(list(owners))

    def recover_dead_owners(self) -> int:
        return 0


def install(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    """Put a FakeOS under the supervisor's modules for one test."""
    fake = FakeOS()
    for module in (workforce, pool, master_module, timing, publisher, scoreboard):
        monkeypatch.setattr(module, "time", fake.clock)
    monkeypatch.setattr(workforce.os, "fork", fake.fork)
    monkeypatch.setattr(workforce.os, "pipe", fake.pipe)
    monkeypatch.setattr(workforce.os, "kill", fake.kill)
    monkeypatch.setattr(master_module.os, "waitpid", fake.waitpid)
    monkeypatch.setattr(pool.psutil, "Process", fake.psutil_process)
    monkeypatch.setattr(monitor, "sample", lambda process: monitor.Sample(
        process.rss_mb, process.cpu) if process.alive else None)
    return fake


def deployment(text: dict[str, Any] | None = None, **top: Any) -> Deployment:
    data = {"app": "tests.apps.recorder:app", "redis_url": UNREACHABLE, **top, **(text or {})}
    return from_mapping(data, "unit.toml")


def new_workforce(deploy: Deployment, broker: Broker | None = None) -> Workforce:
    app = App(UNREACHABLE, namespace="unit")
    return Workforce(deploy, app, broker or RecordingBroker(), NodeId.new(),
                     selectors.DefaultSelector(), lambda: [])


def new_master(deploy: Deployment, monkeypatch: pytest.MonkeyPatch) -> Master:
    """A master that is RUNNING, whose Redis is recorded and whose reloads read ``deploy``."""
    app = App(UNREACHABLE, namespace="unit")
    master = Master(deploy, app)
    broker = RecordingBroker()
    master.broker = broker
    master.workforce.broker = broker
    master.state = master_module.State.RUNNING
    monkeypatch.setattr(master, "_register_periodic", lambda: None)
    monkeypatch.setattr(master.publisher, "withdraw", lambda: None)
    monkeypatch.setattr(master_module.loader, "reimport_app", lambda d: app)
    return master
