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
import threading

import redis
from redis.sentinel import MasterNotFoundError


class RedisRefused(Exception):
    """Redis answers, but will not serve this process as configured (one line to show)."""


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
    """The reply's error code (``BUSY``, ``NOPERM``, ...), or '' when there is none."""
    status = str(getattr(exc, "status_code", None) or "")
    if status and status != "ERR":  # a script's error is ERR around the command's code
        return status
    text = str(exc)
    first = text.split(" ", 1)[0]
    if not status and first.isupper() and first.isalpha():
        return first
    for code in TRANSIENT_CODES:
        if f"-{code} " in text or f" {code} " in text:
            return code
    return status


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


class OnceLog:
    """Logs each permanent error once per place and kind, not on every retry.

    A loop that meets one keeps going (slowly), so the log says it once and
    the fix (a permission, a certificate) is a configuration change away.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def permanent(self, where: str, exc: BaseException) -> None:
        key = (where, error_code(exc) if isinstance(exc, redis.RedisError) else "")
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        self.logger.error("%s: %s (a configuration problem: retrying slowly until it is "
                          "fixed; logged once)", where, describe(exc))
