"""Redis URLs: which one a process uses, whether it is valid, connecting, and hiding passwords.

Every process finds Redis the same way (``resolve``): an explicit URL (an
``App()`` argument, a ``--redis`` option, a deployment file's ``redis_url``),
else ``BANANAS_REDIS_URL``, else ``REDIS_URL``, else the embedded default.
``"embedded"`` anywhere in that chain means the private server a master runs
from the data dir (``embedded.py``). Every URL shown to a person goes through
``redact``.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from . import embedded

DEFAULT_URL = "redis://127.0.0.1:6379/0"
EMBEDDED = "embedded"
URL_VARIABLES = ("BANANAS_REDIS_URL", "REDIS_URL")  # in this order; empty counts as unset
_SCHEMES = ("redis://", "rediss://", "unix://")


def url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, or None when it can be used (never echoes a password)."""
    if not url.startswith(_SCHEMES):
        return 'must start with redis://, rediss:// or unix:// (or be "embedded")'
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        return str(exc)
    database = urlsplit(url).path.strip("/")
    if not url.startswith("unix://") and database and not database.isdigit():
        return f"the database is a number (redis://host:port/0), got {database!r}"
    return None


_USERINFO = re.compile(r"^(?P<scheme>[a-z+]+://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")
_SECRET_QUERY = re.compile(r"(?P<name>(?:^|[?&])(?:sentinel_)?password=)[^&]*")


def redact(url: str) -> str:
    """The URL with every password replaced by ``***``, safe to print or log."""
    hidden = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    return _SECRET_QUERY.sub(lambda m: f"{m['name']}***", hidden)


def connect(url: str, *, max_connections: int | None = None, socket_timeout: float = 10.0,
            retries: int = 3) -> redis.Redis:
    """A client that retries dropped connections with backoff and jitter.

    A retried call is safe: every script is idempotent for the same arguments
    (job ids are chosen by the client, a slot's fetch is handed back, a second
    settle of a run is a no-op). The socket timeout bounds how long a call can
    hang on a Redis that does not answer; it must exceed the longest blocking
    call (a slot's idle BLPOP, a couple of seconds).
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=min(5.0, socket_timeout),
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def environment_url() -> tuple[str, str] | None:
    """(variable, URL) of the Redis URL the environment gives, if it gives one."""
    return next(((name, os.environ[name]) for name in URL_VARIABLES if os.environ.get(name)),
                None)


def resolve(explicit: str | None = None, *, start_embedded: bool = False) -> str:
    """The URL to use: ``explicit`` > BANANAS_REDIS_URL > REDIS_URL > the embedded default.

    ``"embedded"`` means the embedded server a master runs from this directory's
    ``.bananas`` (or ``$BANANAS_DATA_DIR``). With nothing configured: that server
    if it runs, else 127.0.0.1:6379, else (only with ``start_embedded``, as
    ``App()`` does) a server this process starts. ValueError for a bad URL, naming
    where it came from.
    """
    found = ("redis_url", explicit) if explicit else environment_url()
    if found is None:
        if start_embedded:
            return embedded.url_for_app(DEFAULT_URL)
        return default_url()
    source, url = found
    if url == EMBEDDED:
        return embedded.embedded_url()
    if problem := url_problem(url):
        raise ValueError(f"{source}: {problem}")
    return url


def default_url() -> str:
    """Where a client connects when nothing is configured: this directory's running
    embedded server, else the conventional local Redis."""
    return embedded.running_url(embedded.data_dir()) or DEFAULT_URL


def wants_embedded(configured: str | None) -> bool:
    """Whether a master should use an embedded server rather than a configured Redis."""
    if configured:
        return configured == EMBEDDED
    found = environment_url()
    return found[1] == EMBEDDED if found else not embedded.answers(DEFAULT_URL)
