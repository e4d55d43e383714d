"""Small helpers shared by the tests: waiting on conditions, never on sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from bananas_prefork.core.broker import Broker
from bananas_prefork.core.identity import NodeId
from bananas_prefork.core.nodes import NodeStore
from bananas_prefork.core.periodic import Entry

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def live_node(broker: Broker, host: str, pid: int) -> str:
    """A master that runs (its status key exists), as periodic registration sees it."""
    node = NodeId(host, pid, "test")
    NodeStore(broker.client, broker.keys).publish(
        node, {"host": host, "pid": pid}, ttl=120)  # type: ignore[typeddict-item]
    return str(node)


def entry(name: str = "e", **kw: object) -> Entry:
    """A periodic entry as masters register it (every second, task ``record``)."""
    base = dict(name=name, task="record", cron=None, every=1.0, priority="normal",
                args_json="[]", kwargs_json="{}", catch_up=True)
    base.update(kw)
    return Entry(**base)  # type: ignore[arg-type]
