"""The deployment: typed, frozen config objects from a TOML file or the environment.

Both paths produce the same ``Deployment``. Every mistake raises
``ConfigError`` naming the source (file or "environment"), the key and, in a
file, the line; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from croniter import croniter

from . import settings as s
from .connection import (
    EMBEDDED,
    URL_FILE_VARIABLE,
    environment_url,
    read_url_file,
    url_problem,
)
from .keys import PRIORITIES, namespace_problem
from .settings import declared, setting

MODES = ("thin", "default", "specialized", "job-specialized", "scheduler-only")
THIN_MAX_CONCURRENCY = 10
_POOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9_.:/@-]{1,200}$")


class ConfigError(Exception):
    """A mistake in the deployment: where it is and what is allowed."""

    def __init__(self, source: str, key: str | None, message: str,
                 line: int | None = None) -> None:
        self.source, self.key, self.message, self.line = source, key, message, line
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def check_schedule(cron: str | None, every: float | None) -> None:
    """ValueError unless exactly one of cron and every is given and valid."""
    if (cron is None) == (every is None):
        raise ValueError('give either cron = "..." or every = "..." (one of them)')
    if cron is not None and not croniter.is_valid(cron):
        raise ValueError(f"{cron!r} is not a valid cron expression (five fields: minute hour "
                         'day month weekday, e.g. "*/5 * * * *")')
    if every is not None and every < 1:
        raise ValueError(f"every must be at least 1s, got {every:g}s")


# -- the config objects --------------------------------------------------------


@dataclass(frozen=True)
class PoolConfig:
    """One pool of identical children."""

    name: str = "default"
    mode: str = setting("default", parse=s.one_of(*MODES), env="WORKER_MODE", help=(
        "What the pool is for: thin (one small process, every priority and type), default "
        "(every job type, priority-aware), specialized (pools per priority), job-specialized "
        "(pools per job type; needs job_types), scheduler-only (runs no jobs)."))
    priorities: tuple[str, ...] = setting(PRIORITIES, parse=s.priorities,
                                          env="WORKER_PRIORITIES", help=(
        "Priorities the pool serves, highest first; a child always takes the oldest job of "
        "the highest non-empty one."))
    concurrency: int = setting(10, parse=s.whole(1), env="WORKER_CONCURRENCY", help=(
        "Jobs the pool runs at once. processes = ceil(concurrency / threads)."))
    threads: int = setting(1, parse=s.whole(1), env="WORKER_THREADS", help=(
        "Threads per child process: more threads for I/O-bound jobs, 1 for CPU-bound ones. "
        "In thin mode this is always the concurrency."))
    job_types: tuple[str, ...] = setting(("*",), parse=s.job_types, env="WORKER_JOB_TYPES",
                                         help=(
        'Job types (task names) the pool runs; "*" for every type. Required, and not "*", '
        "in job-specialized mode."))
    max_jobs_per_child: int | None = setting(None, parse=s.optional(s.whole(1)),
                                             env="WORKER_MAX_JOBS_PER_CHILD", help=(
        "Recycle a child after this many jobs (jittered by up to 10% so a pool's children "
        "do not restart together)."))
    max_memory_mb: int | None = setting(None, parse=s.optional(s.whole(1)),
                                        env="WORKER_MAX_MEMORY_MB", help=(
        "Recycle a child whose RSS passes this, after its current job."))
    max_memory_mb_hard: int | None = setting(None, parse=s.optional(s.whole(1)),
                                             env="WORKER_MAX_MEMORY_MB_HARD", help=(
        "Kill a child at once (SIGKILL) when its RSS passes this: one runaway job must "
        "not take the machine down. Its jobs are recovered."))
    job_timeout: float | None = setting(None, parse=s.optional(s.duration(0.001)),
                                        env="WORKER_JOB_TIMEOUT", help=(
        "Hard time limit of a job in this pool unless its task sets timeout: the child "
        "running it gets TERM, then KILL, and the job is retried or dead by its policy."))

    @property
    def processes(self) -> int:
        if self.mode == "scheduler-only":
            return 0
        return math.ceil(self.concurrency / self.threads)

    @property
    def runs_jobs(self) -> bool:
        return self.processes > 0

    def threads_of(self, index: int) -> int:
        """Threads of the pool's child number ``index``: the last of the declared children
        runs the remainder, so that the pool never runs more than ``concurrency`` jobs
        (``concurrency = 3, threads = 2``: children of 2 and 1). Children added by TTIN
        run ``threads`` each."""
        remainder = self.concurrency % self.threads
        return remainder if remainder and index == self.processes - 1 else self.threads


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler every master runs; one of them leads."""

    enabled: bool = setting(True, parse=s.boolean, env="ENABLE_SCHEDULER", help=(
        "Run a scheduler here. Exactly one scheduler across all masters of a namespace "
        "leads; the others stand by."))
    interval: float = setting(1.0, parse=s.duration(0.01), env="SCHEDULER_INTERVAL", help=(
        "The longest the leader sleeps. It wakes earlier for the next due job and at once "
        "when a job is scheduled sooner, so this bounds lateness only in odd cases."))
    lease: float = setting(10.0, parse=s.duration(1.0), env="SCHEDULER_LEASE", help=(
        "Leader lock lease. A dead leader is replaced within one lease; the leader renews "
        "every third of it."))
    prune_interval: float = setting(300.0, parse=s.duration(1.0),
                                    env="BANANAS_PRUNE_INTERVAL", help=(
        "How often the leader forgets queues found empty at two looks this far apart "
        "(a one-off job type does not stay in status forever) and consumer groups no "
        "consumer fetched for in 10 minutes."))


