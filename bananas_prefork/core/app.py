"""The application's side: ``App``, ``@app.task`` and the enqueue API.

Enqueuing validates and encodes everything before touching Redis, so a bad
priority, a non-JSON argument or a malformed time raises ``ValueError`` and
writes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Generic, ParamSpec, TypeVar

from . import job as jobs
from .broker import Broker, EnqueueBatch, NewJob
from .config import PeriodicConfig, check_schedule
from .connection import EMBEDDED, connect, resolve, url_problem
from .durations import parse_duration
from .job import JobInfo
from .keys import PRIORITIES, namespace_problem
from .retry import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX, DEFAULT_MAX_RETRIES, RetryPolicy
from .settings import whole

P = ParamSpec("P")
R = TypeVar("R")

_NAME = re.compile(r"^[A-Za-z0-9_.:/@-]{1,200}$")
_JOB_ID_FORBIDDEN = frozenset(" ,{}")


class Task(Generic[P, R]):
    """A registered function and its defaults; calling it runs it here and now.

    ``@app.task`` returns one. The child running a job applies its ``max_retries``,
    ``timeout`` and backoff to every job of its name, however enqueued, unless
    the enqueue call overrode them; its ``priority`` applies where the
    enqueuing process knows the task.
    """

    def __init__(self, app: App, fn: Callable[P, R], *, name: str, priority: str,
                 timeout: float | None, retry: RetryPolicy, store_result: bool = True) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.priority = priority
        self.timeout = timeout
        self.retry = retry
        self.store_result = store_result
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue with the task's defaults; returns the job id.

        The arguments are the task's own, so no enqueue option fits here: use
        ``enqueue_with`` for a priority, a delay or a job id.
        """
        return self.app.enqueue(self.name, args=list(args), kwargs=dict(kwargs))

    def enqueue_with(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                     **options: Any) -> str:
        """Enqueue with per-job options (priority, delay, at, job_id, max_retries, timeout)."""
        return self.app.enqueue(self.name, args=args, kwargs=kwargs, **options)

    def __repr__(self) -> str:
        return f"<Task {self.name} priority={self.priority}>"


