"""The least a Redis ACL user needs to run a namespace: its keys and the commands sent.

The commands are derived, not listed by hand where they can be read off the
code: every ``redis.call`` of every Lua script, plus the commands the Python
side sends itself (``CLIENT_COMMANDS``; the ACL test runs the whole happy path
under exactly this rule, so a command missing here fails it). Keys: the
namespace's hash tag, ``~{ns}:*``. No Pub/Sub channels.
"""

from __future__ import annotations

import re

from ..core.keys import Keys
from ..core.scripts import SCRIPT_NAMES, script_source

# What the Python side sends outside the scripts, with where.
CLIENT_COMMANDS = (
    "ping",  # readiness checks, status
    "info",  # maxmemory-policy: status and the master warn when Redis may evict
    "evalsha", "eval",  # every script; EVAL after NOSCRIPT on a consumer's own connection
    "script|load", "script|exists",  # loading the scripts; pipelines check them
    "wait",  # min_replicas_ack
    "blpop",  # idle consumers, the scheduler's hand-over and wake-up signals
    "get", "set", "del", "exists", "expire", "pttl", "time",  # liveness, leadership, status
    "hget", "hset", "hdel", "hgetall", "hmget", "hlen",  # job records, node records
    "rpush", "ltrim", "llen", "lindex",  # wake-ups, queue depths and ages
    "smembers",  # the owners and queues sets
    "zadd", "zrem", "zcard", "zrange", "zrangebyscore", "zrevrange",  # schedule, dead, nodes
    "zremrangebyscore",
)

_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'")


def script_commands() -> set[str]:
    """Every command a Lua script of the project calls."""
    return {name.lower() for script in SCRIPT_NAMES for name in _CALL.findall(
        script_source(script))}


def commands() -> list[str]:
    return sorted(script_commands() | set(CLIENT_COMMANDS))


def rule(namespace: str, user: str) -> str:
    """``ACL SETUSER`` for a user that can run this namespace and nothing else.

    It leaves the password alone: give a new user one with ``>password``.
    """
    keys = f"~{Keys(namespace).prefix}:*"
    allowed = " ".join(f"+{command}" for command in commands())
    return f"ACL SETUSER {user} on resetkeys {keys} resetchannels -@all {allowed}"