@dataclass(frozen=True)
class PeriodicConfig:
    """A job enqueued on a schedule, once per tick across all machines."""

    task: str = setting(required=True, parse=s.text, help="Task name to enqueue.")
    name: str | None = setting(None, parse=s.optional_text, help=(
        "Unique name of the entry (default: the task name)."))
    cron: str | None = setting(None, parse=s.optional_text, help=(
        'Cron expression, e.g. "*/5 * * * *" (UTC). Give cron or every.'))
    every: float | None = setting(None, parse=s.optional(s.duration(1.0)), help=(
        'Fixed interval, e.g. "30s". Give cron or every.'))
    priority: str | None = setting(None, parse=s.optional(s.one_of(*PRIORITIES)), help=(
        "Priority of the enqueued jobs (default: the task's, else normal)."))
    args: tuple[Any, ...] = setting((), parse=s.json_list, help="Positional arguments.")
    kwargs: dict[str, Any] = setting(factory=dict, parse=s.json_table,
                                     help="Keyword arguments.")
    catch_up: bool = setting(True, parse=s.boolean, help=(
        "After an outage longer than a tick, run the missed tick once (true) or skip to "
        "the next one (false). Never more than once."))

    @property
    def entry_name(self) -> str:
        return self.name or self.task


@dataclass(frozen=True)
class AlertsConfig:
    """Thresholds for the health warnings of ``status`` (and ``status --check``)."""

    high_depth: int = setting(100, parse=s.whole(1), help=(
        "Alert when more high-priority jobs than this wait (for high_depth_for)."))
    high_depth_for: float = setting(120.0, parse=s.duration(), help=(
        "How long high_depth must hold before the alert fires."))
    depth: int = setting(1000, parse=s.whole(1), help=(
        "Alert when more jobs than this wait in any one queue (for depth_for)."))
    depth_for: float = setting(300.0, parse=s.duration(), help=(
        "How long depth must hold before the alert fires."))
    utilization: float = setting(0.9, parse=s.positive_number, help=(
        "Alert when a pool's busy share of its slots (0-1) stays above this "
        "(for utilization_for)."))
    utilization_for: float = setting(300.0, parse=s.duration(), help=(
        "How long utilization must hold before the alert fires."))


