"""A locked-down Redis, for real: TLS with client certificates, and an ACL user that
may touch nothing but its namespace, made from ``bananas-prefork acl``."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bananas_prefork import App
from bananas_prefork.core.embedded import RedisServer
from tests.e2e.test_cli import one_line_error, run
from tests.helpers import wait_until
from tests.masters import MasterFactory, MasterProcess, toml
from tests.servers import Certificates, Secured, SentinelCluster, TlsRedis

POOL = "[pools.default]\nconcurrency = 2\nthreads = 1\n"
PASSWORD = "pw-never-printed-7f3a"


@pytest.fixture
def factory(tmp_path: Path, namespace: str) -> Iterator[MasterFactory]:
    """Masters on a URL each test chooses (``factory.redis_url``)."""
    made = MasterFactory(tmp_path, "", namespace)
    yield made
    for master in made.started:
        master.stop()


def start(factory: MasterFactory, url: str, config: str, **kw: object) -> MasterProcess:
    factory.redis_url = url
    return factory(config, **kw)  # type: ignore[arg-type]


def test_tls_with_client_certificates_end_to_end(tls_redis: TlsRedis, factory: MasterFactory,
                                                 tmp_path: Path, namespace: str) -> None:
    url = tls_redis.tls_url()
    master = start(factory, url, toml(POOL, namespace=namespace))
    url_file = tmp_path / "redis-url"
    url_file.write_text(url + "\n")
    enqueued = run("enqueue", "record", "--args", '["over tls"]', "--redis-file", str(url_file),
                   "--namespace", namespace, cwd=tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr
    app = App(url, namespace=namespace)
    job_id = enqueued.stdout.strip()
    wait_until(lambda: app.job(job_id).state == "succeeded")  # type: ignore[union-attr]
    status = run("status", "--json", "--namespace", namespace, cwd=tmp_path,
                 env={"BANANAS_REDIS_URL_FILE": str(url_file)})
    assert status.returncode == 0, status.stderr
    assert [n["pid"] for n in json.loads(status.stdout)["nodes"]] == [master.pid]


def test_a_wrong_ca_is_one_clear_line_from_the_cli_and_from_start(
        tls_redis: TlsRedis, factory: MasterFactory, tmp_path: Path, namespace: str) -> None:
    wrong = tls_redis.tls_url("wrong-ca.crt")
    for command in (["status"], ["enqueue", "record"], ["dead", "list"]):
        one_line_error(run(*command, "--redis", wrong, cwd=tmp_path), 1,
                       "CERTIFICATE_VERIFY_FAILED")
    master = start(factory, wrong, toml(POOL, namespace=namespace), wait_ready=False)
    assert master.wait_exit(30) == 1
    log = master.read_log()
    failures = [line for line in log.splitlines() if "CERTIFICATE_VERIFY_FAILED" in line]
    assert len(failures) == 1 and "Traceback" not in log, log
    assert "cannot use Redis at rediss://127.0.0.1" in failures[0]


# -- ACL --------------------------------------------------------------------------------


def acl_user(server: RedisServer, namespace: str, tmp_path: Path, *, without: str = "") -> str:
    """An ACL user made from ``bananas-prefork acl`` (less one command); its URL."""
    printed = run("acl", "--namespace", namespace, "--user", "worker", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    words = [w for w in shlex.split(printed.stdout.strip()) if w != f"+{without}"]
    assert words[:3] == ["ACL", "SETUSER", "worker"] and (not without or
                                                          len(words) < len(printed.stdout.split()))
    with redis.Redis(port=server.port) as admin:
        admin.execute_command(*words)
        admin.execute_command("ACL", "SETUSER", "worker", f">{PASSWORD}")
        admin.execute_command("ACL", "LOG", "RESET")
    return f"redis://worker:{PASSWORD}@127.0.0.1:{server.port}/0"


def denied(server: RedisServer) -> list[str]:
    """What the ACL refused anyone since the user was made."""
    with redis.Redis(port=server.port, decode_responses=True) as admin:
        return [f"{e['reason']} {e['object']}" for e in admin.acl_log()]


HAPPY = POOL + ('\n[[periodic]]\ntask = "record"\nevery = "1s"\nargs = ["tick"]\n')


def test_an_acl_user_with_the_printed_rule_runs_the_whole_happy_path(
        private_redis: RedisServer, factory: MasterFactory, tmp_path: Path,
        namespace: str) -> None:
    url = acl_user(private_redis, namespace, tmp_path)
    master = start(factory, url, toml(HAPPY, namespace=namespace))
    env = {"BANANAS_REDIS_URL": url, "BANANAS_NAMESPACE": namespace}
    enqueued = run("enqueue", "record", "--args", '["cli"]', cwd=tmp_path, env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    app = App(url, namespace=namespace)
    delayed = app.enqueue("record", args=["later"], delay=0.3)  # the scheduler promotes it
    doomed = app.enqueue("always_fails")
    for job_id in (enqueued.stdout.strip(), delayed):
        wait_until(lambda j=job_id: app.job(j).state == "succeeded")  # type: ignore[misc]
    wait_until(lambda: app.job(doomed).state == "dead", timeout=20)  # type: ignore[union-attr]
    wait_until(lambda: any(app.job(i).state == "succeeded"  # type: ignore[union-attr]
                           for i in ticks(private_redis.url, namespace)))

    listed = run("dead", "list", "--json", cwd=tmp_path, env=env)
    assert [j["id"] for j in json.loads(listed.stdout)] == [doomed], listed.stderr
    assert run("dead", "retry", "--all", cwd=tmp_path, env=env).returncode == 0
    wait_until(lambda: app.job(doomed).state == "dead", timeout=20)  # type: ignore[union-attr]
    assert run("dead", "purge", cwd=tmp_path, env=env).returncode == 0
    status = run("status", "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["scheduler"]["leader"] and data["dead"] == 0
    assert [n["pid"] for n in data["nodes"]] == [master.pid]

    assert denied(private_redis) == []
    for output in (master.read_log(), enqueued.stderr, listed.stdout, status.stdout):
        assert PASSWORD not in output, output


def ticks(admin_url: str, namespace: str) -> list[str]:
    """Ids of jobs the periodic entry made (read as the admin: the worker may not SCAN):
    the tag is in a waiting job's arguments, and in a finished one's result."""
    with redis.Redis.from_url(admin_url, decode_responses=True) as client:
        prefix = f"{{{namespace}}}:job:"
        return [key[len(prefix):] for key in client.scan_iter(f"{prefix}*")
                if any("tick" in (text or "") for text in client.hmget(key, "args", "result"))]


def test_a_missing_permission_names_the_command_once_and_nothing_dies(
        private_redis: RedisServer, factory: MasterFactory, tmp_path: Path,
        namespace: str) -> None:
    url = acl_user(private_redis, namespace, tmp_path, without="blpop")
    master = start(factory, url, toml(POOL, namespace=namespace))
    children = master.wait_children({"default": 2, "scheduler": 1})
    wait_until(lambda: "'blpop'" in master.read_log(), timeout=15)
    app = App(url, namespace=namespace)
    job_id = app.enqueue("record", args=["still works"])
    wait_until(lambda: app.job(job_id).state == "succeeded")  # type: ignore[union-attr]
    assert master.children() == children  # no child died or was replaced
    log = master.read_log()
    complaints = [line for line in log.splitlines() if "'blpop'" in line]
    # once per process and place: two pool children, the scheduler's two loops
    assert 1 <= len(complaints) <= 4 and "Traceback" not in log, log

    # the command line: one line naming the command
    without_zrevrange = acl_user(private_redis, namespace, tmp_path, without="zrevrange")
    one_line_error(run("dead", "list", "--redis", without_zrevrange, "--namespace", namespace,
                       cwd=tmp_path), 1, "'zrevrange'")


def test_start_without_a_needed_permission_exits_with_one_line(
        private_redis: RedisServer, factory: MasterFactory, tmp_path: Path,
        namespace: str) -> None:
    url = acl_user(private_redis, namespace, tmp_path, without="script|load")
    master = start(factory, url, toml(POOL, namespace=namespace), wait_ready=False)
    assert master.wait_exit(30) == 1
    log = master.read_log()
    refusals = [line for line in log.splitlines() if "cannot use Redis" in line]
    assert len(refusals) == 1 and "'script|load'" in refusals[0] and "Traceback" not in log
    assert PASSWORD not in log


# -- Sentinel, over TLS, with passwords ------------------------------------------------------


@pytest.fixture
def secured_cluster(tmp_path_factory: pytest.TempPathFactory,
                    certificates: Certificates) -> Iterator[SentinelCluster]:
    """Primary, replica and Sentinels all TLS-only with client certificates; the servers
    and the Sentinels each with a password of their own."""
    cluster = SentinelCluster(tmp_path_factory.mktemp("secured"), Secured(certificates))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_sentinel_over_tls_with_passwords_end_to_end(secured_cluster: SentinelCluster,
                                                     factory: MasterFactory, tmp_path: Path,
                                                     namespace: str) -> None:
    url = secured_cluster.url()
    secured = secured_cluster.secured
    assert secured is not None
    master = start(factory, url, toml(POOL, namespace=namespace))
    url_file = tmp_path / "redis-url"
    url_file.write_text(url)
    enqueued = run("enqueue", "record", "--redis-file", str(url_file), "--namespace",
                   namespace, cwd=tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr
    app = App(url, namespace=namespace)
    wait_until(lambda: app.job(enqueued.stdout.strip()).state == "succeeded")  # type: ignore[union-attr]

    secured_cluster.failover()  # everyone follows, over TLS, logging in again
    fresh = App(url, namespace=namespace)  # asks the Sentinels now (old ones may lag ~8 s)
    after = fresh.enqueue("record", args=["after"])
    wait_until(lambda: getattr(fresh.job(after), "state", None) == "succeeded", timeout=30)
    status = run("status", "--json", "--namespace", namespace, cwd=tmp_path,
                 env={"BANANAS_REDIS_URL_FILE": str(url_file)})
    assert [n["pid"] for n in json.loads(status.stdout)["nodes"]] == [master.pid]
    for secret in (secured.password, secured.sentinel_password):
        assert secret not in master.read_log() + status.stdout + status.stderr

    wrong = url.replace(secured.sentinel_password, "not-the-sentinel-password")
    one_line_error(run("status", "--redis", wrong, cwd=tmp_path), 1,
                   "No master found for 'mymaster'", "AuthenticationError")
    refused = start(factory, wrong, toml(POOL, namespace=namespace), wait_ready=False)
    assert refused.wait_exit(30) == 1
    assert "cannot use Redis at redis+sentinel://:***@" in refused.read_log()