class App:
    """A registry of tasks bound to a Redis namespace.

    Without arguments it connects where the environment says: ``BANANAS_REDIS_URL``,
    ``BANANAS_REDIS_URL_FILE`` or ``REDIS_URL`` (else the embedded default),
    ``BANANAS_NAMESPACE`` (else ``bananas``) and ``BANANAS_MIN_REPLICAS_ACK`` (else 0),
    the same rules the command line follows. Nothing connects until the first
    enqueue or read. In processes a master starts, the deployment file's settings
    replace these.

    Args:
        redis_url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
            ``"embedded"``.
        namespace: key prefix, so several deployments can share one Redis.
        result_ttl: seconds a succeeded job's result is kept (0: not at all).
        done_ttl: seconds a job that succeeded with nothing to keep (a ``None``
            result, or a task with ``store_result=False``) is still known, as a
            compact note of its state, attempts and finish time (0: not at all).
        dead_ttl: seconds a dead job is kept.
        dead_max: the most dead jobs kept; past it the oldest go first.
        owner_ttl: seconds after which the jobs of a consumer that stopped
            renewing its liveness go back to their queues.
        max_redeliveries: lost runs (its child died) before a job is dead.
        max_payload_bytes: the largest arguments (as JSON) one job may carry.
        min_replicas_ack: replicas that must confirm each enqueue and settle
            (``WAIT``) before it counts as done; 0 for none.
    """

    def __init__(self, redis_url: str | None = None, namespace: str | None = None, *,
                 result_ttl: float = 3600, done_ttl: float = 300,
                 dead_ttl: float = 7 * 86400, dead_max: int = 10_000,
                 owner_ttl: float = 30.0, max_redeliveries: int = 3,
                 max_payload_bytes: int = 512 * 1024,
                 min_replicas_ack: int | None = None) -> None:
        self._redis_url = redis_url
        if redis_url not in (None, EMBEDDED) and (problem := url_problem(redis_url)):
            raise ValueError(f"redis_url: {problem}")
        self.namespace = namespace or os.environ.get("BANANAS_NAMESPACE") or "bananas"
        if problem := namespace_problem(self.namespace):
            raise ValueError(problem if namespace else f"BANANAS_NAMESPACE: {problem}")
        self.result_ttl = result_ttl
        self.done_ttl = done_ttl
        self.dead_ttl = dead_ttl
        self.dead_max = dead_max
        self.owner_ttl = owner_ttl
        self.max_redeliveries = max_redeliveries
        self.max_payload_bytes = max_payload_bytes
        self.min_replicas_ack = _check_replicas_ack(min_replicas_ack)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.periodic_entries: list[PeriodicConfig] = []

    # -- configuration -------------------------------------------------------

    @property
    def redis_url(self) -> str:
        """The URL in use, resolved (and the embedded server started) on first use."""
        if self._redis_url is None:
            self._redis_url = resolve(start_embedded=True)
        return self._redis_url

    def configure(self, *, redis_url: str | None = None, namespace: str | None = None,
                  **settings: Any) -> None:
        """Override connection settings (the master does this in its children)."""
        if redis_url is not None:
            self._redis_url = redis_url
        if namespace is not None:
            self.namespace = namespace
        for name, value in settings.items():
            if not hasattr(self, name):
                raise TypeError(f"unknown App setting {name!r}")
            setattr(self, name, value)
        self.__dict__.pop("broker", None)

    @cached_property
    def broker(self) -> Broker:
        return self.new_broker()

    def new_broker(self, *, socket_timeout: float = 10.0, retries: int = 3) -> Broker:
        """A broker on a client of its own, with this App's connection and settings."""
        client = connect(self.redis_url, socket_timeout=socket_timeout, retries=retries)
        return Broker(client, self.namespace, result_ttl=int(self.result_ttl),
                      done_ttl=int(self.done_ttl), dead_ttl=int(self.dead_ttl),
                      dead_max=int(self.dead_max), owner_ttl=self.owner_ttl,
                      max_redeliveries=self.max_redeliveries,
                      min_replicas_ack=self.min_replicas_ack)

    # -- tasks ---------------------------------------------------------------

    def task(self, fn: Callable[P, R] | None = None, *, name: str | None = None,
             priority: str = "normal", max_retries: int = DEFAULT_MAX_RETRIES,
             timeout: float | str | None = None, retry_backoff: float | str = DEFAULT_BACKOFF,
             retry_backoff_max: float | str = DEFAULT_BACKOFF_MAX,
             store_result: bool = True) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., ...)``.

        Args:
            name: the task name, which is the job type (default: the function's name).
            priority: ``high``, ``normal`` or ``low``, for jobs enqueued without one.
            max_retries: failed runs retried before the job is dead (0: none).
            timeout: hard limit of one run, seconds or a duration string; the
                child running it is killed and the run fails by this policy.
            retry_backoff: the first retry's delay; each next one doubles, with jitter.
            retry_backoff_max: the longest delay between two runs.
            store_result: False to keep no result (the job is then known for
                ``done_ttl`` as succeeded, with its attempts and finish time,
                like one that returned ``None``).
        """

        def register(func: Callable[P, R]) -> Task[P, R]:
            task_name = _check_name(name or func.__name__)
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ValueError(f"task {task_name!r} is already registered")
            retry = RetryPolicy(_check_retries(max_retries), parse_duration(retry_backoff),
                                parse_duration(retry_backoff_max))
            task = Task(self, func, name=task_name, priority=_check_priority(priority),
                        timeout=_check_timeout(timeout), retry=retry,
                        store_result=bool(store_result))
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(self, *, cron: str | None = None, every: float | str | None = None,
                 name: str | None = None, priority: str | None = None,
                 args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                 catch_up: bool = True) -> Callable[[Any], Any]:
        """Run a task on a schedule, declared in code: ``@app.periodic(every="1h")``.

        Stack it on ``@app.task`` (or on a plain function, which becomes a task).
        Masters register it with the schedule in Redis, like a file's
        ``[[periodic]]`` entry (which wins on the same name); the arguments are
        that entry's keys. Give ``cron`` (UTC) or ``every``.
        """
        seconds = parse_duration(every) if every is not None else None
        check_schedule(cron, seconds)
        if priority is not None:
            _check_priority(priority)

        def register(target: Any) -> Any:
            task = target if isinstance(target, Task) else self.task(target)
            entry = PeriodicConfig(task=task.name, name=name, cron=cron, every=seconds,
                                   priority=priority, args=tuple(args),
                                   kwargs=dict(kwargs or {}), catch_up=catch_up)
            _check_name(entry.entry_name)
            self.periodic_entries.append(entry)
            return task

        return register

    # -- enqueueing ----------------------------------------------------------

    def enqueue(self, name: str, args: Sequence[Any] | None = None,
                kwargs: dict[str, Any] | None = None, *, priority: str | None = None,
                delay: float | str | timedelta | None = None, at: datetime | None = None,
                job_id: str | None = None, max_retries: int | None = None,
                timeout: float | str | None = None) -> str:
        """Enqueue one job by task name; returns its id (the given one if it existed).

        The task's code is not needed here; its defaults apply when this app
        knows the task. Everything is checked before Redis is touched.

        Args:
            priority: ``high``, ``normal`` or ``low`` (default: the task's, else normal).
            delay: run no earlier than this: seconds, a duration string or a timedelta.
            at: run no earlier than this time (a naive datetime is UTC); not with delay.
            job_id: idempotency key (1-200 characters, no whitespace, commas or
                braces): while a job with this id exists, nothing is enqueued.
            max_retries: overrides the task's for this job.
            timeout: overrides the task's (and the pool's) hard limit for this job.

        Raises:
            ValueError: a bad priority, name, time, id or a non-JSON argument.
        """
        job = self.new_job(name, args, kwargs, priority=priority, delay=delay, at=at,
                           job_id=job_id, max_retries=max_retries, timeout=timeout)
        self.broker.enqueue([job])
        return job.id

    def enqueue_many(self, items: Iterable[Sequence[Any]]) -> list[str]:
        """Enqueue a batch in one round trip, in order, as atomic parts of 1000 jobs
        (a bad item raises before anything is written).

        Each item is ``(name, args)``, ``(name, args, kwargs)`` or
        ``(name, args, kwargs, options)`` where options are enqueue()'s keywords.
        """
        batch = EnqueueBatch(self.broker.prefix)
        ids = []
        plain = _PlainItems(self, batch)
        for index, item in enumerate(items):
            job_id = plain.add(item)
            if job_id is None:
                job = self._new_job_from_item(item, index)
                batch.add_job(job)
                job_id = job.id
            ids.append(job_id)
        self.broker.enqueue_batch(batch)
        return ids

    def _new_job_from_item(self, item: Sequence[Any], index: int) -> NewJob:
        if isinstance(item, str | bytes) or not 2 <= len(item) <= 4:
            raise ValueError(f"item {index}: expected (name, args[, kwargs[, options]])")
        name, args, *rest = item
        kwargs = rest[0] if rest else None
        options = rest[1] if len(rest) > 1 else {}
        if not isinstance(options, dict):
            raise ValueError(f"item {index}: options must be a dict")
        try:
            return self.new_job(name, args, kwargs, **options)
        except TypeError as exc:
            raise ValueError(f"item {index}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"item {index}: {exc}") from None

    def new_job(self, name: str, args: Sequence[Any] | None = None,
                kwargs: dict[str, Any] | None = None, *, priority: str | None = None,
                delay: float | str | timedelta | None = None, at: datetime | None = None,
                job_id: str | None = None, max_retries: int | None = None,
                timeout: float | str | None = None) -> NewJob:
        """Validate and encode a job without sending it."""
        name = _check_name(name)
        task = self.tasks.get(name)
        if priority is None:
            priority = task.priority if task else "normal"
        if args is None:
            args = []
        if isinstance(args, str | bytes | dict) or not isinstance(args, Sequence):
            raise ValueError(f"args must be a list, not {type(args).__name__}")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError("kwargs must be a dict with string keys")
        options: dict[str, Any] = {}
        if max_retries is not None:
            options["max_retries"] = _check_retries(max_retries)
        if timeout is not None:
            options["timeout"] = _check_timeout(timeout)
        args_json = jobs.dumps(list(args), "args") if args else "[]"
        kwargs_json = jobs.dumps(kwargs, "kwargs") if kwargs else "{}"
        self._check_payload(args_json, kwargs_json)
        return NewJob(
            id=_check_job_id(job_id) if job_id is not None else os.urandom(16).hex(),
            name=name,
            priority=_check_priority(priority),
            args_json=args_json,
            kwargs_json=kwargs_json,
            options_json=jobs.dumps(options, "options") if options else "",
            when=_when(delay, at),
            given_id=job_id is not None,
        )

    def _check_payload(self, args_json: str, kwargs_json: str) -> None:
        """ValueError when a job's arguments are over ``max_payload_bytes`` of JSON (a
        character is at most 4 bytes, so short arguments are not even encoded)."""
        if (len(args_json) + len(kwargs_json)) * 4 <= self.max_payload_bytes:
            return
        size = len(args_json.encode()) + len(kwargs_json.encode())
        if size > self.max_payload_bytes:
            raise ValueError(f"the arguments are {size} bytes of JSON, over max_payload_bytes "
                             f"({self.max_payload_bytes}): pass a reference (a key, a path) "
                             "rather than the data")

    # -- reading -------------------------------------------------------------

    def job(self, job_id: str) -> JobInfo | None:
        """The job's record, or None when unknown or expired (``result_ttl``, ``done_ttl``,
        ``dead_ttl``; docs/guarantees.md has what each keeps)."""
        return self.broker.job_info(job_id)

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Jobs waiting to run, per priority and job type (not scheduled or running ones)."""
        return self.broker.queue_depths()

    def __repr__(self) -> str:
        return f"<App namespace={self.namespace!r} tasks={sorted(self.tasks)}>"


