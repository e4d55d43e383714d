"""Redis Cluster: a namespace lives in one slot, so a deployment runs on the node that
owns it. Three real cluster nodes; everything the keyspace test drives runs against the
owner of the namespace's slot, where a key of another slot would fail with MOVED."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from bananas_prefork.core.embedded import find_redis_server, free_port, port_free
from tests.e2e.test_keyspace import exercise

SHARES = (range(0, 5461), range(5461, 10923), range(10923, 16384))  # the slots per node


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three master nodes sharing the 16384 slots; killed by pid at the end."""
    binary = os.environ.get("BANANAS_TEST_REDIS_SERVER") or find_redis_server()
    assert binary, "no redis-server"
    ports, processes = [cluster_port() for _ in range(3)], []
    try:
        for port in ports:
            work = tmp_path_factory.mktemp(f"cluster-{port}")
            processes.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        clients = [redis.Redis(port=port) for port in ports]
        wait_for(lambda: all(_pings(c) for c in clients))
        for client, share in zip(clients, SHARES, strict=True):
            client.execute_command("CLUSTER ADDSLOTS", *share)
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
        wait_for(lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients))
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait()


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and port_free(port + 10000):
            return port


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "cluster did not come up"
        time.sleep(0.1)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_deployment_runs_on_the_node_that_owns_its_slot(cluster: list[int], tmp_path: Path,
                                                          namespace: str) -> None:
    slot = key_slot(("{%s}" % namespace).encode())
    owner = next(port for port, share in zip(cluster, SHARES, strict=True) if slot in share)
    url = f"redis://127.0.0.1:{owner}/0"
    other = redis.Redis(port=next(p for p in cluster if p != owner))
    with pytest.raises(redis.exceptions.MovedError):  # so the test below means something
        other.set("{%s}:probe" % namespace, 1)
    other.close()
    exercise(url, tmp_path, namespace)
