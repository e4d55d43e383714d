"""Loading the Lua scripts: includes resolved once, registered once, called by SHA.

redis-py's ``Script`` runs ``EVALSHA`` and, on ``NOSCRIPT`` (a restarted or
flushed Redis), loads the source and retries, so scripts survive a Redis
restart without any code here.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from importlib import resources

import redis

_INCLUDE = re.compile(r"^--! include (\S+)\s*$", re.MULTILINE)
_COMMENT = re.compile(r"--[^\n]*")
_WORD = re.compile(r"\w+")
# A shared function: from 'local function name(' at the start of a line to the first
# 'end' alone at the start of a line (the libraries' layout).
_FUNCTION = re.compile(r"^local function (\w+)\(.*?^end\n", re.MULTILINE | re.DOTALL)
_COMMENT_OR_BLANK_LINE = re.compile(r"^[ \t]*(--[^\n]*)?\n", re.MULTILINE)


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` as Redis gets it: ``--! include`` lines expanded,
    and without comment lines (Redis keeps every script's text for as long as it runs:
    half of it would be comments)."""
    root = resources.files("bananas_prefork.core") / "lua"

    def expand(match: re.Match[str]) -> str:
        return (root / match.group(1)).read_text()

    source = without_unused_functions(_INCLUDE.sub(expand, (root / f"{name}.lua").read_text()))
    return _COMMENT_OR_BLANK_LINE.sub("", source)


def without_unused_functions(source: str) -> str:
    """Drop the included functions a script never calls.

    Redis runs a script's top level on every call, so each ``local function``
    is a closure built (and collected) per call, used or not.
    """
    while True:
        uses = Counter(_WORD.findall(_COMMENT.sub("", source)))
        unused = [m for m in _FUNCTION.finditer(source)
                  if uses[m.group(1)] == _WORD.findall(_COMMENT.sub("", m.group(0))).count(
                      m.group(1))]
        if not unused:
            return source
        for match in reversed(unused):
            source = source[:match.start()] + source[match.end():]


SCRIPT_NAMES = (
    "enqueue",
    "step",
    "recover",
    "promote",
    "lock_renew",
    "lock_release",
    "dead_requeue",
    "dead_remove",
    "periodic_fire",
    "queues_prune",
    "groups_prune",
    "periodic_register",
)


class Scripts:
    """The project's scripts registered on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.enqueue = client.register_script(script_source("enqueue"))
        self.step = client.register_script(script_source("step"))
        self.recover = client.register_script(script_source("recover"))
        self.promote = client.register_script(script_source("promote"))
        self.lock_renew = client.register_script(script_source("lock_renew"))
        self.lock_release = client.register_script(script_source("lock_release"))
        self.dead_requeue = client.register_script(script_source("dead_requeue"))
        self.dead_remove = client.register_script(script_source("dead_remove"))
        self.periodic_fire = client.register_script(script_source("periodic_fire"))
        self.queues_prune = client.register_script(script_source("queues_prune"))
        self.groups_prune = client.register_script(script_source("groups_prune"))
        self.periodic_register = client.register_script(script_source("periodic_register"))

    def load_all(self, client: redis.Redis) -> None:
        """Load every script up front, so the first job does not pay for it."""
        for name in SCRIPT_NAMES:
            client.script_load(script_source(name))