class _PlainItems:
    """enqueue_many's usual item, ``(name, [args...])``, without building a NewJob:
    a name is checked once per batch, ids come from one random draw per 256 jobs."""

    def __init__(self, app: App, batch: EnqueueBatch) -> None:
        self.app = app
        self.batch = batch
        self.priorities: dict[str, str] = {}  # checked name -> its default priority
        self.random = ""
        self.used = 0

    def add(self, item: Sequence[Any]) -> str | None:
        """The new job's id; None for anything else (the full path then checks it
        and says what is wrong)."""
        if type(item) not in (tuple, list) or len(item) != 2:
            return None
        name, args = item
        if type(name) is not str or type(args) not in (list, tuple):
            return None
        priority = self.priorities.get(name)
        if priority is None:
            if not _NAME.match(name):
                return None
            task = self.app.tasks.get(name)
            priority = self.priorities[name] = task.priority if task else "normal"
        try:
            args_json = jobs.dumps(args, "args") if args else "[]"
            self.app._check_payload(args_json, "{}")
        except ValueError:
            return None  # the full path says what is wrong
        if self.used == len(self.random):
            self.random, self.used = os.urandom(16 * 256).hex(), 0
        job_id = self.random[self.used:self.used + 32]
        self.used += 32
        self.batch.add_plain(job_id, name, priority, args_json)
        return job_id


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"invalid task name {name!r}: use letters, digits and . _ - : / @")
    return name


