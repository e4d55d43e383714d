"""Who is who in Redis: masters (nodes), the owners of running jobs, scheduler tokens.

Each identity is formatted and parsed here only; everything else passes these
types around (or their text, in Redis keys and status).

- A **node** is a master: ``host:pid:nonce`` in Redis keys, ``host:pid`` where
  people read it. The nonce is drawn when the master starts, so two machines
  (or containers) with the same host name and pid are never one node.
- An **owner** holds running jobs: ``host:master-pid:pid:nonce``. A standalone
  consumer (no master) has master pid 0. The nonce makes a reused pid a new owner.
- A **leader token** is what the scheduler lock holds: ``host:pid:nonce`` of
  the master whose scheduler leads.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass


def _nonce() -> str:
    return uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class NodeId:
    host: str
    pid: int
    nonce: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.nonce}"

    @property
    def display(self) -> str:
        """``host:pid``, as status names a master."""
        return f"{self.host}:{self.pid}"

    @classmethod
    def new(cls) -> NodeId:
        """The identity of a master starting in this process."""
        return cls(socket.gethostname(), os.getpid(), _nonce())

    @classmethod
    def parse(cls, text: str) -> NodeId | None:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2]:
            return None
        return cls(parts[0], int(parts[1]), parts[2])


@dataclass(frozen=True)
class OwnerId:
    host: str
    master_pid: int  # 0: a standalone consumer
    pid: int
    nonce: str

    def __str__(self) -> str:
        return f"{self.host}:{self.master_pid}:{self.pid}:{self.nonce}"

    @classmethod
    def new(cls, master_pid: int, pid: int | None = None) -> OwnerId:
        return cls(socket.gethostname(), master_pid, os.getpid() if pid is None else pid,
                   _nonce())

    def for_pid(self, pid: int) -> OwnerId:
        """The same owner for the pid a fork returned (the nonce is chosen before the fork)."""
        return OwnerId(self.host, self.master_pid, pid, self.nonce)

    @classmethod
    def parse(cls, text: str) -> OwnerId | None:
        parts = text.rsplit(":", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]), parts[3])


@dataclass(frozen=True)
class LeaderToken:
    node: NodeId
    nonce: str

    def __str__(self) -> str:
        return f"{self.node}:{self.nonce}"

    @classmethod
    def new(cls, node: NodeId) -> LeaderToken:
        return cls(node, _nonce())

    @classmethod
    def parse(cls, text: str) -> LeaderToken | None:
        node, _, nonce = text.rpartition(":")
        parsed = NodeId.parse(node)
        return cls(parsed, nonce) if parsed is not None and nonce else None
