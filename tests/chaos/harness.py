"""The chaos harness: a private Redis, a real master, steady load, faults, and the books.

One ``ChaosRun`` is one scenario. It starts a redis-server of its own (AOF on,
``appendfsync`` per scenario) and a master (``python -m bananas_prefork start``)
with three pools whose work does not overlap, so each pool can be probed on
its own:

=========  ===============  ==============================  ==========================
pool       mode             serves                          children x threads
=========  ===============  ==============================  ==========================
high       specialized      priority high                   2 x 2
reports    job-specialized  priority low, chaos_* types     2 x 1 (max_memory_mb_hard)
default    default          priority normal                 3 x 1
=========  ===============  ==============================  ==========================

plus the scheduler child. A load generator enqueues jobs by name at a steady
rate and books the ids Redis acknowledged. The jobs (``tests.apps.chaos_app``)
write every run to an append-only ledger that no fault touches. After the
scenario the run waits until every acknowledged job is final and computes:

jobs        acknowledged jobs (the load plus jobs the scenario injected)
faults      faults injected (each kill, restart, pause, reload, step ...)
lost        acknowledged, never run, and not final (succeeded, or dead with a reason)
duplicates  runs beyond the first per job; bounded by the job slots the faults touched
wedged      jobs still not final one ``owner_ttl`` (plus slack) after the scenario ended
recover     seconds from the end of the fault until completions are back to half the
            pre-fault rate (or until every job is final)

and checks that no process is wedged: every pool has its wanted children, the
scheduler has a leader, every slot of every pool takes a probe job at once, and a
delayed job is promoted.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from bananas_prefork import App
from bananas_prefork.core.embedded import RedisServer
from bananas_prefork.core.keys import Keys
from tests.helpers import wait_until
from tests.masters import MasterProcess

OWNER_TTL = 5.0
LEASE = 5.0
MAX_REDELIVERIES = 3  # the product's default: a job whose worker died this often is dead
PROBE_WAIT = 6.0  # longer than a consumer's idle backstop (2 s), so a missed wake-up is no miss
FINAL = ("succeeded", "dead")
Mix = tuple[tuple[str, str, float, int, int], ...]
# (task, priority, share of the load, shortest and longest run in ms)
MIX: Mix = (("chaos_high", "high", 0.4, 5, 50), ("chaos_default", "normal", 0.5, 5, 150),
            ("chaos_report", "low", 0.1, 50, 300))


@dataclass(frozen=True)
class Layout:
    """The master's pools: their TOML, and what the checks expect of them."""

    name: str
    pools: str  # the [pools.*] tables; {variant} is 0 or 1 (HUP alternates them)
    children: dict[str, int]  # children wanted per process-title label
    threads: dict[str, int]  # job slots per child, per label
    probe_priority: dict[str, str]  # a probe at this priority reaches only that pool

    @property
    def slots(self) -> dict[str, int]:
        """Job slots per pool."""
        return {pool: self.children[pool] * self.threads[pool] for pool in self.probe_priority}

    @property
    def all_slots(self) -> int:
        return sum(self.slots.values())

    def toml(self, variant: int = 0) -> str:
        return f"""app = "tests.apps.chaos_app:app"
shutdown_timeout = "3s"
owner_ttl = "{OWNER_TTL:g}s"
max_redeliveries = {MAX_REDELIVERIES}

[scheduler]
lease = "{LEASE:g}s"
""" + self.pools.format(timeout=30 + variant, max_jobs=100000 + variant)


# Three pools whose work does not overlap, and the scheduler child.
PREFORK = Layout("prefork", """
[pools.high]
mode = "specialized"
priorities = ["high"]
concurrency = 4
threads = 2
job_timeout = "30s"

[pools.reports]
mode = "job-specialized"
priorities = ["low"]
job_types = ["chaos_report", "chaos_hog", "chaos_exit", "chaos_probe"]
concurrency = 2
max_memory_mb_hard = 150
job_timeout = "{timeout}s"

[pools.default]
mode = "default"
priorities = ["normal"]
concurrency = 3
job_timeout = "30s"
max_jobs_per_child = {max_jobs}
""", children={"high": 2, "reports": 2, "default": 3, "scheduler": 1},
    threads={"high": 2, "reports": 1, "default": 1, "scheduler": 0},
    probe_priority={"high": "high", "reports": "low", "default": "normal"})

