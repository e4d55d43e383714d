"""A test application whose jobs record every run in Redis.

Imported by test processes (consumers, masters); configured by environment:
BANANAS_REDIS_URL and BANANAS_NAMESPACE. Runs are appended to the list
``{<namespace>}:test:runs`` (in the namespace's cluster slot) as
``job_id|attempt|pid|name|pool``.
"""

from __future__ import annotations

import os
import time

import redis

from bananas_prefork import App, current_job
from bananas_prefork.core.connection import connect

app = App(namespace=os.environ.get("BANANAS_NAMESPACE", "bananas"))
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None or _client.connection_pool.pid != os.getpid():
        _client = connect(app.redis_url)  # any URL form: Sentinel, TLS, ACL user
    return _client


def runs_key(namespace: str) -> str:
    return "{%s}:test:runs" % namespace


def _record() -> None:
    job = current_job()
    assert job is not None
    _redis().rpush(runs_key(app.namespace),
                   f"{job.id}|{job.attempt}|{os.getpid()}|{job.name}|{job.pool}")


@app.task
def record(tag: object = None) -> object:
    _record()
    return tag


@app.task(priority="high")
def urgent(tag: object = None) -> object:
    _record()
    return tag


@app.task(name="send_email")
def send_email(to: str = "", subject: str = "") -> str:
    _record()
    return to


@app.task(name="fetch_data")
def fetch_data(n: int = 0) -> int:
    _record()
    return n


@app.task
def sleep(seconds: float) -> float:
    _record()
    time.sleep(seconds)
    return seconds


@app.task
def block_until_released(key: str) -> str:
    """Runs until the test pushes to ``key`` (or forever)."""
    _record()
    _redis().blpop([key], timeout=0)
    return key


@app.task(max_retries=0)
def crash_worker() -> None:
    """Kills its own process mid-job: a poison pill."""
    _record()
    os.kill(os.getpid(), 9)


@app.task(max_retries=0)
def exit_quietly() -> None:
    """Leaves its process with code 0 mid-job: a lost run all the same."""
    _record()
    os._exit(0)


@app.task
def hog_memory(megabytes: int, hold: float = 5.0) -> int:
    _record()
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)
    return len(block)


@app.task(max_retries=2, retry_backoff=0.05)
def always_fails(tag: object = None) -> None:
    _record()
    raise RuntimeError(f"boom {tag}")


@app.task
def busy_loop(seconds: float) -> float:
    """Holds the GIL in pure Python for a while."""
    _record()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds
