"""The benchmark's task module, imported by the driver (core.py) and by every consumer.

The job body mirrors ``benchcommon.job_body`` of ../shared/bench/peers.py so
that our numbers are comparable with the peer benchmark: every job does one
``INCR bench:done`` in Redis db 15 of the same server (the only completion
signal the driver looks at), and a latency job also pushes its pickup delay.

Environment: BANANAS_REDIS_URL (the broker, db 0), BANANAS_NAMESPACE
(default ``bench``), BENCH_COUNTER_URL (default: the broker URL with db 15).
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit, urlunsplit

import redis

from bananas_prefork import App, current_job

DONE_KEY = "bench:done"  # INCR by every job
LAT_KEY = "bench:lat"  # RPUSH of (start - enqueue timestamp), seconds
STARTED_KEY = "bench:started"  # HSET job id -> start time (delayed jobs)
COUNTER_DB = 15

# What a job records besides the INCR, given as its second argument.
COUNT_ONLY, RECORD_LATENCY, RECORD_START = 0, 1, 2

app = App(namespace=os.environ.get("BANANAS_NAMESPACE", "bench"))

_client: redis.Redis | None = None
_client_pid: int | None = None


def counter_url(broker_url: str) -> str:
    """The broker URL with db 15: the counter lives on the same server, away from jobs."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"set BENCH_COUNTER_URL for a {parts.scheme!r} broker URL")
    return urlunsplit(parts._replace(path=f"/{COUNTER_DB}"))


def _counter() -> redis.Redis:
    """One client per process (re-created after a fork), made on first use."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        url = os.environ.get("BENCH_COUNTER_URL") or counter_url(app.redis_url)
        _client = redis.Redis.from_url(url)
        _client_pid = os.getpid()
    return _client


@app.task(name="noop")
def noop(enqueued_at: float = 0.0, record: int = COUNT_ONLY) -> None:
    """Do nothing but report completion (and, if asked, when it started).

    ``enqueued_at`` is the driver's time.time() just before its enqueue call;
    drain jobs carry ``(0.0, 0)`` like the peers' jobs, so payloads match too.
    """
    started = time.time()
    client = _counter()
    if record == COUNT_ONLY:
        client.incr(DONE_KEY)
        return
    pipe = client.pipeline(transaction=False)
    if record == RECORD_LATENCY:
        pipe.rpush(LAT_KEY, repr(started - float(enqueued_at)))
    else:
        job = current_job()
        pipe.hset(STARTED_KEY, job.id if job else "?", repr(started))
    pipe.incr(DONE_KEY)
    pipe.execute()


@app.task(name="io")
def io(hold: float = 0.010) -> None:
    """An I/O-bound job: wait ``hold`` seconds (as on a network call), then report."""
    time.sleep(hold)
    _counter().incr(DONE_KEY)