def _check_priority(priority: object) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}: use one of {', '.join(PRIORITIES)}")
    return str(priority)


def _check_retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_retries must be a whole number >= 0, not {value!r}")
    return value


def _check_replicas_ack(value: object) -> int:
    """The argument, else BANANAS_MIN_REPLICAS_ACK, else 0: a whole number >= 0."""
    name = "min_replicas_ack"
    if value is None:
        name, value = "BANANAS_MIN_REPLICAS_ACK", os.environ.get("BANANAS_MIN_REPLICAS_ACK")
    try:
        return whole(0)(value or 0)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


def _check_timeout(value: object) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"bad timeout: {exc}") from None
    if seconds <= 0:
        raise ValueError(f"timeout must be positive, not {value!r}")
    return seconds


def _check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not 1 <= len(job_id) <= 200 or \
            not job_id.isprintable() or _JOB_ID_FORBIDDEN & set(job_id):
        raise ValueError(f"invalid job_id {job_id!r}: 1 to 200 printable characters, no "
                         "spaces, commas, braces or control characters")
    return job_id


def _when(delay: float | str | timedelta | None, at: datetime | None) -> str:
    if delay is not None and at is not None:
        raise ValueError("give delay or at, not both")
    if delay is not None:
        try:
            seconds = parse_duration(delay)
        except ValueError as exc:
            raise ValueError(f"bad delay: {exc}") from None
        return "+%r" % seconds if seconds > 0 else ""
    if at is not None:
        if not isinstance(at, datetime):
            raise ValueError(f"at must be a datetime, not {type(at).__name__}")
        aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        return "@%r" % aware.timestamp()
    return ""