@dataclass(frozen=True)
class Deployment:
    """Everything one master runs."""

    source: str = "environment"
    app: str = setting(required=True, parse=s.text, env="BANANAS_APP", help=(
        'Import path of your App, "package.module:attribute" (attribute defaults to app). '
        "Imported once by check and, before any fork, by start."))
    redis_url: str | None = setting(None, parse=s.text,
                                    env=("BANANAS_REDIS_URL", "REDIS_URL"), help=(
        "Redis URL: redis://, rediss:// (TLS: ssl_ca_certs, ssl_certfile, ssl_keyfile, "
        "ssl_cert_reqs query options), unix:// or redis+sentinel://[[user]:password@]host:"
        "port[,host:port...]/service[/db] (options sentinel_password, sentinel_username, "
        'ssl and the ssl_* ones); a user and password log in as a Redis ACL user. "embedded" '
        "runs a private, supervised redis-server. Unset: redis_url_file, else the "
        "environment (BANANAS_REDIS_URL, BANANAS_REDIS_URL_FILE, REDIS_URL), else "
        "127.0.0.1:6379 (a first run outside systemd with nothing there: embedded)."))
    redis_url_file: str | None = setting(None, parse=s.optional_text, help=(
        "A file holding the Redis URL, read at start and on reload: keeps a password out "
        "of the deployment file, the environment and every command line (e.g. a systemd "
        "credential). Give redis_url or redis_url_file, not both."))
    namespace: str | None = setting(None, parse=s.text, env="BANANAS_NAMESPACE", help=(
        "Key prefix, so several deployments can share one Redis. Unset: the App's own "
        '(default "bananas").'))
    shutdown_timeout: float = setting(30.0, parse=s.duration(), env="BANANAS_SHUTDOWN_TIMEOUT",
                                      help=(
        "Graceful stop budget: running jobs get this long to finish; unfinished ones "
        "return to their queues."))
    pidfile: str | None = setting(None, parse=s.optional_text, env="BANANAS_PIDFILE", help=(
        "Where start writes the master's pid; reload and stop read it."))
    owner_ttl: float = setting(30.0, parse=s.duration(3.0), env="BANANAS_OWNER_TTL", help=(
        "Liveness lease of a child's jobs. The master renews it; jobs of a machine that "
        "died are back in their queues within this long (found by the scheduler leader)."))
    min_replicas_ack: int = setting(0, parse=s.whole(0), env="BANANAS_MIN_REPLICAS_ACK",
                                    help=(
        "Durability across a failover: enqueue and every settle wait (WAIT) until this "
        "many replicas have the write, and retry it when fewer confirm within a second. "
        "0: Redis' asynchronous replication, where a failover can drop the last writes "
        "acknowledged by the old primary. Costs a replication round trip per job."))
    max_redeliveries: int = setting(3, parse=s.whole(1), env="BANANAS_MAX_REDELIVERIES",
                                    help=(
        "A job whose child died under it this many times goes to the dead letters as a "
        "poison pill (see docs/guarantees.md for what a crash charges)."))
    result_ttl: float = setting(3600.0, parse=s.duration(), env="BANANAS_RESULT_TTL", help=(
        "How long a succeeded job's result is kept (with its name, state, attempts, "
        "redeliveries and finish time; 0: not at all)."))
    done_ttl: float = setting(300.0, parse=s.duration(), env="BANANAS_DONE_TTL", help=(
        "How long a job that succeeded with nothing to keep (a None result, or a task "
        "with store_result=False) is still known: a compact note of its state, attempts "
        "and finish time, 30 to 50 bytes (0: not at all)."))
    dead_ttl: float = setting(7 * 86400.0, parse=s.duration(1.0), env="BANANAS_DEAD_TTL",
                              help="How long dead jobs are kept.")
    dead_max: int = setting(10_000, parse=s.whole(1), env="BANANAS_DEAD_MAX", help=(
        "The most dead jobs kept; past it the oldest go first, so a storm of failures "
        "cannot fill Redis."))
    preload_app: bool = setting(True, parse=s.boolean, env="BANANAS_PRELOAD_APP", help=(
        "true: the master imports the app once and forks children from it (they share its "
        "memory copy-on-write and start fast); HUP and USR2 still load fresh code, because "
        "the master re-imports the app before forking new children. false: every child "
        "imports the app itself after fork (more memory, slower starts, each child "
        "always on the code on disk)."))
    max_restart_backoff: float = setting(30.0, parse=s.duration(0.1),
                                         env="BANANAS_MAX_RESTART_BACKOFF", help=(
        "Cap of the per-pool restart backoff of children that keep failing."))
    log_level: str = setting("info", parse=s.one_of("debug", "info", "warning", "error"),
                             env="BANANAS_LOG_LEVEL", help="Log level of the master and children.")
    log_format: str = setting("text", parse=s.one_of("text", "json"), env="BANANAS_LOG_FORMAT",
                              help="text for people, json (one object per line) for shippers.")
    metrics_port: int | None = setting(None, parse=s.optional(s.whole(1, 65535)),
                                       env="BANANAS_METRICS_PORT", help=(
        "Serve Prometheus metrics on this port (unset: no metrics server)."))
    metrics_bind: str = setting("127.0.0.1", parse=s.text, env="BANANAS_METRICS_BIND",
                                help="Address the metrics server listens on.")
    dashboard_port: int | None = setting(None, parse=s.optional(s.whole(1, 65535)),
                                         env="BANANAS_DASHBOARD_PORT", help=(
        "Serve the web dashboard on this port (unset: no dashboard in the master; "
        "bananas-prefork dashboard serves one on its own)."))
    dashboard_bind: str = setting("127.0.0.1", parse=s.text, env="BANANAS_DASHBOARD_BIND",
                                  help=(
        "Address the dashboard listens on. Loopback by default: put a reverse proxy with "
        "TLS in front, or set dashboard_auth, before exposing it."))
    dashboard_prefix: str = setting("", parse=s.url_prefix, env="BANANAS_DASHBOARD_PREFIX",
                                    help=(
        'Path the dashboard is served under behind a reverse proxy, e.g. "/bananas" '
        "(unset: the proxy's X-Forwarded-Prefix header, else the root)."))
    dashboard_auth: str | None = setting(None, parse=s.optional(s.credentials),
                                         env="BANANAS_DASHBOARD_AUTH", help=(
        '"user:password" that every dashboard page asks for (HTTP basic auth; use TLS); '
        "unset: whoever reaches the address can read. Prefer the environment variable."))
    dashboard_token: str | None = setting(None, parse=s.optional(s.secret),
                                          env="BANANAS_DASHBOARD_TOKEN", help=(
        "Enables the dashboard's actions (retry and delete dead jobs) and is the token they "
        "need (at least 16 characters); unset: the dashboard only reads. Prefer the "
        "environment variable."))
    dashboard_show_args: bool = setting(False, parse=s.boolean,
                                        env="BANANAS_DASHBOARD_SHOW_ARGS", help=(
        "Show job arguments on the dashboard's job pages (they may hold secrets)."))
    node_ttl: float = setting(60.0, parse=s.duration(6.0), env="BANANAS_NODE_TTL", help=(
        "How long status keeps showing a master that stopped reporting (as lost) before "
        "dropping it."))
    hang_timeout: float = setting(60.0, parse=s.duration(5.0), env="BANANAS_HANG_TIMEOUT",
                                  help=(
        "Replace a child when one of its loops (a job slot waiting for work, its scheduler, "
        "its main loop) shows no life for this long: deadlocked or stuck in a call. A slot "
        "running a job is judged by the job's hard limit instead."))
    data_dir: str = setting(".bananas", parse=s.text, env="BANANAS_DATA_DIR", help=(
        "Directory of the embedded redis-server's data (AOF) and socket."))
    scheduler: SchedulerConfig = SchedulerConfig()
    alerts: AlertsConfig = AlertsConfig()
    periodic: tuple[PeriodicConfig, ...] = ()
    pools: tuple[PoolConfig, ...] = (PoolConfig(),)

    def pool(self, name: str) -> PoolConfig:
        return next(p for p in self.pools if p.name == name)


