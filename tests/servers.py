"""Real servers for the topology and security tests, started on loopback and killed by pid.

- ``SentinelCluster``: a primary, a replica and three Sentinels watching them.
- ``TlsRedis``: a TLS-only redis-server, with a test CA, server and client
  certificates made here with openssl (and a second CA that signed nothing of it).
- ACL users are made on an ordinary server by the tests themselves.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from bananas_prefork.core.embedded import RedisServer, find_redis_server, free_port
from tests.helpers import wait_until

SERVICE = "mymaster"


@dataclass(frozen=True)
class Secured:
    """TLS with client certificates everywhere, and passwords on the servers and on the
    Sentinels (the Sentinels' own differ from the servers')."""

    certs: Certificates
    password: str = "data-pw-3b1"
    sentinel_password: str = "sentinel-pw-9c2"

    def tls_config(self) -> str:
        """TLS only, for incoming connections and those a server or Sentinel opens."""
        return (f"tls-cert-file {self.certs.path('server.crt')}\n"
                f"tls-key-file {self.certs.path('server.key')}\n"
                f"tls-ca-cert-file {self.certs.path('ca.crt')}\n"
                "tls-auth-clients yes\ntls-replication yes\n")

    def tls_kwargs(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": self.certs.path("ca.crt"),
                "ssl_certfile": self.certs.path("client.crt"),
                "ssl_keyfile": self.certs.path("client.key")}

    def query(self) -> str:
        return (f"sentinel_password={self.sentinel_password}&ssl=true"
                f"&ssl_ca_certs={self.certs.path('ca.crt')}"
                f"&ssl_certfile={self.certs.path('client.crt')}"
                f"&ssl_keyfile={self.certs.path('client.key')}")


def _binary() -> str:
    binary = os.environ.get("BANANAS_TEST_REDIS_SERVER") or find_redis_server()
    assert binary, "no redis-server for the tests"
    return binary


class SentinelProcess:
    """``redis-server sentinel.conf --sentinel``: Sentinel needs a file it can rewrite."""

    def __init__(self, directory: Path, primary_port: int, quorum: int = 2,
                 secured: Secured | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = directory / "sentinel.conf"
        listen = f"port 0\ntls-port {self.port}\n{secured.tls_config()}" if secured \
            else f"port {self.port}\n"
        auth = (f"requirepass {secured.sentinel_password}\n"
                f"sentinel sentinel-pass {secured.sentinel_password}\n"
                f"sentinel auth-pass {SERVICE} {secured.password}\n") if secured else ""
        self.config.write_text(
            f"{listen}bind 127.0.0.1\ndir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} 2000\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n{auth}")
        self.process = subprocess.Popen([_binary(), str(self.config), "--sentinel"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        extra = {**secured.tls_kwargs(), "password": secured.sentinel_password} \
            if secured else {}
        self.client = redis.Redis(port=self.port, decode_responses=True,
                                  socket_timeout=2.0, **extra)
        wait_until(self._answers, timeout=10, interval=0.05, message="a sentinel to answer")

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class SentinelCluster:
    """A primary, a replica and three Sentinels (quorum 2) on loopback.

    A primary is declared down after 2 s without an answer: quick enough for a
    short test, slow enough that a busy 2-core machine does not fail over twice.
    """

    def __init__(self, directory: Path, secured: Secured | None = None) -> None:
        self.secured = secured
        self.servers: list[RedisServer] = []
        primary = self._server(directory / "a", "").start()
        self.servers.append(primary)
        replica = self._server(directory / "b", f"replicaof 127.0.0.1 {primary.port}\n").start()
        self.servers.append(replica)
        wait_until(lambda: self._replica_synced(replica), timeout=15, message="the replica")
        self.sentinels = [SentinelProcess(directory / f"s{i}", int(primary.port or 0),
                                          secured=secured) for i in range(3)]
        wait_until(self._sentinels_know_everyone, timeout=20, interval=0.1,
                   message="the sentinels to find each other and the replica")

    def _server(self, directory: Path, config: str) -> RedisServer:
        if self.secured is None:
            return RedisServer(directory, binary=_binary(), port=free_port(),
                               extra_config=config)
        server = TlsRedis(directory, self.secured.certs, password=self.secured.password)
        server.extra_config = config + f"masterauth {self.secured.password}\n"
        return server

    def admin(self, port: int) -> redis.Redis:
        """A client of one data server (TLS and password when secured)."""
        extra = {**self.secured.tls_kwargs(), "password": self.secured.password} \
            if self.secured else {}
        return redis.Redis(port=port, decode_responses=True, socket_timeout=1, **extra)

    def _replica_synced(self, server: RedisServer) -> bool:
        with self.admin(int(server.port or 0)) as client:
            return client.info("replication").get("master_link_status") == "up"

    def _sentinels_know_everyone(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.client.sentinel_master(SERVICE)
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
        return True

    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.secured is None:
            return f"redis+sentinel://{hosts}/{SERVICE}/0"
        return (f"redis+sentinel://:{self.secured.password}@{hosts}/{SERVICE}/0?"
                + self.secured.query())

    def primary_port(self) -> int:
        _, port = self.sentinels[0].client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def failover(self) -> int:
        """``SENTINEL FAILOVER``; returns the new primary's port once every Sentinel names it
        and it accepts writes."""
        old = self.primary_port()
        self.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        return self.wait_new_primary(old)

    def wait_demoted(self, old: int, new: int, timeout: float = 30.0) -> None:
        """Until the old primary replicates from the new one. Sentinel demotes it only
        after about 8 s; until then clients still connected to it write there."""
        def demoted() -> bool:
            try:
                with self.admin(old) as client:
                    info = client.info("replication")
            except redis.RedisError:
                return False
            return info["role"] == "slave" and int(info.get("master_port", 0)) == new

        wait_until(demoted, timeout=timeout, interval=0.1, message="the old primary demoted")

    def wait_new_primary(self, old: int, timeout: float = 30.0) -> int:
        def moved() -> int | None:
            ports = {s.client.sentinel_get_master_addr_by_name(SERVICE)[1]
                     for s in self.sentinels}
            if len(ports) != 1:
                return None
            port = int(ports.pop())
            return port if port != old and self._writable(port) else None

        return wait_until(moved, timeout=timeout, interval=0.05, message="a new primary")

    def _writable(self, port: int) -> bool:
        try:
            with self.admin(port) as client:
                return client.info("replication")["role"] == "master"
        except redis.RedisError:
            return False

    def replicas_up(self, primary: int) -> bool:
        """Whether the primary has a replica with a live link again."""
        try:
            with self.admin(primary) as client:
                info = client.info("replication")
        except redis.RedisError:
            return False
        return any(isinstance(v, dict) and v.get("state") == "online"
                   for k, v in info.items() if k.startswith("slave"))

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers:
            server.kill()


@pytest.fixture
def sentinel_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path_factory.mktemp("sentinel"))
    try:
        yield cluster
    finally:
        cluster.stop()


# -- TLS ---------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate it
    signed, plus a second CA that signed nothing here (the wrong one)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        for ca in ("ca", "wrong-ca"):
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                     "-subj", f"/CN=bananas test {ca}", "-keyout", f"{ca}.key",
                     "-out", f"{ca}.crt", cwd=directory)
        (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for name, extra in (("server", ["-extfile", "server.ext"]), ("client", [])):
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                     "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
            _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                     "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra,
                     cwd=directory)

    def path(self, name: str) -> str:
        return str(self.dir / name)


class TlsRedis(RedisServer):
    """A redis-server that speaks TLS only (replication too) and wants a client
    certificate."""

    def __init__(self, directory: Path, certs: Certificates, password: str | None = None) -> None:
        super().__init__(directory, binary=_binary(), port=free_port(), password=password)
        self.certs = certs

    def config(self) -> str:
        plain = super().config().replace(f"port {self.port}\n", "port 0\n")
        return plain + f"tls-port {self.port}\n" + Secured(self.certs).tls_config()

    def tls_url(self, ca: str = "ca.crt") -> str:
        auth = f":{self.password}@" if self.password else ""
        return (f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.certs.path(ca)}"
                f"&ssl_certfile={self.certs.path('client.crt')}"
                f"&ssl_keyfile={self.certs.path('client.key')}")

    @property
    def url(self) -> str:
        return self.tls_url()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_redis(tmp_path_factory: pytest.TempPathFactory,
              certificates: Certificates) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path_factory.mktemp("tls-redis"), certificates)
    server.start()
    try:
        yield server
    finally:
        server.kill()
