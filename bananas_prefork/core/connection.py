"""Redis URLs: which one a process uses, whether it is valid, connecting, and hiding passwords.

Every process finds Redis the same way (``resolve``): an explicit URL (an
``App()`` argument, a ``--redis`` option, a deployment file's ``redis_url``),
else ``BANANAS_REDIS_URL``, else the file named by ``BANANAS_REDIS_URL_FILE``,
else ``REDIS_URL``, else the default. ``"embedded"`` anywhere in that chain
means the private server a master runs from the data dir (``embedded.py``).
Every URL shown to a person goes through ``redact``.

Three kinds of URL reach the same client (``connect``): ``redis://`` and
``unix://``, ``rediss://`` (TLS, with redis-py's ``ssl_*`` query options), and
``redis+sentinel://`` (the primary that Redis Sentinel names, followed across
failovers by redis-py's Sentinel pool). A user and password in any of them log
in as a Redis ACL user.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from . import embedded
from .settings import closest

DEFAULT_URL = "redis://127.0.0.1:6379/0"
EMBEDDED = "embedded"
SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379
URL_FILE_VARIABLE = "BANANAS_REDIS_URL_FILE"
# In this order; an empty variable counts as unset. The file variable holds a path.
URL_VARIABLES = ("BANANAS_REDIS_URL", URL_FILE_VARIABLE, "REDIS_URL")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
SENTINEL_OPTIONS = ("sentinel_password", "sentinel_username", "ssl", *TLS_OPTIONS)
_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
_CERT_REQS = ("none", "optional", "required")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    options: tuple[tuple[str, str], ...]

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)

    @property
    def tls(self) -> dict[str, Any]:
        """redis-py's TLS keywords for the Sentinel and the primary connections."""
        if (self.option("ssl") or "").lower() not in ("1", "true", "yes", "on"):
            return {}
        return {"ssl": True, **{name: value for name, value in self.options
                                if name in TLS_OPTIONS}}


def parse_sentinel(url: str) -> SentinelUrl:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]?options``.

    ValueError says what is wrong without repeating the password.
    """
    rest = url[len(SENTINEL_SCHEME):]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = tuple(_host_port(part) for part in hosts.split(","))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("name the monitored primary: redis+sentinel://host:26379/mymaster/0")
    if db and not db.isdigit():
        raise ValueError(f"the database is a number (.../{service}/0), got {db!r}")
    options = tuple(parse_qsl(query, keep_blank_values=True))
    for name, value in options:
        if name not in SENTINEL_OPTIONS:
            raise ValueError(f"unknown option {name!r}; Sentinel URLs take "
                             f"{', '.join(SENTINEL_OPTIONS)}")
        if name == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs is one of {', '.join(_CERT_REQS)}")
    return SentinelUrl(sentinels, unquote(service), int(db or 0), username, password, options)


def _host_port(text: str) -> tuple[str, int]:
    """``host:port``, ``host`` or ``[v6]:port`` of one Sentinel."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError("every Sentinel is host:port (a comma between two)")
    if port and not port.isdigit():
        raise ValueError(f"a Sentinel port is a number, got {port!r}")
    return host, int(port) if port else SENTINEL_PORT


def url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, or None when it can be used (never echoes a password)."""
    if not url.startswith(_SCHEMES):
        return ('must start with redis://, rediss://, unix:// or redis+sentinel:// '
                '(or be "embedded")')
    if url.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel(url)
        except ValueError as exc:
            return str(exc)
        return None
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        return str(exc)
    database = urlsplit(url).path.strip("/")
    if not url.startswith("unix://") and database and not database.isdigit():
        return f"the database is a number (redis://host:port/0), got {database!r}"
    options = dict(parse_qsl(urlsplit(url).query))
    known = _query_options(tls=url.startswith("rediss://"))
    for name in options:
        if name not in known:
            if name.startswith("ssl_") and not url.startswith("rediss://"):
                return f"{name} is a TLS option: use a rediss:// URL"
            hint = closest(name, sorted(known))
            return f"unknown option {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in _CERT_REQS:
        return f"ssl_cert_reqs is one of {', '.join(_CERT_REQS)}"
    return None


@cache
def _query_options(tls: bool) -> frozenset[str]:
    """The query options redis-py hands to its connections and pool (a typo there would
    only fail in every child, at connect time, as an unexpected keyword)."""
    classes: list[type] = [redis.connection.AbstractConnection, redis.connection.Connection,
                           redis.connection.UnixDomainSocketConnection,
                           redis.connection.ConnectionPool]
    if tls:
        classes.append(redis.connection.SSLConnection)
    names = {name for cls in classes for name in inspect.signature(cls).parameters}
    return frozenset((names | set(redis.connection.URL_QUERY_ARGUMENT_PARSERS))
                     - {"self", "args", "kwargs"})


_SECRET_OPTIONS = ("password", "sentinel_password")


def redact(url: str) -> str:
    """The URL with every password replaced by ``***``, safe to print or log.

    Handles every form ``connect`` takes: ``redis://:pw@``, ``redis://user:pw@``,
    ``rediss://``, ``unix://``, ``redis+sentinel://user:pw@h1,h2/...`` and
    passwords given as query options.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, qmark, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    if qmark:
        query = "&".join(
            f"{part.partition('=')[0]}=***" if part.partition("=")[0] in _SECRET_OPTIONS
            else part for part in query.split("&"))
    return f"{scheme}://{netloc}{slash}{path}{qmark}{query}"