TABLES = {"scheduler": SchedulerConfig, "alerts": AlertsConfig}


# -- locating keys in the TOML text ---------------------------------------------------


class KeyLocator:
    """Finds the line of a key in TOML source (tomllib does not keep positions)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        arrays: dict[tuple[str, ...], int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                path = self._split(header.group(2))
                if header.group(1) == "[[":
                    index = arrays.get(path, -1) + 1
                    arrays[path] = index
                    path = (*path, str(index))
                table = path
                for end in range(1, len(path) + 1):  # [pools.a] also locates "pools"
                    self.lines.setdefault(path[:end], number)
                continue
            key = self._KEY.match(line)
            if key:
                self.lines.setdefault((*table, *self._split(key.group(1))), number)

    @staticmethod
    def _split(dotted: str) -> tuple[str, ...]:
        return tuple(part.strip().strip("\"'") for part in dotted.split("."))

    def line(self, *path: str | int) -> int | None:
        parts = tuple(str(p) for p in path)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return None


# -- building objects from raw values --------------------------------------------------

T = TypeVar("T")


@dataclass
class _Reader:
    """Turns raw tables into config objects, raising ConfigError at the right place."""

    source: str
    locator: KeyLocator | None = None

    def error(self, path: tuple[str | int, ...], message: str) -> ConfigError:
        line = self.locator.line(*path) if self.locator else None
        return ConfigError(self.source, _dotted(path), message, line)

    def build(self, cls: type[T], raw: Mapping[str, Any], path: tuple[str | int, ...],
              **fixed: Any) -> T:
        fields = {f.name: f for f in declared(cls)}
        if not isinstance(raw, Mapping):
            raise self.error(path, f"must be a table, got {raw!r}")
        for key in raw:
            if key not in fields:
                raise self.error((*path, key), _unknown(key, [*fields, *_sub_tables(cls)]))
        values: dict[str, Any] = dict(fixed)
        for name, field in fields.items():
            if name in raw:
                try:
                    values[name] = field.metadata["parse"](raw[name])
                except ValueError as exc:
                    raise self.error((*path, name), str(exc)) from None
            elif field.metadata["required"]:
                raise self.error((*path, name), "is required")
        return cls(**values)


def _sub_tables(cls: type) -> list[str]:
    return [*TABLES, "periodic", "pools"] if cls is Deployment else []


def _unknown(key: str, valid: list[str]) -> str:
    suggestion = s.closest(key, valid)
    hint = f"; did you mean {suggestion!r}?" if suggestion else \
        f"; valid keys: {', '.join(valid)}"
    return f"unknown key{hint}"


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# -- the file path ----------------------------------------------------------------------


def load_file(path: str | os.PathLike[str]) -> Deployment:
    """Read and validate a deployment file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, None, "is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(match.group(1)) if match else None
        raise ConfigError(source, None, f"invalid TOML: {message}", line) from None
    return from_mapping(data, source, KeyLocator(text))


