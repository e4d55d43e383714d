"""Plumbing shared by the supervisor benchmarks (master.py, scheduler.py).

- ``Session``: a temp work dir, one private redis-server (killed by its pid at
  exit) and every master started through it (killed by process group at exit),
  also on Ctrl-C, SIGTERM, SIGHUP and errors.
- ``MasterRun``: one real ``python -m bananas_prefork start FILE`` in its own
  session, ready through the systemd notify socket (``NOTIFY_SOCKET`` bound
  here, READY=1 awaited), log in JSON lines (``log_format = "json"``) parsed
  for the master's events ("spawned ...", "... is ready").
- Small statistics helpers (nearest-rank percentiles, as core.py and peers.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:  # run as a script: the project need not be installed
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bananas_prefork.core.embedded import RedisServer  # noqa: E402

Result = dict[str, Any]
COUNTER_DB = 15  # the jobs' own records live in db 15 of the same server (broker: db 0)

SPAWNED = re.compile(r"^spawned (?P<label>\S+) \(pid (?P<pid>\d+)\)$")
READY = re.compile(r"^(?P<label>\S+) \(pid (?P<pid>\d+)\) is ready$")
EXITED = re.compile(r"^(?P<label>\S+) \(pid (?P<pid>\d+)\) (?P<how>(exited|killed) .*)$")


class BenchError(Exception):
    """A benchmark step failed (timeout, a master died, missing samples)."""


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the definition core.py and peers.py use)."""
    k = math.ceil(q * len(sorted_values) - 1e-9) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def distribution(values: Sequence[float], quantiles: Sequence[float] = (0.5, 0.9, 0.99)
                 ) -> Result:
    """n, min, the given nearest-rank percentiles (p50, p90, ...), max and mean."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    out: Result = {"n": len(ordered), "min": ordered[0]}
    for q in quantiles:
        out[f"p{round(q * 100):d}"] = nearest_rank(ordered, q)
    out.update(max=ordered[-1], mean=sum(ordered) / len(ordered))
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def wait_for(condition: Callable[[], Any], timeout: float, message: str,
             interval: float = 0.01) -> Any:
    """Poll until ``condition()`` is truthy; return it, or raise BenchError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timeout after {timeout:g}s: {message}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# A real master
# ---------------------------------------------------------------------------

@dataclass
class LogEvent:
    ts: float  # the master's time.time(), rounded to the ms by its JSON formatter
    role: str
    pid: int
    level: str
    msg: str


