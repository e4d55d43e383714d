"""Failover under load: a real master on a Sentinel URL, ``SENTINEL FAILOVER`` mid-load,
then a SIGKILL of the new primary.

Sentinel demotes the old primary about 8 s after ``SENTINEL FAILOVER``; until
then clients still connected to it keep writing there, and those writes are
lost when it resyncs from the new one. That window, and the SIGKILL, are what
``min_replicas_ack`` is for.

Every job whose enqueue returned must end ``succeeded``, or be missing because
asynchronous replication dropped it (counted: acknowledged-then-lost). With
``min_replicas_ack = 1`` nothing may be lost. No process may be wedged, and work
must resume within seconds. The figures are printed (``pytest -s``) as the
table in docs/high-availability.md.

    .venv/bin/python -m pytest tests/e2e/test_failover.py -s
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from bananas_prefork import App
from tests.e2e.test_cli import run as cli
from tests.helpers import wait_until
from tests.masters import MasterFactory, MasterProcess, toml
from tests.servers import SentinelCluster

RATE = 150.0  # jobs enqueued per second during the faults
POOL = '[pools.default]\nconcurrency = 4\nthreads = 2\n'


@dataclass
class Load:
    """A producer thread: enqueues ``record`` jobs at RATE, keeps every acknowledged id."""

    app: App
    acked: list[tuple[float, str]] = field(default_factory=list)  # (call started, id)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        sent = 0
        began = time.monotonic()
        while not self.stop.is_set():
            started = time.time()
            try:
                self.acked.append((started, self.app.enqueue("record", args=[sent])))
            except redis.RedisError:
                self.refused += 1
            sent += 1
            self.stop.wait(max(0.0, began + sent / RATE - time.monotonic()))


@dataclass
class Outcome:
    min_replicas_ack: int
    acknowledged: int
    succeeded: int
    lost: int  # acknowledged, then missing after the failover
    stuck: int  # neither succeeded nor missing when the drain deadline passed
    refused: int  # enqueues that raised (never acknowledged: the caller knows)
    recover_failover_s: float
    recover_kill_s: float
    wedged: list[str]


def _recovery(app: App, acked: list[tuple[float, str]], fault_at: float) -> float:
    """Seconds from a fault until a job enqueued after it had run."""
    after = [job_id for started, job_id in acked if started >= fault_at][:200]
    finished = [info.finished_at for job_id in after
                if (info := app.job(job_id)) is not None and info.finished_at]
    return round(min(finished) - fault_at, 2) if finished else float("inf")


def _wedged(app: App, master_pid: int, alive: bool) -> list[str]:
    """What did not come back: the master, a slot, the scheduler."""
    problems = [] if alive else [f"master {master_pid} exited"]
    probes = [app.enqueue("record", args=["probe"]) for _ in range(40)]
    delayed = app.enqueue("record", args=["delayed"], delay=0.5)  # needs the scheduler
    try:
        wait_until(lambda: all(app.job(i).state == "succeeded"  # type: ignore[union-attr]
                               for i in [*probes, delayed]), timeout=15, interval=0.1)
    except AssertionError:
        states = {i: getattr(app.job(i), "state", None) for i in [*probes, delayed]}
        problems.append(f"probe jobs not run: {states}")
    return problems


@dataclass
class Run:
    """One deployment under load through the faults: a master and a producer."""

    app: App
    master: MasterProcess
    load: Load
    producer: threading.Thread

    @classmethod
    def start(cls, cluster: SentinelCluster, masters: MasterFactory, namespace: str,
              replicas_ack: int) -> Run:
        master = masters(toml(POOL, namespace=namespace, min_replicas_ack=replicas_ack),
                         name=f"ack{replicas_ack}")
        app = App(cluster.url(), namespace=namespace, min_replicas_ack=replicas_ack)
        load = Load(app)
        producer = threading.Thread(target=load.run, daemon=True)
        producer.start()
        return cls(app, master, load, producer)

    def finish(self, failover_at: float, kill_at: float) -> Outcome:
        self.load.stop.set()
        self.producer.join(10)
        app, ids = self.app, [job_id for _, job_id in self.load.acked]

        def settled() -> bool:
            return all(info is None or info.state in ("succeeded", "dead")
                       for info in map(app.job, ids))

        try:
            wait_until(settled, timeout=40, interval=0.2, message="every acknowledged job")
        except AssertionError:
            pass  # counted as stuck below
        infos = [app.job(job_id) for job_id in ids]
        proc = self.master.proc
        return Outcome(
            min_replicas_ack=app.min_replicas_ack, acknowledged=len(ids),
            succeeded=sum(1 for i in infos if i is not None and i.state == "succeeded"),
            lost=sum(1 for i in infos if i is None),
            stuck=sum(1 for i in infos if i is not None and i.state != "succeeded"),
            refused=self.load.refused,
            recover_failover_s=_recovery(app, self.load.acked, failover_at),
            recover_kill_s=_recovery(app, self.load.acked, kill_at),
            wedged=_wedged(app, self.master.pid, proc is not None and proc.poll() is None))


def _faults(cluster: SentinelCluster) -> tuple[float, float]:
    """SENTINEL FAILOVER, completed (the old primary demoted); then a SIGKILL of the new
    primary, started again once the Sentinels promoted the other. Returns both times."""
    time.sleep(1.5)  # load before the faults (the load's own duration, not a wait)
    old = cluster.primary_port()
    failover_at = time.time()
    new = cluster.failover()
    cluster.wait_demoted(old, new)
    time.sleep(1.0)
    victim = cluster.server_on(new)
    victim.kill()
    kill_at = time.time()
    cluster.wait_new_primary(new)
    victim.start()  # back as it would be restarted; Sentinel makes it a replica
    wait_until(lambda: cluster.replicas_up(cluster.primary_port()), timeout=45, interval=0.1,
               message="the restarted server to replicate")
    time.sleep(1.5)
    return failover_at, kill_at


def _throughput(cluster: SentinelCluster, masters: MasterFactory, namespace: str,
                replicas_ack: int, jobs: int = 600) -> tuple[float, float]:
    """(enqueues/s from one thread, jobs/s run by the pool) with no faults."""
    app = App(cluster.url(), namespace=namespace, min_replicas_ack=replicas_ack)
    started = time.monotonic()
    ids = [app.enqueue("record", args=[n]) for n in range(jobs)]
    enqueue_rate = jobs / (time.monotonic() - started)
    masters(toml(POOL, namespace=namespace, min_replicas_ack=replicas_ack),
            name=f"rate{replicas_ack}")
    started = time.monotonic()  # from the master's READY: every child is up
    wait_until(lambda: app.queue_depths()["normal"].get("record") == 0 and
               all(app.job(i).state == "succeeded"  # type: ignore[union-attr]
                   for i in ids[-50:]), timeout=60, interval=0.02)
    return round(enqueue_rate), round(jobs / (time.monotonic() - started))


def test_failover_and_primary_kill_under_load(sentinel_cluster: SentinelCluster,
                                               tmp_path: Path, namespace: str) -> None:
    factory = MasterFactory(tmp_path, sentinel_cluster.url(), namespace)
    try:
        rates = {ack: _throughput(sentinel_cluster, factory, f"{namespace}r{ack}", ack)
                 for ack in (0, 1)}
        for master in factory.started:
            master.stop()
        # Both modes through the same faults, side by side.
        runs = [Run.start(sentinel_cluster, factory, f"{namespace}f{ack}", ack)
                for ack in (0, 1)]
        failover_at, kill_at = _faults(sentinel_cluster)
        outcomes = [run.finish(failover_at, kill_at) for run in runs]
        # the command line follows the primary too
        status = cli("status", "--json", "--redis", sentinel_cluster.url(), "--namespace",
                     f"{namespace}f1", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert [n["pid"] for n in json.loads(status.stdout)["nodes"]] == [runs[1].master.pid]
    finally:
        for master in factory.started:
            master.stop()
    table = {"rates": {str(k): {"enqueue_per_s": v[0], "jobs_per_s": v[1]}
                       for k, v in rates.items()},
             "failover": [asdict(o) for o in outcomes]}
    print("\nFAILOVER TABLE " + json.dumps(table))
    safe = outcomes[1]
    for outcome in outcomes:
        assert outcome.stuck == 0, outcome
        assert outcome.wedged == [], outcome
        assert outcome.recover_failover_s < 10 and outcome.recover_kill_s < 20, outcome
        assert outcome.succeeded + outcome.lost == outcome.acknowledged, outcome
    assert safe.lost == 0, safe