def from_mapping(data: Mapping[str, Any], source: str,
                 locator: KeyLocator | None = None) -> Deployment:
    """Validate parsed TOML (also used by tests) into a Deployment."""
    reader = _Reader(source, locator)
    top = {k: v for k, v in data.items() if k not in (*TABLES, "periodic", "pools")}
    tables: dict[str, Any] = {name: reader.build(cls, data.get(name, {}), (name,))
                              for name, cls in TABLES.items()}
    deployment = reader.build(Deployment, top, (), source=source, **tables,
                              periodic=_periodic(reader, data.get("periodic", [])),
                              pools=_pools(reader, data))
    return _checked(deployment, reader)


def _pools(reader: _Reader, data: Mapping[str, Any]) -> tuple[PoolConfig, ...]:
    if "pools" not in data:
        return (PoolConfig(),)
    raw = data["pools"]
    if not isinstance(raw, Mapping):
        raise reader.error(("pools",), "must be a table of [pools.<name>] tables")
    if not raw:
        raise reader.error(("pools",), "is empty: declare at least one [pools.<name>] table, "
                                       "or leave [pools] out for one default pool")
    pools = []
    for name, table in raw.items():
        if not _POOL_NAME.match(name):
            raise reader.error(("pools", name), "pool names use letters, digits, '.', '_', '-'")
        pool = reader.build(PoolConfig, table, ("pools", name), name=name)
        pools.append(_checked_pool(pool, reader, ("pools", name)))
    return tuple(pools)


def _periodic(reader: _Reader, raw: Any) -> tuple[PeriodicConfig, ...]:
    if not isinstance(raw, list):
        raise reader.error(("periodic",), "must be an array of [[periodic]] tables")
    entries = []
    for index, table in enumerate(raw):
        path: tuple[str | int, ...] = ("periodic", index)
        entry = reader.build(PeriodicConfig, table, path)
        try:
            check_schedule(entry.cron, entry.every)
        except ValueError as exc:
            raise reader.error((*path, "cron") if entry.cron else path, str(exc)) from None
        if not _ENTRY_NAME.match(entry.entry_name):
            raise reader.error((*path, "name"), "use letters, digits and . _ - : / @")
        entries.append(entry)
    names = [e.entry_name for e in entries]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise reader.error(("periodic", index), f"a second entry named {name!r}; give each "
                                                    "entry with the same task its own name")
    return tuple(entries)


