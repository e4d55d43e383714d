"""Redis errors sorted by what a long-running loop should do about them.

*Transient*: the server cannot serve the call now but will (a dropped
connection, a timeout, a long script running, a restart loading its AOF, a
replica after a failover, a full disk, out of memory, a cluster resharding).
Wait with backoff and send the same call again: every script is idempotent
for the same arguments.

*Permanent*: the same call will fail until a person acts (a missing ACL
permission, a wrong password, a key of the wrong type, a bug in a script, a
key on another cluster node, a TLS certificate the CA does not vouch for).
Log it once, show it in ``status``, and keep trying slowly: the fix is a
configuration change away, and a loop that dies would leave its pool
silently smaller.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable

import redis
from redis.sentinel import MasterNotFoundError

from .backoff import Backoff


class RedisRefused(Exception):
    """Redis answers, but will not serve this process as configured (one line to show)."""


log = logging.getLogger(__name__)

# Error codes (the first word of the reply) that say "not now". Redis 7 keeps a
# command's code when a script's redis.call() fails; Redis 6.2 wraps it in an
# "ERR Error running script ... -CODE ..." text, so the code is searched there too.
TRANSIENT_CODES = ("BUSY", "LOADING", "READONLY", "MISCONF", "OOM", "NOREPLICAS",
                   "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "UNBLOCKED")

_ALWAYS_PERMANENT = (redis.AuthenticationError, redis.exceptions.AuthorizationError,
                     redis.exceptions.NoPermissionError)
_ALWAYS_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
                     redis.exceptions.OutOfMemoryError, redis.exceptions.TryAgainError,
                     redis.exceptions.ClusterDownError)


def error_code(exc: redis.RedisError) -> str:
    """The reply's error code (``BUSY``, ``NOPERM``, ...), or '' when there is none.

    A generic ``ERR`` that wraps a script's failed call (Redis 6.2) gives the wrapped code.
    """
    text = str(exc)
    code = str(getattr(exc, "status_code", None) or "")
    if not code:
        first = text.split(" ", 1)[0]
        code = first if first.isupper() and first.isalpha() else ""
    if code in ("", "ERR"):
        wrapped = next((c for c in TRANSIENT_CODES if f"-{c} " in text), None)
        return wrapped or code
    return code


# A TLS handshake that fails this way fails the same way next time; a dropped
# connection in the middle of one (EOF) does not.
_PASSING_TLS_FAILURES = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError,
                         ssl.SSLWantReadError, ssl.SSLWantWriteError)


def misconfigured_connection(exc: BaseException) -> bool:
    """A connection refused by the configuration, not the network: a server certificate
    the CA does not vouch for, a client certificate refused, a key file missing, a
    Sentinel password refused."""
    if isinstance(exc, MasterNotFoundError) and "AuthenticationError" in str(exc):
        return True  # a Sentinel refused our sentinel_password
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, FileNotFoundError | PermissionError | IsADirectoryError):
        return True
    return isinstance(cause, ssl.SSLError) and not isinstance(cause, _PASSING_TLS_FAILURES)


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if sent again a little later."""
    if not isinstance(exc, redis.RedisError) or isinstance(exc, _ALWAYS_PERMANENT):
        return False
    if isinstance(exc, redis.ConnectionError) and misconfigured_connection(exc):
        return False
    if isinstance(exc, _ALWAYS_TRANSIENT):
        return True
    return error_code(exc) in TRANSIENT_CODES


def describe(exc: BaseException) -> str:
    """One line for a log or an alert: the class and the server's words."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MasterNotFoundError):
        text = _sentinels_said(text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _sentinels_said(text: str) -> str:
    """redis-py lists every Sentinel's client repr in this error: keep what each said."""
    head, _, rest = text.partition(" : ")
    said = sorted(set(re.findall(r">\)>\)> - ([^,]+)", rest)))
    return f"{head} (the Sentinels: {'; '.join(said)})" if said else head


TRANSIENT_BACKOFF = (0.2, 5.0)  # base, longest wait; jitter 0.5-1: the first wait is 0.1-0.2 s
PERMANENT_RETRY = 5.0  # a refusal is retried this often: the fix is a configuration change


class Trouble:
    """One loop's run of failed Redis calls: how long to wait before the next try, and
    what to tell people about it, once rather than on every try.

    ``report`` hears (where, refusal) when a permanent refusal starts (its one-line
    description) and (where, None) when calls go through again, so it can show in
    ``status``.
    """

    def __init__(self, where: str,
                 report: Callable[[str, str | None], None] | None = None) -> None:
        self.where = where
        self.report = report or (lambda where, error: None)
        self.backoff = Backoff(*TRANSIENT_BACKOFF, jitter=(0.5, 1.0))
        self.refusal: str | None = None

    @property
    def failures(self) -> int:
        return self.backoff.failures

    def failed(self, exc: BaseException) -> float:
        """Count a failure; the seconds to wait before trying again."""
        wait = self.backoff.failed()
        if is_transient(exc):
            if self.failures == 1:
                log.warning("%s: redis unavailable (%s); retrying with backoff", self.where,
                            describe(exc))
            return wait
        refusal = describe(exc)
        if refusal != self.refusal:
            self.refusal = refusal
            log.error("%s: redis refuses the call (%s); it will keep being refused until "
                      "the Redis configuration changes; retrying every %gs", self.where,
                      refusal, PERMANENT_RETRY)
            self.report(self.where, refusal)
        return PERMANENT_RETRY

    def recovered(self) -> None:
        """A call went through."""
        if not self.failures:
            return
        log.info("%s: redis works again after %d failed call(s)", self.where, self.failures)
        self.backoff.succeeded()
        if self.refusal is not None:
            self.refusal = None
            self.report(self.where, None)
