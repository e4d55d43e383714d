"""The job record: states, what a consumer runs, and what callers read back.

A job is one Redis hash (``Keys.job``). Its fields:

``name``, ``priority``            the task name (= job type) and the priority
``args``, ``kwargs``              JSON text of the call arguments (no ``kwargs``: ``{}``)
``options``                       JSON text of per-job overrides (max_retries, timeout, ...)
``state``                         scheduled, queued, running, succeeded, failed or dead
                                  (written by the Lua scripts, which own every change)
``attempts``, ``redeliveries``    runs started; runs lost with their child (absent: 0)
``seq``                           enqueue order across job types
``enqueued_at``, ``due_at``       epoch seconds
``ready_at``                      when it last went (back) to its queue after a delay, a
                                  retry, a recovery or a retry by hand (unset: enqueued_at)
``started_at``, ``finished_at``   of the last run
``owner``                         the consumer that runs (or ran) it
``result``, ``error``, ``traceback``
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

# One encoder for every call: json.dumps with options builds a new one each time,
# and JSONEncoder.encode builds its C encoder each time too, which costs more than
# encoding a small argument list. No circular check (a cycle ends in RecursionError).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
_C_ENCODE = c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", False,
                           False, False) if c_make_encoder else None


def dumps(value: Any, what: str) -> str:
    """Strict JSON (no NaN, no pickling fallbacks); ValueError says which value."""
    try:
        if _C_ENCODE is not None and type(value) in (list, dict):
            return "".join(_C_ENCODE(value, 0))
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} must be JSON-serializable: {exc}") from None


@dataclass(frozen=True)
class Job:
    """A job as a consumer received it from ``fetch``."""

    id: str
    name: str
    priority: str
    args_json: str
    kwargs_json: str
    options_json: str
    attempt: int
    enqueued_at: float
    ready_at: float | None = None  # None: it has waited in its queue since enqueued_at

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Job:
        job_id, name, priority, args, kwargs, options, attempt, enqueued_at, ready_at = reply
        # Once per job: filling the instance dict skips the frozen __init__'s
        # object.__setattr__ per field.
        job = object.__new__(cls)
        job.__dict__.update(id=job_id, name=name, priority=priority, args_json=args or "[]",
                            kwargs_json=kwargs or "{}", options_json=options or "{}",
                            attempt=int(attempt), enqueued_at=float(enqueued_at or 0.0),
                            ready_at=float(ready_at) if ready_at else None)
        return job

    @property
    def waiting_since(self) -> float:
        """When it became ready to run: the start of its pickup latency."""
        return self.ready_at or self.enqueued_at

    def decode_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """The call arguments; ValueError when the stored payload is not valid."""
        try:
            args = json.loads(self.args_json)
            kwargs = {} if self.kwargs_json == "{}" else json.loads(self.kwargs_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"undecodable payload: {exc}") from None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("undecodable payload: args must be a JSON array and kwargs an object")
        return args, kwargs

    def options(self) -> dict[str, Any]:
        if self.options_json == "{}":
            return {}
        try:
            value = json.loads(self.options_json)
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class JobContext:
    """What ``current_job()`` returns inside a running job.

    Attributes:
        id: the job id.
        name: the task name (the job type).
        attempt: this run's number, 1 for the first; a retry or a redelivery
            after a lost child counts up, so a job can tell it runs again.
        priority: ``high``, ``normal`` or ``low``.
        pool: the name of the pool running it; None outside a master.
        enqueued_at: epoch seconds.
    """

    id: str
    name: str
    attempt: int
    priority: str
    pool: str | None
    enqueued_at: float

    @classmethod
    def of(cls, job: Job, pool: str | None) -> JobContext:
        """Once per job, so without the frozen __init__ (as Job.from_reply)."""
        context = object.__new__(cls)
        context.__dict__.update(id=job.id, name=job.name, attempt=job.attempt,
                                priority=job.priority, pool=pool, enqueued_at=job.enqueued_at)
        return context


@dataclass(frozen=True)
class JobInfo:
    """A job's record as ``App.job()`` reads it back.

    Times are epoch seconds; ``None`` where they do not apply yet.

    Attributes:
        id: the job id.
        name: the task name (the job type).
        priority: ``high``, ``normal`` or ``low``.
        state: ``scheduled``, ``queued``, ``running``, ``succeeded``, ``failed``
            (the last run failed and a retry is scheduled) or ``dead``.
        attempts: runs started, 0 before the first.
        redeliveries: runs lost because their child died.
        args: the positional arguments, as JSON gave them back.
        kwargs: the keyword arguments.
        enqueued_at: when it was enqueued.
        due_at: when it is (or was) due, for a delayed job or a retry.
        started_at: when its last run started.
        finished_at: when its last run ended (or it died).
        result: the return value once succeeded.
        error: the last failure, ``Type: message``, or why it is dead.
        traceback: the last failure's traceback.
        owner: the consumer (a child) that runs or last ran it.
        options: per-job overrides given at enqueue (``max_retries``, ``timeout``).
    """

    id: str
    name: str
    priority: str
    state: str
    attempts: int
    redeliveries: int
    args: list[Any]
    kwargs: dict[str, Any]
    enqueued_at: float
    due_at: float | None
    started_at: float | None
    finished_at: float | None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    owner: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    ready_at: float | None = None

    @classmethod
    def from_hash(cls, job_id: str, fields: Mapping[str, str]) -> JobInfo:
        def number(name: str) -> float | None:
            raw = fields.get(name)
            return float(raw) if raw not in (None, "") else None

        def loads(name: str, default: Any) -> Any:
            raw = fields.get(name)
            if raw in (None, ""):
                return default
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw

        return cls(
            id=job_id,
            name=fields.get("name", ""),
            priority=fields.get("priority", ""),
            state=fields.get("state", ""),
            attempts=int(fields.get("attempts") or 0),
            redeliveries=int(fields.get("redeliveries") or 0),
            args=loads("args", []),
            kwargs=loads("kwargs", {}),
            enqueued_at=number("enqueued_at") or 0.0,
            due_at=number("due_at"),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            result=loads("result", None),
            error=fields.get("error") or None,
            traceback=fields.get("traceback") or None,
            owner=fields.get("owner") or None,
            options=loads("options", {}),
            ready_at=number("ready_at"),
        )

    def as_dict(self, with_args: bool = False) -> dict[str, Any]:
        """A JSON-ready view; arguments only when asked (they may hold secrets)."""
        data = {
            "id": self.id,
            "name": self.name,
            "priority": self.priority,
            "state": self.state,
            "attempts": self.attempts,
            "redeliveries": self.redeliveries,
            "enqueued_at": self.enqueued_at,
            "due_at": self.due_at,
            "ready_at": self.ready_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "traceback": self.traceback,
            "owner": self.owner,
        }
        if with_args:
            data["args"] = self.args
            data["kwargs"] = self.kwargs
        return data


_current: ContextVar[JobContext | None] = ContextVar("bananas_current_job", default=None)


def current_job() -> JobContext | None:
    """The job running in this thread, or None outside a job."""
    return _current.get()


def set_current_job(context: JobContext | None) -> Token[JobContext | None]:
    return _current.set(context)


def reset_current_job(token: Token[JobContext | None]) -> None:
    _current.reset(token)
