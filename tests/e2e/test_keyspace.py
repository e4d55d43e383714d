"""Every key a deployment writes lives under its namespace, in one Redis Cluster slot.

The Lua scripts build keys from the namespace prefix, so a key outside the
``{namespace}`` hash tag would break them on a cluster and leak into other
deployments sharing the server. This drives every path that writes keys
(enqueue, delay, run, retry, dead letters, hand-by-hand retry, the scheduler,
periodic ticks, node publishing, status) and then looks at the whole keyspace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
from redis.crc import key_slot

from bananas_prefork import App
from bananas_prefork.core.embedded import RedisServer
from tests.apps.recorder import runs_key
from tests.helpers import wait_until
from tests.masters import ROOT, MasterFactory, toml

EVERYTHING = """
[[periodic]]
name = "tick"
task = "record"
every = "1s"

[pools.default]
concurrency = 2
"""


def test_every_key_is_in_the_namespace_slot(private_redis: RedisServer, tmp_path: Path,
                                            namespace: str) -> None:
    exercise(private_redis.url, tmp_path, namespace)  # its own server: nobody else writes


def exercise(redis_url: str, tmp_path: Path, namespace: str) -> None:
    """A master and every key-writing path on ``redis_url``; then the whole keyspace."""
    rclient = redis.Redis.from_url(redis_url, decode_responses=True)
    masters = MasterFactory(tmp_path, redis_url, namespace)
    try:
        _drive(masters, App(redis_url, namespace=namespace), rclient, tmp_path, redis_url,
               namespace)
    finally:
        for master in masters.started:
            master.stop()
        rclient.close()


def _drive(masters: MasterFactory, app: App, rclient: redis.Redis, tmp_path: Path,
           redis_url: str, namespace: str) -> None:
    masters(toml(EVERYTHING))
    done = app.enqueue_many([("record", [n]) for n in range(5)])
    later = app.enqueue("urgent", delay=0.3)
    dead = app.enqueue("always_fails")
    unknown = app.enqueue("no_such_task")
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in [*done, later]))
    wait_until(lambda: app.job(dead).state == "dead" and app.job(unknown).state == "dead")
    wait_until(lambda: sum("|record|" in run  # the five above and a periodic tick
                           for run in rclient.lrange(runs_key(namespace), 0, -1)) > 5)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (["dead", "retry", dead], ["status", "--json"], ["periodic", "list"]):
        result = subprocess.run([sys.executable, "-m", "bananas_prefork", *argv, "--redis",
                                 redis_url, "--namespace", namespace], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode in (0, 3), result.stderr
    wait_until(lambda: app.job(dead).state == "dead"  # run again by hand, dead again
               and sum(run.startswith(dead)
                       for run in rclient.lrange(runs_key(namespace), 0, -1)) > 3)

    keys = [k for k in rclient.scan_iter("*") if k != runs_key(namespace)]
    prefix = "{%s}:" % namespace
    assert [k for k in keys if not k.startswith(prefix)] == []
    assert {key_slot(k.encode()) for k in keys} == {key_slot(prefix.encode())}
    kinds = {k[len(prefix):].split(":")[0] for k in keys}
    assert {"job", "dead", "node", "nodes", "owner", "scheduler", "periodic"} <= kinds, kinds