# One thin child: every job and the scheduler, in threads of one process.
THIN = Layout("thin", """
[pools.thin]
mode = "thin"
concurrency = 10
job_timeout = "{timeout}s"
""", children={"thin": 1}, threads={"thin": 10}, probe_priority={"thin": "normal"})


@dataclass(frozen=True)
class Profile:
    """How long each phase lasts; ``short`` runs in the normal test run, ``full`` by
    ``scripts/chaos``."""

    name: str
    rate: float  # jobs enqueued per second
    warmup: float  # load before the first fault (the pre-fault rate is measured here)
    fault: float  # how long a fault phase lasts (kills, HUPs, pauses, error replies ...)
    outage: float  # Redis stopped this long
    stall: float  # SIGSTOP of a child or of the master (past owner_ttl)
    pause: float  # CLIENT PAUSE and the busy script (past Redis' 5 s busy threshold)
    restarts: int  # Redis restarts per restart scenario
    hogs: int  # runaway jobs in the memory scenario
    post: float  # load after the fault (recovery is measured here)
    slack: float  # beyond owner_ttl, for the backlog to drain
    test_timeout: float  # pytest-timeout per scenario


PROFILES = {
    "short": Profile("short", rate=40, warmup=2.5, fault=6.0, outage=8.0, stall=7.0, pause=6.0,
                     restarts=1, hogs=1, post=3.0, slack=10.0, test_timeout=110),
    "full": Profile("full", rate=50, warmup=4.0, fault=15.0, outage=20.0, stall=10.0, pause=10.0,
                    restarts=3, hogs=2, post=10.0, slack=15.0, test_timeout=240),
}


