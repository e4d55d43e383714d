"""Who is who in Redis: masters (nodes), the owners of running jobs, scheduler tokens.

Each identity is formatted and parsed here only; everything else passes these
types around (or their text, in Redis keys and status).

- A **node** is a master as status shows it: ``host:pid``.
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

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"

    @classmethod
    def of_master(cls, pid: int | None = None) -> NodeId:
        """This machine's master with that pid (default: this process)."""
        return cls(socket.gethostname(), os.getpid() if pid is None else pid)

    @classmethod
    def parse(cls, text: str) -> NodeId | None:
        host, _, pid = text.rpartition(":")
        return cls(host, int(pid)) if host and pid.isdigit() else None


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

    @property
    def node(self) -> NodeId:
        return NodeId(self.host, self.master_pid)

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