def _checked_pool(pool: PoolConfig, reader: _Reader,
                  path: tuple[str | int, ...]) -> PoolConfig:
    """Apply what each mode implies; reject combinations that contradict it."""
    every_type = pool.job_types == ("*",)
    if pool.runs_jobs and pool.threads > pool.concurrency:
        raise reader.error((*path, "threads"), f"threads ({pool.threads}) cannot exceed "
                           f"concurrency ({pool.concurrency})")
    if pool.mode == "thin":
        if not 1 <= pool.concurrency <= THIN_MAX_CONCURRENCY:
            raise reader.error((*path, "concurrency"), "thin mode runs 1 to 10 jobs at once "
                               f"(one process); got {pool.concurrency}")
        if not every_type or set(pool.priorities) != set(PRIORITIES):
            key = "job_types" if not every_type else "priorities"
            raise reader.error((*path, key), "thin mode serves every priority and job type")
        return dataclasses.replace(pool, threads=pool.concurrency)
    if pool.mode == "job-specialized" and every_type:
        raise reader.error((*path, "job_types"), "job-specialized mode needs the job types "
                           'this pool runs, e.g. job_types = ["generate_report"] (not "*")')
    if pool.mode in ("default", "specialized") and not every_type:
        raise reader.error((*path, "job_types"), f"{pool.mode} mode runs every job type; use "
                           "mode = \"job-specialized\" to restrict job_types")
    if pool.max_memory_mb_hard is not None and pool.max_memory_mb is not None \
            and pool.max_memory_mb_hard <= pool.max_memory_mb:
        raise reader.error((*path, "max_memory_mb_hard"), "must be above max_memory_mb "
                           f"({pool.max_memory_mb})")
    return pool


def _checked(deployment: Deployment, reader: _Reader) -> Deployment:
    if not any(pool.runs_jobs for pool in deployment.pools) and not deployment.scheduler.enabled:
        raise reader.error(("scheduler", "enabled"), "nothing to run: every pool is "
                           "scheduler-only and the scheduler is disabled")
    if deployment.alerts.utilization > 1:
        raise reader.error(("alerts", "utilization"), "is a share between 0 and 1")
    deployment = _url_from_file(deployment, reader)
    if deployment.redis_url not in (None, EMBEDDED) and (
            problem := url_problem(deployment.redis_url or "")):
        key = "redis_url_file" if deployment.redis_url_file else "redis_url"
        raise reader.error((key,), problem)
    if deployment.namespace is not None and (problem := namespace_problem(deployment.namespace)):
        raise reader.error(("namespace",), problem)
    _check_environment_fallbacks(deployment)
    return deployment


def _url_from_file(deployment: Deployment, reader: _Reader) -> Deployment:
    """``redis_url_file`` read into ``redis_url``, so everything downstream sees one URL."""
    if deployment.redis_url_file is None:
        return deployment
    if deployment.redis_url is not None:
        raise reader.error(("redis_url_file",), "give redis_url or redis_url_file, not both")
    try:
        url = read_url_file(deployment.redis_url_file)
    except ValueError as exc:
        raise reader.error(("redis_url_file",), str(exc)) from None
    return dataclasses.replace(deployment, redis_url=url)


def _check_environment_fallbacks(deployment: Deployment) -> None:
    """What the environment supplies where the deployment is silent must be usable too."""
    try:
        found = environment_url() if deployment.redis_url is None else None
    except ValueError as exc:
        source, _, message = str(exc).partition(": ")
        raise ConfigError("environment", source, message) from None
    if found and found[1] != EMBEDDED and (problem := url_problem(found[1])):
        raise ConfigError("environment", found[0], problem)
    # Checked even when the file names a namespace: the App() in the application
    # module reads it at import and would fail there, blaming the import.
    namespace = os.environ.get("BANANAS_NAMESPACE")
    if namespace and (problem := namespace_problem(namespace)):
        raise ConfigError("environment", "BANANAS_NAMESPACE", problem)


# -- the environment path ---------------------------------------------------------------