@dataclass
class MasterRun:
    """One ``bananas-prefork start FILE`` in its own session (process group)."""

    workdir: Path
    name: str
    config: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    launched_at: float = 0.0  # time.time() just before Popen
    messages: list[tuple[float, str]] = field(default_factory=list)  # (received, text)

    def __post_init__(self) -> None:
        self.config_path = self.workdir / f"{self.name}.toml"
        self.config_path.write_text(self.config)
        self.log_path = self.workdir / f"{self.name}.log"
        self.notify_path = self.workdir / f"{self.name}.notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.05)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} was not started")
        return self.proc.pid

    def start(self) -> float:
        """Launch the master; returns the launch time (time.time())."""
        env = dict(self.env, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "bananas_prefork", "start", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.launched_at = time.time()
            self.proc = subprocess.Popen(argv, cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self.launched_at

    def wait_notify(self, needle: str, timeout: float = 60.0) -> float:
        """Wait for a notify message containing ``needle``; returns when it arrived."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for received, text in self.messages[seen:]:
                if needle in text:
                    return received
            seen = len(self.messages)
            self.poll_notify()
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited (rc={self.proc.returncode}) before "
                                 f"{needle!r}:\n{self.tail()}")
        raise BenchError(f"{self.name}: no {needle!r} within {timeout:g}s:\n{self.tail()}")

    def poll_notify(self) -> None:
        try:
            data = self.notify.recv(4096)
        except (TimeoutError, BlockingIOError):
            return
        self.messages.append((time.time(), data.decode(errors="replace")))

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.name} is not running (rc={rc}):\n{self.tail()}")

    def children(self) -> list[psutil.Process]:
        """Live (non-zombie) children of the master."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        live = []
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                if kid.status() != psutil.STATUS_ZOMBIE:
                    live.append(kid)
        return live

    def events(self) -> list[LogEvent]:
        """The master's and children's JSON log lines, in order."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                data = json.loads(line)
            except ValueError:
                continue
            out.append(LogEvent(float(data.get("ts", 0.0)), str(data.get("role")),
                                int(data.get("pid") or 0), str(data.get("level")),
                                str(data.get("msg", ""))))
        return out

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "    (no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"

    def stop(self, grace: float = 20.0) -> float | None:
        """SIGTERM (graceful stop), SIGKILL the group after ``grace`` s.

        Returns the seconds the graceful stop took (None if it had to be killed).
        Leftover processes of the group are killed in any case.
        """
        if self.proc is None:
            self.close()
            return None
        took: float | None = None
        if self.proc.poll() is None:
            started = time.perf_counter()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
                took = time.perf_counter() - started
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()
        return took

    def kill(self) -> None:
        """SIGKILL the whole process group (master and children)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.notify.close()


def pool_events(events: Sequence[LogEvent]) -> dict[int, dict[str, Any]]:
    """pid -> {label, spawned, ready, exited, how}: a child's life as the master logged it."""
    lives: dict[int, dict[str, Any]] = {}
    for event in events:
        if event.role != "master":
            continue
        for kind, pattern in (("spawned", SPAWNED), ("ready", READY), ("exited", EXITED)):
            match = pattern.match(event.msg)
            if match:
                life = lives.setdefault(int(match.group("pid")), {"label": match.group("label")})
                life.setdefault(kind, event.ts)
                if kind == "exited":
                    life["how"] = match.group("how")
    return lives


# ---------------------------------------------------------------------------
# The session: work dir, redis-server, masters, cleanup
# ---------------------------------------------------------------------------

def counter_url(broker_url: str) -> str:
    return re.sub(r"/\d+$", f"/{COUNTER_DB}", broker_url)


@dataclass
class Session:
    """Everything one benchmark run starts; ``close()`` ends all of it."""

    workdir: Path
    server: RedisServer
    keep_workdir: bool = False
    masters: list[MasterRun] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def counter(self) -> redis.Redis:
        return redis.Redis.from_url(counter_url(self.url), decode_responses=True)

    def master_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("BANANAS_REDIS_URL", "REDIS_URL", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                            "WATCHDOG_PID", "BANANAS_APP")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), str(ROOT),
                                                          os.environ.get("PYTHONPATH")]))
        env["BENCH_COUNTER_URL"] = counter_url(self.url)
        return env

    def master(self, name: str, config: str, env: dict[str, str] | None = None) -> MasterRun:
        run = MasterRun(self.workdir, name, config, dict(self.master_env(), **(env or {})))
        self.masters.append(run)
        return run

    def close(self) -> None:
        for run in self.masters:
            run.kill()
        self.server.kill()
        if self.keep_workdir:
            print(f"work dir kept: {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that kills our children


@contextlib.contextmanager
def session(prefix: str, redis_server: str | None = None,
            keep_workdir: bool = False) -> Iterator[Session]:
    """A private redis-server (AOF off, as core.py) and cleanup of everything on exit."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    server = RedisServer(workdir / "redis", binary=redis_server, appendonly=False)
    current = Session(workdir, server, keep_workdir)
    try:
        server.start()
        yield current
    finally:
        current.close()


def deployment(app: str, url: str, namespace: str, pools: dict[str, dict[str, Any]],
               scheduler: dict[str, Any] | None = None, **top: Any) -> str:
    """A deployment file (TOML) for a benchmark master, JSON log lines."""
    lines = [f"app = {json.dumps(app)}", f"redis_url = {json.dumps(url)}",
             f"namespace = {json.dumps(namespace)}", 'log_format = "json"',
             'shutdown_timeout = "10s"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    lines += ["", "[scheduler]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in (scheduler or {}).items()]
    for name, settings in pools.items():
        lines += ["", f"[pools.{name}]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def machine_info(admin: redis.Redis) -> Result:
    return {
        "redis_version": admin.info("server")["redis_version"],
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        **git_info(),
    }


def git_info() -> Result:
    """The commit measured, and library files that differed from it (others edit live)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"git_commit": git("rev-parse", "HEAD"),
            "git_modified": git("status", "--porcelain", "--", "bananas_prefork").splitlines()}


def write_json(path: Path, data: Result) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def run_main(what: str, prefix: str, namespace: str, opts: Any, app: Any,
             sections: Callable[[Session, Any], Result]) -> int:
    """The main of a benchmark script: a private Redis, the sections, the JSON."""
    try:
        with session(prefix, opts.redis_server, opts.keep_workdir) as sess:
            app.configure(redis_url=sess.url, namespace=namespace)
            info = machine_info(sess.admin())
            print(f"bananas-prefork {what} benchmark: redis {info['redis_version']}, Python "
                  f"{info['python']}, {info['cpus']} CPUs, load {info['load_avg_at_start']}",
                  flush=True)
            results = sections(sess, opts)
            if opts.json:
                write_json(opts.json, {"machine": info, "argv": sys.argv,
                                       "options": {k: v for k, v in vars(opts).items()
                                                   if k != "json"}, "results": results})
    except BenchError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def chosen_sections(parser: Any, only: str, sections: Sequence[str]) -> list[str]:
    """``--only a,b`` as a list, refusing names that are not sections."""
    chosen = [s.strip() for s in only.split(",") if s.strip()]
    unknown = set(chosen) - set(sections)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    return chosen
