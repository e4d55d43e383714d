"""Every worker mode, from a file and from the environment, with real masters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from bananas_prefork import App
from bananas_prefork.ops.status import gather
from tests.apps.recorder import runs_key
from tests.helpers import wait_until
from tests.masters import MasterFactory, toml


def test_thin_is_one_process_that_also_schedules(masters: MasterFactory, app: App) -> None:
    master = masters(toml('[pools.all]\nmode = "thin"\nconcurrency = 3\n'))
    master.wait_children({"all": 1})
    assert master.titles() == ["bananas-prefork: all[0] idle"]
    ids = [app.enqueue("sleep", args=[0.5]) for _ in range(3)]
    wait_until(lambda: all(app.job(i).state == "running" for i in ids), timeout=3)
    delayed = app.enqueue("record", delay=0.3)
    wait_until(lambda: app.job(delayed).state == "succeeded", timeout=5)


def test_specialized_pools_take_only_their_priorities(
        masters: MasterFactory, app: App, rclient: redis.Redis, namespace: str) -> None:
    master = masters(toml('[pools.high]\nmode = "specialized"\npriorities = ["high"]\n'
                          'concurrency = 1\n\n[pools.low]\nmode = "specialized"\n'
                          'priorities = ["low"]\nconcurrency = 1\n'))
    kids = master.wait_children({"high": 1, "low": 1, "scheduler": 1})
    high = app.enqueue("record", priority="high")
    low = app.enqueue("record", priority="low")
    normal = app.enqueue("record", priority="normal")
    wait_until(lambda: rclient.llen(runs_key(namespace)) == 2)
    by_id = {r.split("|")[0]: int(r.split("|")[2])
             for r in rclient.lrange(runs_key(namespace), 0, -1)}
    assert by_id[high] in kids["high"] and by_id[low] in kids["low"]
    assert app.job(normal).state == "queued"  # nobody serves normal here


def test_job_specialized_pools_take_only_their_types(masters: MasterFactory, app: App) -> None:
    master = masters(toml('[pools.io]\nmode = "job-specialized"\njob_types = ["fetch_data"]\n'
                          'concurrency = 2\nthreads = 2\n'))
    master.wait_children({"io": 1, "scheduler": 1})
    fetch = app.enqueue("fetch_data", args=[1])
    email = app.enqueue("send_email")
    wait_until(lambda: app.job(fetch).state == "succeeded")
    assert app.job(email).state == "queued"
    assert app.queue_depths()["normal"]["send_email"] == 1


def test_scheduler_only_runs_no_jobs(masters: MasterFactory, app: App) -> None:
    master = masters(toml('[pools.sched]\nmode = "scheduler-only"\n'))
    master.wait_children({"scheduler": 1})
    ready = app.enqueue("record")
    delayed = app.enqueue("record", delay=0.2)
    wait_until(lambda: app.job(delayed).state == "queued", timeout=5)
    assert app.job(ready).state == "queued"
    assert app.queue_depths()["normal"]["record"] == 2

    def declared() -> dict[str, Any] | None:  # status lists the pool the file declares
        nodes = gather(app.broker)["nodes"]
        pools = nodes[0]["pools"] if nodes else []
        return pools[0] if pools and pools[0]["processes"] else None

    pool = wait_until(declared, timeout=5)
    (scheduler_pid,) = master.children()["scheduler"]
    assert (pool["name"], pool["mode"], pool["concurrency"]) == ("sched", "scheduler-only", 0)
    assert [p["pid"] for p in pool["processes"]] == [scheduler_pid]


def test_environment_and_dotenv_configure_a_master(masters: MasterFactory, app: App,
                                                   tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BANANAS_APP=tests.apps.recorder:app\nWORKER_MODE=thin\n"
                                   "WORKER_CONCURRENCY=9\n")
    master = masters(None, env={"WORKER_CONCURRENCY": "2", "ENABLE_SCHEDULER": "off"})
    master.wait_children({"thin": 1})
    ids = [app.enqueue("sleep", args=[0.4]) for _ in range(3)]
    wait_until(lambda: sum(app.job(i).state == "running" for i in ids) == 2, timeout=3)
    assert sum(app.job(i).state == "running" for i in ids) == 2  # real env wins: 2, not 9
    delayed = app.enqueue("record", delay=0.1)
    wait_until(lambda: all(app.job(i).state == "succeeded" for i in ids))
    assert app.job(delayed).state == "scheduled"  # ENABLE_SCHEDULER=off


def test_environment_job_specialized_pool(masters: MasterFactory, app: App) -> None:
    master = masters(None, env={"BANANAS_APP": "tests.apps.recorder:app",
                                "WORKER_MODE": "job-specialized",
                                "WORKER_JOB_TYPES": "send_email", "WORKER_CONCURRENCY": "2",
                                "SCHEDULER_INTERVAL": "100ms"})
    master.wait_children({"job-specialized": 2, "scheduler": 1})
    email = app.enqueue("send_email", delay=0.2)
    other = app.enqueue("record")
    wait_until(lambda: app.job(email).state == "succeeded", timeout=5)
    assert app.job(other).state == "queued"