def connect(url: str, *, max_connections: int | None = None, socket_timeout: float = 10.0,
            retries: int = 3) -> redis.Redis:
    """A client that retries dropped connections with backoff and jitter.

    A retried call is safe: every script is idempotent for the same arguments
    (job ids are chosen by the client, a slot's fetch is handed back, a second
    settle of a run is a no-op). The socket timeout bounds how long a call can
    hang on a Redis that does not answer; it must exceed the longest blocking
    call (a slot's idle BLPOP, a couple of seconds).
    ``READONLY`` (a primary demoted by a failover,
    or a managed endpoint that moved) is handled like a dropped connection: the
    connection is closed and the call sent again on a new one, which a
    Sentinel URL opens to the primary Sentinel names now.
    """
    common: dict[str, Any] = dict(
        decode_responses=True,
        socket_connect_timeout=min(5.0, socket_timeout),
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError],
    )
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_client(parse_sentinel(url), common)
    return redis.Redis.from_url(url, **common)


def _sentinel_client(parsed: SentinelUrl, common: dict[str, Any]) -> redis.Redis:
    """The primary of ``parsed.service``; its pool asks the Sentinels on every new connection."""
    tls = parsed.tls
    # One try per Sentinel and question: discovery asks the next one anyway, and
    # redis-py's default (retries with a backoff of seconds, per Sentinel, inside every
    # reconnect) would hold a refused password for minutes instead of one line.
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=dict(
        socket_connect_timeout=common["socket_connect_timeout"], socket_timeout=5.0,
        retry=Retry(NoBackoff(), retries=0),
        username=parsed.option("sentinel_username"),
        password=parsed.option("sentinel_password"), **tls))
    client: redis.Redis = sentinel.master_for(
        parsed.service, redis_class=redis.Redis, db=parsed.db, username=parsed.username,
        password=parsed.password, **tls, **common)
    return client


def read_url_file(path: str | os.PathLike[str]) -> str:
    """The URL kept in a file (a secret: it stays off command lines and out of ``ps``).
    ValueError says what is wrong with the file; the caller says who named it."""
    try:
        url = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ValueError(f"cannot read {path}: {reason}") from None
    if not url:
        raise ValueError(f"{path} is empty")
    return url


def environment_url() -> tuple[str, str] | None:
    """(variable, URL) of the Redis URL the environment gives, if it gives one.

    ValueError ("variable: problem") when ``BANANAS_REDIS_URL_FILE`` names a file that
    cannot be read.
    """
    for name in URL_VARIABLES:
        value = os.environ.get(name)
        if value and name == URL_FILE_VARIABLE:
            try:
                return name, read_url_file(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if value:
            return name, value
    return None


def resolve(explicit: str | None = None, *, start_embedded: bool = False) -> str:
    """The URL to use: ``explicit`` > the environment > the default.

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


SERVICE_MANAGER_VARIABLES = ("INVOCATION_ID", "NOTIFY_SOCKET")


def under_service_manager() -> bool:
    """Whether systemd (or anything speaking its protocol) runs this process: production."""
    return any(os.environ.get(name) for name in SERVICE_MANAGER_VARIABLES)


ASKED, FIRST_RUN = "asked", "first run"


def embedded_reason(configured: str | None) -> str | None:
    """Why a master should run an embedded server rather than use a Redis (None: it should not).

    ``ASKED``: by name (``redis_url = "embedded"``). ``FIRST_RUN``: no URL anywhere,
    not under a service manager, and nothing listening on 127.0.0.1:6379
    (refused, not merely slow). A production box whose URL went missing waits
    for the local Redis instead of serving a private, empty queue.
    """
    if configured:
        return ASKED if configured == EMBEDDED else None
    found = environment_url()
    if found is not None:
        return ASKED if found[1] == EMBEDDED else None
    if under_service_manager() or not embedded.refused(DEFAULT_URL):
        return None
    return FIRST_RUN
