"""Tasks of the supervisor benchmarks (master.py, scheduler.py), run by real masters.

Deployment files say ``app = "supervisedtasks:app"`` and the master gets
``PYTHONPATH=bench/``; the master's deployment settings (redis_url, namespace)
win over the App's own. The jobs record what the drivers measure in Redis
**db 15** of the same server (``BENCH_COUNTER_URL``), away from the broker's db 0:

- ``tick``: HSETNX ``bench:first`` <pid> <start time>, i.e. the moment each
  process started its *first* job (later jobs leave it alone), and INCR
  ``bench:count``; then sleeps ``hold`` seconds (0 = a no-op job).
- ``stamp``: HSET ``bench:started`` <job id> <start time> (delayed-job lateness).
- ``collect``: a full ``gc.collect()``, HSET ``bench:collected`` <pid> 1, then
  sleeps ``hold`` seconds so that the next ``collect`` goes to another child.
"""

from __future__ import annotations

import gc
import os
import time

import redis

from bananas_prefork import App, current_job

FIRST_KEY = "bench:first"
COUNT_KEY = "bench:count"
STARTED_KEY = "bench:started"
COLLECTED_KEY = "bench:collected"

app = App(namespace=os.environ.get("BANANAS_NAMESPACE", "benchsup"))

_client: redis.Redis | None = None
_client_pid: int | None = None


def _counter() -> redis.Redis:
    """One client per process, made on first use (and again after a fork)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
        _client_pid = os.getpid()
    return _client


@app.task(name="tick")
def tick(hold: float = 0.0) -> None:
    started = time.time()
    pipe = _counter().pipeline(transaction=False)
    pipe.hsetnx(FIRST_KEY, str(os.getpid()), repr(started))
    pipe.incr(COUNT_KEY)
    pipe.execute()
    if hold > 0:
        time.sleep(hold)


@app.task(name="stamp")
def stamp() -> None:
    started = time.time()
    job = current_job()
    _counter().hset(STARTED_KEY, job.id if job else "?", repr(started))


@app.task(name="collect")
def collect(hold: float = 0.5) -> None:
    gc.collect()
    _counter().hset(COLLECTED_KEY, str(os.getpid()), "1")
    time.sleep(hold)
