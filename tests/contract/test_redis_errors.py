"""Redis answering with an error, not dropping the connection: every slot, the scheduler
and the consumer as a whole survive BUSY, READONLY, OOM, MISCONF and a missing permission, and
work at full strength afterwards. Each test owns its redis-server (it reconfigures it)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis._parsers.base import BaseParser

from bananas_prefork import App
from bananas_prefork.core.consumer import Consumer, ConsumerHooks
from bananas_prefork.core.embedded import RedisServer
from bananas_prefork.core.errors import is_transient
from bananas_prefork.core.scheduler import Scheduler
from tests.helpers import wait_until

LONG_SCRIPT = """
local start = redis.call('TIME')
while true do
    local now = redis.call('TIME')
    if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) * 1000 then
        return 1
    end
end
"""


@pytest.fixture
def server(private_redis: RedisServer) -> Iterator[redis.Redis]:
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
    admin.config_set("lua-time-limit", 100)  # BUSY replies after 100 ms of a script
    yield admin
    admin.close()


@pytest.fixture
def app(private_redis: RedisServer, namespace: str) -> App:
    return App(private_redis.url, namespace=namespace)


class Recorder(ConsumerHooks):
    def __init__(self) -> None:
        self.refusals: list[str] = []

    def on_redis_refusal(self, where: str, error: str | None) -> None:
        if error is not None:
            self.refusals.append(error)


def all_slots_work(app: App, slots: int) -> None:
    """``slots`` jobs must run at the same time: each waits for all the others."""
    barrier = threading.Barrier(slots, timeout=20)

    @app.task(name="together")
    def together() -> str:
        barrier.wait()
        return "ok"

    ids = [together.enqueue() for _ in range(slots)]
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in ids), timeout=25,
               message=f"{slots} jobs running at once")


def finish_during_the_episode(app: App, consumer: Consumer, slots: int) -> list[str]:
    """Jobs that end (and so call Redis) while the fault lasts, one per slot."""
    @app.task(name="nap")
    def nap(seconds: float) -> None:
        time.sleep(seconds)

    ids = [nap.enqueue(0.5 + 0.3 * n) for n in range(slots)]
    wait_until(lambda: all(app.job(i).state == "running" for i in ids),
               message="every slot busy")
    return ids


def busy_for(url: str, seconds: float) -> threading.Thread:
    def run() -> None:
        client = redis.Redis.from_url(url)
        try:
            client.eval(LONG_SCRIPT, 0, int(seconds * 1000))
        finally:
            client.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_busy_episode_leaves_every_slot_and_the_scheduler_working(
        app: App, server: redis.Redis, private_redis: RedisServer,
        consumers: list[Consumer]) -> None:
    consumer = Consumer(app, threads=4, idle_timeout=0.1)
    consumer.start()
    consumers.append(consumer)
    finish_during_the_episode(app, consumer, 4)
    scheduler = Scheduler(app.broker, interval=0.05)
    scheduling = threading.Thread(target=scheduler.run, daemon=True)
    scheduling.start()
    try:
        wait_until(lambda: scheduler.is_leader)
        busy_for(private_redis.url, 3.0).join()
        all_slots_work(app, 4)
        assert consumer.is_alive() and scheduling.is_alive()
        job_id = app.enqueue("nap", args=[0], delay=0.05)
        wait_until(lambda: app.job(job_id).state == "succeeded", timeout=10,
                   message="the scheduler to promote again")
    finally:
        scheduler.stop()
        scheduling.join(5)


def survives_episode(app: App, consumers: list[Consumer], begin: Callable[[], object],
                     end: Callable[[], object], seconds: float) -> Recorder:
    """Three busy slots live through a fault of ``seconds``: then three jobs run at
    once and the jobs that ended during the fault succeed. Returns what was reported."""
    hooks = Recorder()
    consumer = Consumer(app, threads=3, idle_timeout=0.1, hooks=hooks)
    consumer.start()
    consumers.append(consumer)
    naps = finish_during_the_episode(app, consumer, 3)
    begin()
    time.sleep(seconds)  # the fault lasts this long: the slots keep hitting it
    end()
    all_slots_work(app, 3)
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in naps))
    return hooks


def test_a_read_only_episode_leaves_every_slot_working(
        app: App, server: redis.Redis, consumers: list[Consumer]) -> None:
    # a replica of a master that does not answer: it keeps its data and refuses writes
    survives_episode(app, consumers, lambda: server.replicaof("127.0.0.1", 1),
                     lambda: server.replicaof("NO", "ONE"), 1.5)


def test_an_out_of_memory_episode_leaves_every_slot_working(
        app: App, server: redis.Redis, consumers: list[Consumer]) -> None:
    survives_episode(app, consumers, lambda: server.config_set("maxmemory", 1),
                     lambda: server.config_set("maxmemory", 0), 2.0)


def test_a_failed_snapshot_episode_leaves_every_slot_working(
        app: App, server: redis.Redis, private_redis: RedisServer,
        consumers: list[Consumer]) -> None:
    """MISCONF for real: a snapshot that cannot be written makes Redis refuse every
    write (stop-writes-on-bgsave-error) until the operator lifts it. It is waited out
    as a passing fault, not reported as a refusal of this deployment."""
    def fail_snapshots() -> None:
        server.config_set("stop-writes-on-bgsave-error", "yes")
        server.config_set("save", "3600 1")  # the refusal needs snapshots to be configured
        shutil.rmtree(private_redis.data_dir)  # no file can be made there, even as root
        server.bgsave()
        wait_until(lambda: server.info("persistence")["rdb_last_bgsave_status"] == "err",
                   message="the snapshot fails")
        with pytest.raises(redis.ResponseError, match="MISCONF"):
            server.set("probe", "1")

    hooks = survives_episode(app, consumers, fail_snapshots,
                             lambda: server.config_set("stop-writes-on-bgsave-error", "no"),
                             1.5)
    assert hooks.refusals == []


def test_a_missing_permission_is_reported_once_and_the_slots_wait_for_the_fix(
        server: redis.Redis, private_redis: RedisServer, namespace: str,
        consumers: list[Consumer]) -> None:
    server.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+@all", "-evalsha", "-eval"])
    url = f"redis://app:pw@127.0.0.1:{private_redis.port}/0"
    app = App(url, namespace=namespace)
    hooks = Recorder()
    consumer = Consumer(app, threads=2, idle_timeout=0.1, hooks=hooks)
    consumer.start()
    consumers.append(consumer)
    wait_until(lambda: hooks.refusals, message="the refusal to be reported")
    assert "NoPermissionError" in hooks.refusals[0] and "evalsha" in hooks.refusals[0]
    assert consumer.is_alive()
    server.execute_command("ACL", "SETUSER", "app", "+evalsha", "+eval")  # the fix
    all_slots_work(app, 2)
    assert len(set(hooks.refusals)) == 1


@pytest.mark.parametrize("reply, transient", [
    ("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
     True),
    ("LOADING Redis is loading the dataset in memory", True),
    ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
     True),
    ("READONLY You can't write against a read only replica.", True),
    ("ERR Error running script (call to f_0a9f): @user_script:1: -OOM command not allowed "
     "when used memory > 'maxmemory'.", True),
    ("NOREPLICAS Not enough good replicas to write.", True),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
    ("ERR user_script:1: attempt to perform arithmetic on a nil value", False),
    ("MOVED 3999 127.0.0.1:6381", False),
])
def test_error_replies_are_sorted_into_transient_and_permanent(reply: str,
                                                              transient: bool) -> None:
    assert is_transient(BaseParser.parse_error(reply)) is transient
