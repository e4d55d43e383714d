"""Replication as the queue meets it: WAIT-backed durability and a demoted primary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core import broker
from bananas_prefork.core.broker import NotReplicated, Settlement
from bananas_prefork.core.embedded import RedisServer, free_port
from bananas_prefork.core.errors import is_transient
from tests.helpers import wait_until


@pytest.fixture
def replica(private_redis: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A replica of ``private_redis``, linked and in sync."""
    with redis.Redis(port=private_redis.port) as admin:  # sync now, not after 5 s
        admin.config_set("repl-diskless-sync-delay", 0)
    server = RedisServer(tmp_path / "replica", port=free_port(), appendonly=False,
                         extra_config=f"replicaof 127.0.0.1 {private_redis.port}\n",
                         binary=private_redis.binary).start()
    with redis.Redis(port=server.port, decode_responses=True) as client:
        wait_until(lambda: client.info("replication").get("master_link_status") == "up",
                   timeout=20)
    yield server
    server.kill()


def test_with_min_replicas_ack_an_enqueue_returns_once_a_replica_has_it(
        private_redis: RedisServer, replica: RedisServer, namespace: str) -> None:
    app = App(private_redis.url, namespace=namespace, min_replicas_ack=1)
    job_id = app.enqueue("record", args=["kept"])
    on_replica = App(replica.url, namespace=namespace)
    assert on_replica.job(job_id) is not None  # already there, not "soon"

    channel = app.broker.channel("owner-1", 0, ["normal"], ["*"])
    status, job = channel.step(None, True)
    assert job is not None and job.id == job_id
    status, _ = channel.step(Settlement("succeeded", job, '"done"'), False)
    assert status == 1
    info = on_replica.job(job_id)
    assert info is not None and info.state == "succeeded"
    channel.close()


def test_without_a_replica_the_write_is_not_acknowledged(
        private_redis: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker, "REPLICA_ACK_TIMEOUT_MS", 100)  # 5 tries of 0.1 s, not 1 s
    app = App(private_redis.url, namespace=namespace, min_replicas_ack=1)
    with pytest.raises(NotReplicated, match=r"0 of 1 replica.* within 100 ms") as raised:
        app.enqueue("record")
    assert is_transient(raised.value)  # every loop retries it, idempotently
    assert isinstance(raised.value, redis.ConnectionError)


def test_a_demoted_primary_makes_the_step_reconnect(private_redis: RedisServer,
                                                    replica: RedisServer,
                                                    namespace: str) -> None:
    app = App(private_redis.url, namespace=namespace)
    job_id = app.enqueue("record")
    channel = app.broker.channel("owner-1", 0, ["normal"], ["*"])
    _, job = channel.step(None, True)
    assert job is not None and job.id == job_id
    with redis.Redis(port=private_redis.port) as admin:  # demote it, as Sentinel would
        admin.execute_command("REPLICAOF", "127.0.0.1", str(replica.port))
    try:
        with pytest.raises(redis.RedisError) as refused:
            channel.step(Settlement("succeeded", job, "null"), False)
        assert is_transient(refused.value)  # the consumer sends the same step again
        assert not channel.connection.connected  # a new connection, to the primary of the moment
    finally:
        with redis.Redis(port=private_redis.port) as admin:
            admin.execute_command("REPLICAOF", "NO", "ONE")
        channel.close()