def load_environment(environ: Mapping[str, str] | None = None,
                     dotenv: str | os.PathLike[str] | None = ".env") -> Deployment:
    """One pool from WORKER_* variables (the real environment wins over ``.env``)."""
    values: dict[str, str] = {}
    if dotenv is not None and Path(dotenv).is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    if values.get(URL_FILE_VARIABLE) and not values.get("BANANAS_REDIS_URL"):
        try:  # the file stands in for BANANAS_REDIS_URL (and so wins over REDIS_URL)
            values["BANANAS_REDIS_URL"] = read_url_file(values[URL_FILE_VARIABLE])
        except ValueError as exc:
            raise ConfigError("environment", URL_FILE_VARIABLE, str(exc)) from None
    reader = _Reader("environment")
    used: dict[str, str] = {}  # setting -> the variable that gave it

    def raw_for(cls: type) -> dict[str, Any]:
        raw = {}
        for field in declared(cls):
            for name in _env_names(field):
                if values.get(name):  # an empty variable counts as unset
                    is_list = str(field.metadata.get("kind", "")).startswith("list")
                    raw[field.name] = s.split_list(values[name]) if is_list else values[name]
                    used[field.name] = name
                    break
        return raw

    def build(cls: type[T], **fixed: Any) -> T:
        try:
            return reader.build(cls, raw_for(cls), (), **fixed)
        except ConfigError as exc:
            raise _env_error(cls, exc, used) from None

    pool = build(PoolConfig)
    pool = _env_checked(lambda: _checked_pool(pool, reader, ()), PoolConfig, used)
    pool = dataclasses.replace(pool, name=pool.mode)
    deployment = build(Deployment, source="environment", scheduler=build(SchedulerConfig),
                       pools=(pool,))
    return _env_checked(lambda: _checked(deployment, reader), Deployment, used)


def _env_names(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    env = field.metadata.get("env")
    if env is None:
        return ()
    return (env,) if isinstance(env, str) else tuple(env)


def _env_error(cls: type, exc: ConfigError, used: Mapping[str, str]) -> ConfigError:
    """Name the environment variable (the one that was set) rather than the setting."""
    name = (exc.key or "").split(".")[-1]
    for field in declared(cls):
        if field.name == name and _env_names(field):
            message = exc.message
            if message == "is required" and field.name == "app":
                message = ("is required: set it to your App's import path, e.g. "
                           "myproject.tasks:app (or pass a deployment file)")
            return ConfigError("environment", used.get(field.name, _env_names(field)[0]),
                               message)
    return exc


def _env_checked(check: Any, cls: type, used: Mapping[str, str]) -> Any:
    try:
        return check()
    except ConfigError as exc:
        raise _env_error(cls, exc, used) from None


def error_at(deployment: Deployment, key: str, message: str) -> ConfigError:
    """A mistake about one top-level setting of a loaded deployment, with its line."""
    if deployment.source == "environment":
        field = next(f for f in declared(Deployment) if f.name == key)
        return ConfigError("environment", _env_names(field)[0], message)
    return _Reader(deployment.source, _locator_for(deployment.source)).error((key,), message)


def _locator_for(source: str) -> KeyLocator | None:
    try:
        return KeyLocator(Path(source).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def load(path: str | os.PathLike[str] | None) -> Deployment:
    """A deployment file if given, else the environment (and ``.env``)."""
    return load_file(path) if path is not None else load_environment()


def describe(deployment: Deployment) -> list[str]:
    """Human summary lines, as ``check`` prints them."""
    lines = []
    for pool in deployment.pools:
        if pool.runs_jobs:
            lines.append(f"pool {pool.name}: {pool.mode}, {pool.processes} process(es) x "
                         f"{pool.threads} thread(s), priorities {','.join(pool.priorities)}, "
                         f"job types {','.join(pool.job_types)}")
        else:
            lines.append(f"pool {pool.name}: scheduler-only (runs no jobs)")
    sched = deployment.scheduler
    lines.append(f"scheduler: {'on' if sched.enabled else 'off'}, interval {sched.interval:g}s, "
                 f"lease {sched.lease:g}s, {len(deployment.periodic)} periodic entr"
                 f"{'y' if len(deployment.periodic) == 1 else 'ies'}")
    return lines