def current_profile() -> Profile:
    """The profile named by ``$BANANAS_CHAOS_PROFILE`` (short by default)."""
    name = os.environ.get("BANANAS_CHAOS_PROFILE", "short")
    if name not in PROFILES:
        raise ValueError(f"BANANAS_CHAOS_PROFILE={name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


# -- the books ---------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault and the job slots it could force to run a job again."""

    kind: str
    at: float  # monotonic
    slots: int
    detail: str = ""


@dataclass
class Run:
    """One run of a job, from the ledger."""

    job_id: str
    attempt: int
    pid: int
    start: float
    end: float | None = None
    pool: str = ""


def read_ledger(directory: Path) -> list[Run]:
    """Every run the jobs recorded (a torn last line of a killed process is skipped)."""
    runs: dict[tuple[str, int, int], Run] = {}
    ends: list[tuple[str, int, int, float]] = []
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            try:
                if parts[0] == "S" and len(parts) == 6:
                    key = (parts[1], int(parts[2]), int(parts[3]))
                    runs[key] = Run(parts[1], int(parts[2]), int(parts[3]), float(parts[4]),
                                    pool=parts[5])
                elif parts[0] == "E" and len(parts) == 5:
                    ends.append((parts[1], int(parts[2]), int(parts[3]), float(parts[4])))
            except (IndexError, ValueError):
                continue
    for job_id, attempt, pid, end in ends:
        if (job_id, attempt, pid) in runs:
            runs[(job_id, attempt, pid)].end = end
    return sorted(runs.values(), key=lambda r: r.start)


@dataclass
class Result:
    """What one scenario did to the jobs and to the processes."""

    scenario: str
    profile: str
    jobs: int = 0
    faults: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicate_bound: int = 0
    wedged: int = 0
    recover_s: float | None = None
    pre_rate: float = 0.0
    refused_batches: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> list[str]:
        """Every broken promise, for the assertion message and the table."""
        broken = []
        if self.lost:
            broken.append(f"{self.lost} lost")
        if self.wedged:
            broken.append(f"{self.wedged} wedged")
        if self.duplicates > self.duplicate_bound:
            broken.append(f"{self.duplicates} duplicates > bound {self.duplicate_bound}")
        return broken + self.problems

    def describe(self) -> str:
        recover = "never" if self.recover_s is None else f"{self.recover_s:.1f}s"
        return (f"{self.scenario} [{self.profile}]: jobs {self.jobs}, faults {self.faults}, "
                f"lost {self.lost}, duplicates {self.duplicates} (bound "
                f"{self.duplicate_bound}), wedged {self.wedged}, recover {recover}, "
                f"pre-fault rate {self.pre_rate:.1f}/s, refused batches "
                f"{self.refused_batches}\n  problems: {self.problems}\n  notes: "
                + "\n    ".join(self.notes))


def save_result(result: Result) -> None:
    """Append the result as one JSON line to ``$BANANAS_CHAOS_RESULTS`` (scripts/chaos)."""
    target = os.environ.get("BANANAS_CHAOS_RESULTS")
    if target:
        with open(target, "a") as handle:
            handle.write(json.dumps(asdict(result)) + "\n")


# -- load ---------------------------------------------------------------------------------


class LoadGenerator:
    """Enqueues the job mix at a steady rate in its own thread; books what Redis acked.

    A batch that raises is not acknowledged, whatever Redis did with it: the
    producer was told it failed. Missed ticks (a paused Redis) are skipped, not
    caught up in a burst.
    """

    TICK = 0.1

    def __init__(self, url: str, namespace: str, rate: float, mix: Mix = MIX) -> None:
        self.app = App(url, namespace=namespace)
        self.rate = rate
        self.mix = mix
        self.acked: dict[str, float] = {}  # job id -> monotonic ack time
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-load")
        self.started_at = 0.0
        self.stopped_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop enqueuing and wait for the batch in flight (the scenario has ended)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)
        self.stopped_at = time.monotonic()

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(60)
        self.app.broker.client.close()

    def enqueue(self, items: list[tuple[str, list[Any], dict[str, Any], dict[str, Any]]]
                ) -> list[str] | None:
        """Enqueue a batch; its ids if Redis acknowledged it, else None."""
        try:
            ids = self.app.enqueue_many(items)
        except redis.RedisError as exc:
            with self.lock:
                self.refused[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
            return None
        now = time.monotonic()
        with self.lock:
            for job_id in ids:
                self.acked[job_id] = now
        return ids

    def _batch(self, size: int) -> list[tuple[str, list[Any], dict[str, Any], dict[str, Any]]]:
        items: list[tuple[str, list[Any], dict[str, Any], dict[str, Any]]] = []
        for _ in range(size):
            pick, total = random.random() * sum(kind[2] for kind in self.mix), 0.0
            for name, priority, share, low, high in self.mix:
                total += share
                if pick <= total or name == self.mix[-1][0]:
                    items.append((name, [random.randint(low, high)], {},
                                  {"priority": priority}))
                    break
        return items

    def _run(self) -> None:
        due, carry = time.monotonic(), 0.0
        while not self._stop.is_set():
            carry += self.rate * self.TICK
            size, carry = int(carry), carry - int(carry)
            if size:
                self.enqueue(self._batch(size))
            due += self.TICK
            late = time.monotonic() - due
            if late > 0:  # a blocked enqueue: skip the missed ticks
                due += self.TICK * (late // self.TICK + 1)
            self._stop.wait(max(0.0, due - time.monotonic()))

    def acknowledged(self) -> dict[str, float]:
        with self.lock:
            return dict(self.acked)


# -- one scenario ----------------------------------------------------------------------------


class ChaosRun:
    """A private Redis, a master, load and faults; every process is killed in close()."""

    def __init__(self, name: str, tmp: Path, profile: Profile, *, layout: Layout = PREFORK,
                 appendfsync: str = "everysec", clock: bool = False, mix: Mix = MIX) -> None:
        self.name = name
        self.layout = layout
        self.mix = mix
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.appendfsync = appendfsync
        self.namespace = "chaos" + uuid.uuid4().hex[:8]
        self.ledger = tmp / "ledger"
        self.ledger.mkdir()
        self.clock_path: Path | None = None
        if clock:
            self.clock_path = tmp / "clock"
            self.clock_path.write_bytes(struct.pack("d", 0.0))
        self.redis: RedisServer | None = None
        self.client: redis.Redis | None = None
        self.masters: list[MasterProcess] = []
        self.load: LoadGenerator | None = None
        self.faults: list[Fault] = []
        self.fault_started: float | None = None
        self.fault_ended: float | None = None
        self.variant = 0
        self.result = Result(name, profile.name)
        self.checks: list[Callable[[], str | None]] = []  # a scenario's own process checks
        self.unrun: list[str] = []  # acknowledged jobs that had not run at the deadline
        self._cleanups: list[Callable[[], None]] = []

    # -- processes -----------------------------------------------------------------------

    def start(self) -> ChaosRun:
        binary = os.environ.get("BANANAS_TEST_REDIS_SERVER") or None  # as tests/conftest.py
        self.redis = RedisServer(self.tmp / "redis", binary=binary,
                                 appendfsync=self.appendfsync).start()
        self.client = redis.Redis.from_url(self.redis.url, decode_responses=True,
                                           socket_timeout=10)
        self.start_master()
        self.load = LoadGenerator(self.redis.url, self.namespace, self.profile.rate, self.mix)
        return self

    @property
    def url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    @property
    def master(self) -> MasterProcess:
        """The master currently in charge (the newest)."""
        return self.masters[-1]

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    def start_master(self, wait_ready: bool = True) -> MasterProcess:
        env = {"CHAOS_LEDGER_DIR": str(self.ledger)}
        if self.clock_path is not None:
            env["CHAOS_CLOCK_FILE"] = str(self.clock_path)
        master = MasterProcess(self.tmp, self.url, self.namespace, self.layout.toml(self.variant),
                               env=env, name=f"master{len(self.masters)}")
        self.masters.append(master)
        master.start(wait_ready=False)
        if wait_ready:
            master.wait_notify("READY=1", timeout=30)
            master.wait_children(self.layout.children, timeout=30)
        return master

    def children(self) -> dict[str, list[int]]:
        return self.master.children()

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Something a scenario started (a socket, a thread) that close() must end."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Kill everything this run started, whatever state the scenario left it in.

        Redis dies before the load thread is joined, so an enqueue blocked on a
        paused or busy server ends at once instead of at its socket timeout.
        """
        if self.load is not None:
            self.load.request_stop()
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception:
                pass
        for master in self.masters:
            master.stop()  # SIGKILL to its process group: children too, stopped or not
        if self.redis is not None:
            self.redis.kill()
        if self.load is not None:
            self.load.close()
        if self.client is not None:
            self.client.close()

    # -- the phases ------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load before the fault, long enough to measure the normal completion rate."""
        assert self.load is not None
        self.load.start()
        time.sleep(self.profile.warmup)

    def begin_fault(self) -> None:
        self.fault_started = time.monotonic()

    def end_fault(self) -> None:
        self.fault_ended = time.monotonic()

    def fault(self, kind: str, slots: int, detail: str = "") -> None:
        """Book one fault; ``slots``: job slots whose runs it may force to repeat."""
        self.faults.append(Fault(kind, time.monotonic(), slots, detail))

    def inject(self, name: str, args: list[Any], priority: str, **options: Any) -> str:
        """Enqueue one job of the scenario's own (counted like the load's)."""
        assert self.load is not None
        ids = self.load.enqueue([(name, args, {}, {"priority": priority, **options})])
        assert ids, f"could not enqueue {name}: {self.load.refused}"
        return ids[0]

    def wait_running(self, job_ids: Iterable[str], timeout: float = 15.0) -> None:
        """Until every one of these jobs has started a run (seen in the ledger)."""
        wanted = set(job_ids)
        wait_until(lambda: wanted <= {r.job_id for r in read_ledger(self.ledger)},
                   timeout=timeout, interval=0.05, message=f"{len(wanted)} jobs running")

    def wait_final(self, job_ids: Iterable[str], timeout: float) -> bool:
        """Until these jobs are final; False when the timeout passed first."""
        ids = list(job_ids)
        try:
            wait_until(lambda: all(s in FINAL for s, _ in self._states(ids).values()),
                       timeout=timeout, interval=0.1)
        except AssertionError:
            return False
        return True

    def set_clock(self, offset: float) -> None:
        """Step the wall clock of the master and its children by ``offset`` seconds."""
        assert self.clock_path is not None
        with open(self.clock_path, "r+b") as handle:
            handle.write(struct.pack("d", offset))

    # -- the books -----------------------------------------------------------------------------

    def finish(self) -> Result:
        """Stop the load, wait for every job to be final, count, then check the processes."""
        assert self.load is not None and self.client is not None
        if self.fault_started is None:
            self.begin_fault()
        if self.fault_ended is None:
            self.end_fault()
        assert self.fault_ended is not None
        time.sleep(max(0.0, self.fault_ended + self.profile.post - time.monotonic()))
        self.load.stop()
        ended = self.load.stopped_at
        acked = self.load.acknowledged()
        states = self._wait_final(acked, ended + OWNER_TTL + self.profile.slack)
        runs = read_ledger(self.ledger)
        result = self.result
        result.jobs, result.faults = len(acked), len(self.faults)
        result.duplicate_bound = sum(f.slots for f in self.faults)
        result.refused_batches = sum(self.load.refused.values())
        self._count(acked, states, runs)
        result.pre_rate, result.recover_s = self._recovery(acked, runs, states)
        result.notes.append(f"completions/s from 2 s before the fault: "
                            f"{self._timeline(runs, acked)}")
        if self.load.refused:
            result.notes.append(f"enqueue refused: {dict(self.load.refused)}")
        result.notes.append("faults: " + ", ".join(
            f"{kind} x{n}" for kind, n in Counter(f.kind for f in self.faults).items()))
        result.problems += self.check_processes()
        self._recount_lost()
        result.notes += self.log_excerpts()
        save_result(result)
        return result

    def _states(self, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        assert self.client is not None
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), "state", "error")
            replies = pipe.execute()
        return {job_id: (reply[0], reply[1]) for job_id, reply in zip(ids, replies, strict=True)}

    def _wait_final(self, acked: dict[str, float], deadline: float
                    ) -> dict[str, tuple[str | None, str | None]]:
        """Poll the jobs' states until all are final or the deadline passes."""
        pending = list(acked)
        states: dict[str, tuple[str | None, str | None]] = {}
        while True:
            try:
                fresh = self._states(pending)
            except redis.RedisError as exc:
                self.result.problems.append(f"redis unreadable after the scenario: {exc}")
                break
            states.update(fresh)
            pending = [i for i, (state, _) in fresh.items() if state not in FINAL]
            if not pending:
                self.all_final_at = time.monotonic()
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return states

    def _count(self, acked: dict[str, float], states: dict[str, tuple[str | None, str | None]],
               runs: list[Run]) -> None:
        result = self.result
        per_job = Counter(r.job_id for r in runs if r.job_id in acked)
        per_attempt = Counter((r.job_id, r.attempt) for r in runs if r.job_id in acked)
        result.duplicates = sum(n - 1 for n in per_job.values() if n > 1)
        final = {i for i, (state, error) in states.items()
                 if state == "succeeded" or (state == "dead" and error)}
        result.wedged = sum(1 for i in acked if states.get(i, (None, None))[0] not in FINAL)
        self.unrun = [i for i in acked if i not in per_job and i not in final]
        wedged = [i for i in acked if states.get(i, (None, None))[0] not in FINAL]
        if wedged:
            by_state = Counter(str(states.get(i, (None, None))[0]) for i in wedged)
            result.notes.append(f"wedged by state: {dict(by_state)}; e.g. "
                                f"{[(i, per_job.get(i, 0)) for i in wedged[:3]]} (id, runs)")
        twice = [k for k, n in per_attempt.items() if n > 1]
        if twice:
            result.problems.append(f"{len(twice)} attempts ran twice under the same "
                                   f"attempt number, e.g. {twice[:3]}")
        if result.duplicates:
            worst = per_job.most_common(3)
            result.notes.append(f"most runs: {worst}")
        dead = Counter((states[i][1] or "")[:70] for i in acked
                       if states.get(i, (None, None))[0] == "dead")
        if dead:
            result.notes.append(f"dead: {dict(dead)}")

    def _recount_lost(self) -> None:
        """Lost: never ran and not final even now, after the process checks (a job that
        ran late is wedged, not lost)."""
        ran = {r.job_id for r in read_ledger(self.ledger)}
        late = [i for i in self.unrun if i in ran]
        try:
            states = self._states([i for i in self.unrun if i not in ran])
        except redis.RedisError:
            states = {i: (None, None) for i in self.unrun if i not in ran}
        lost = [i for i, (state, error) in states.items()
                if not (state == "succeeded" or (state == "dead" and error))]
        self.result.lost = len(lost)
        if late:
            self.result.notes.append(f"{len(late)} jobs first ran after the deadline")
        if lost:
            shown = {i: states[i] for i in lost[:5]}
            self.result.notes.append(f"lost (never ran, not final), e.g. {shown}")

    def _timeline(self, runs: list[Run], acked: dict[str, float]) -> list[int]:
        """Completions per second from 2 s before the fault until the load stopped."""
        assert self.load is not None and self.fault_started is not None
        origin = self.fault_started - 2.0
        counts = [0] * max(1, int(self.load.stopped_at - origin) + 1)
        for r in runs:
            if r.end is not None and r.job_id in acked and r.end >= origin:
                index = int(r.end - origin)
                if index < len(counts):
                    counts[index] += 1
        return counts

    def _recovery(self, acked: dict[str, float], runs: list[Run],
                  states: dict[str, tuple[str | None, str | None]]
                  ) -> tuple[float, float | None]:
        """(pre-fault completions per second, seconds from fault end until back at half)."""
        assert self.load is not None and self.fault_started is not None
        assert self.fault_ended is not None
        ends = sorted(r.end for r in runs if r.end is not None and r.job_id in acked)
        since = self.load.started_at + 0.5
        before = sum(1 for t in ends if since <= t < self.fault_started)
        rate = before / max(0.5, self.fault_started - since)
        window, t = 1.0, self.fault_ended
        while t + window <= self.load.stopped_at:
            if sum(1 for e in ends if t <= e < t + window) >= 0.5 * rate * window:
                return rate, max(0.0, t - self.fault_ended)
            t += 0.1
        final_at = getattr(self, "all_final_at", None)
        if final_at is not None:
            return rate, max(0.0, final_at - self.fault_ended)
        return rate, None

    # -- the processes ---------------------------------------------------------------------

    def check_processes(self) -> list[str]:
        """Nothing wedged: the master lives, every pool is whole and works, the
        scheduler leads and promotes."""
        problems: list[str] = []
        master = self.master
        if master.proc is None or master.proc.poll() is not None:
            return [f"the master exited ({master.proc.returncode if master.proc else None})"]
        try:
            master.wait_children(self.layout.children,
                                 timeout=OWNER_TTL + self.profile.slack)
        except AssertionError:
            counts = {k: len(v) for k, v in master.children().items()}
            problems.append(f"children {counts} != wanted {self.layout.children}")
        if (leader := self._wait_leader(master)) is not None:
            problems.append(leader)
        problems += self._probe()
        problems += [problem for check in self.checks if (problem := check())]
        return problems

    def _wait_leader(self, master: MasterProcess) -> str | None:
        assert self.client is not None
        client = self.client
        identity = f"{socket.gethostname()}:{master.pid}:"

        def leads() -> bool:
            return str(client.get(self.keys.scheduler_lock) or "").startswith(identity)

        try:
            wait_until(leads, timeout=LEASE * 3, interval=0.1)
        except (AssertionError, redis.RedisError):
            token = client.get(self.keys.scheduler_lock)
            return f"no scheduler leader of master {master.pid} (lock: {token!r})"
        return None

    def _probe(self) -> list[str]:
        """One probe job per slot of each pool (they only meet if every slot takes one)
        and one delayed job (only a working scheduler promotes it)."""
        assert self.load is not None
        items: list[tuple[str, list[Any], dict[str, Any], dict[str, Any]]] = []
        for pool, slots in self.layout.slots.items():
            items += [("chaos_probe", [pool, slots, PROBE_WAIT], {},
                       {"priority": self.layout.probe_priority[pool]}) for _ in range(slots)]
        items.append(("chaos_default", [1], {}, {"priority": "normal", "delay": 0.5}))
        try:
            ids = self.load.app.enqueue_many(items)
        except redis.RedisError as exc:
            return [f"cannot enqueue probes: {exc}"]
        probes, delayed = ids[:-1], ids[-1]
        try:
            wait_until(lambda: all(s == "succeeded" for s, _ in self._states(ids).values()),
                       timeout=PROBE_WAIT * 3, interval=0.1)
        except AssertionError:
            pass
        states = self._states(ids)
        problems = []
        if states[delayed][0] != "succeeded":
            problems.append(f"a delayed job was not promoted and run (state "
                            f"{states[delayed][0]}): the scheduler does not work")
        met = {r: info.result if states[r][0] == "succeeded" and (info := self.load.app.job(r))
               else None for r in probes}
        runs = [r for r in read_ledger(self.ledger) if r.job_id in met]
        start = 0
        for pool, slots in self.layout.slots.items():
            mine = probes[start:start + slots]
            start += slots
            if all(met[i] is True for i in mine):
                continue
            spans = [(r.start, r.end or float("inf")) for r in runs if r.job_id in mine]
            problems.append(f"pool {pool}: only {_overlap(spans)} of {slots} slots took a "
                            "probe at once (consumer threads gone?)")
        return problems

    def log_excerpts(self, limit: int = 12) -> list[str]:
        """The masters' log lines that explain a failure, deduplicated."""
        pattern = re.compile(r"Traceback|Error|error|crashed|lost|killing|killed|refused|"
                             r"hard limit|exited with|recovered", re.ASCII)
        seen: dict[str, int] = defaultdict(int)
        for master in self.masters:
            for line in master.read_log().splitlines():
                if pattern.search(line):
                    text = line.split("] ", 1)[-1]
                    key = re.sub(r"\b[0-9a-f]{6,}\b|\d+", "N", text)[:160]
                    seen[key] += 1
        return [f"log x{n}: {line}" for line, n in list(seen.items())[:limit]]


def _overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals that cover one moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def run_scenario(run: ChaosRun, inject: Callable[[ChaosRun], None]) -> Result:
    """Start, warm up, let ``inject`` do its faults (it marks their start and end),
    then keep the load on for the recovery window and settle the books."""
    run.start()
    run.warm_up()
    inject(run)
    return run.finish()


# -- the table in docs/reliability.md ------------------------------------------------------

TABLE_BEGIN = "<!-- chaos-table:begin (generated by scripts/chaos; do not edit) -->"
TABLE_END = "<!-- chaos-table:end -->"


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, one row per scenario in the order they ran."""
    lines = ["| scenario | jobs | faults | lost | duplicates (bound) | wedged | "
             "seconds to recover | broken promises |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        recover = "never" if r["recover_s"] is None else f"{r['recover_s']:.1f}"
        broken = Result(**r).verdict()
        lines.append(f"| {r['scenario']} | {r['jobs']} | {r['faults']} | {r['lost']} | "
                     f"{r['duplicates']} ({r['duplicate_bound']}) | {r['wedged']} | {recover} | "
                     f"{'; '.join(broken) if broken else 'none'} |")
    return "\n".join(lines)


def write_table(results_path: Path, doc: Path) -> str:
    """Replace the table between the markers of ``doc`` with the results; return it."""
    results = [json.loads(line) for line in results_path.read_text().splitlines() if line]
    profiles = sorted({r["profile"] for r in results})
    body = (f"Profile {', '.join(profiles)}, measured {time.strftime('%Y-%m-%d')} on "
            f"{os.cpu_count()} CPUs.\n\n{table(results)}")
    text = doc.read_text()
    start, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    doc.write_text(text[:start] + "\n" + body + "\n" + text[end:])
    return body


if __name__ == "__main__":
    import sys

    print(write_table(Path(sys.argv[1]), Path(sys.argv[2])))
