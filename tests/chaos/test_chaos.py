"""Chaos scenarios: each injects one kind of fault into a master under steady load.

Every test asserts the same promises (see ``harness``): nothing acknowledged is
lost, nothing stays unfinished one ``owner_ttl`` after the scenario, jobs run
more than once only as often as the faults forced, and afterwards every pool is
whole, every slot works and the scheduler leads and promotes.

The duplicate bound is the sum, over the faults, of the job slots a fault could
force to run a job again: the threads of a killed or stopped child, every slot of the
master for a fault of the master or of Redis, the slots of the pools a reload
replaces, ``max_redeliveries - 1`` for a job that kills its own worker, and 0
for a fault that leaves every worker alive and in charge of its jobs (a stalled
master, a wall-clock step).

Each scenario first failed on the code before its fix (Redis error replies that
killed threads, a stalled master, wall-clock limits, a job calling ``os._exit``).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections.abc import Callable

import psutil
import pytest
import redis

from tests.chaos.harness import (
    MAX_REDELIVERIES,
    MIX,
    THIN,
    ChaosRun,
    Result,
    current_profile,
    read_ledger,
    run_scenario,
)

PROFILE = current_profile()
ChaosRunFactory = Callable[..., ChaosRun]
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(PROFILE.test_timeout)]

# A read-only script that keeps Redis busy for ARGV[1] seconds: every other client
# gets BUSY replies once it has run longer than busy-reply-threshold.
SPIN = """
local t = redis.call('TIME')
local start = t[1] + t[2] / 1e6
while true do
    local now = redis.call('TIME')
    if now[1] + now[2] / 1e6 - start > tonumber(ARGV[1]) then return 1 end
end
"""
BUSY_THRESHOLD_MS = 1000
TASK_OF = {"high": "chaos_high", "normal": "chaos_default", "low": "chaos_report"}
# The load without high-priority jobs: the high pool's threads stay idle unless told.
NO_HIGH = tuple(kind for kind in MIX if kind[1] != "high")


def check(result: Result) -> None:
    """Fail with every broken promise, and the scenario's books to explain it."""
    broken = result.verdict()
    assert not broken, "; ".join(broken) + "\n" + result.describe()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# -- the scenarios ------------------------------------------------------------------------


def child_kills(run: ChaosRun) -> None:
    """SIGKILL a random child (any pool, or the scheduler) every 200-300 ms."""
    run.begin_fault()
    end = time.monotonic() + run.profile.fault
    while time.monotonic() < end:
        candidates = [(label, pid) for label, pids in run.children().items() for pid in pids]
        if candidates:
            label, pid = random.choice(candidates)
            try:
                os.kill(pid, signal.SIGKILL)
                run.fault("SIGKILL child", run.layout.threads.get(label, 0), f"{label} {pid}")
            except ProcessLookupError:
                pass
        time.sleep(random.uniform(0.2, 0.3))
    run.end_fault()


def master_kill(run: ChaosRun) -> None:
    """SIGKILL the master mid-load, then start another one on the same file."""
    run.begin_fault()
    old = run.master
    os.kill(old.pid, signal.SIGKILL)
    old.wait_exit(10)
    run.fault("SIGKILL master", run.layout.all_slots)
    run.start_master(wait_ready=False)
    run.end_fault()


def redis_restart(run: ChaosRun) -> None:
    """Stop Redis gracefully (SIGTERM: it flushes its AOF) and start it again on the
    same port and data directory, ``restarts`` times across the fault phase."""
    assert run.redis is not None
    run.begin_fault()
    gap = run.profile.fault / run.profile.restarts
    for index in range(run.profile.restarts):
        if index:
            time.sleep(gap)
        run.redis.stop()
        run.redis.start()
        run.fault("Redis restart", run.layout.all_slots, run.appendfsync)
    run.end_fault()


def redis_outage(run: ChaosRun) -> None:
    """Redis stopped for longer than owner_ttl, then started again."""
    assert run.redis is not None
    run.begin_fault()
    run.redis.stop()
    run.fault("Redis down", run.layout.all_slots, f"{run.profile.outage:g}s")
    time.sleep(run.profile.outage)
    run.redis.start()
    run.end_fault()


def client_pause(run: ChaosRun) -> None:
    """CLIENT PAUSE WRITE longer than Redis' busy threshold: every writer blocks."""
    assert run.client is not None
    run.begin_fault()
    run.client.execute_command("CLIENT", "PAUSE", int(run.profile.pause * 1000), "WRITE")
    run.fault("CLIENT PAUSE WRITE", run.layout.all_slots, f"{run.profile.pause:g}s")
    time.sleep(run.profile.pause)
    run.end_fault()


def occupy_one_thread(run: ChaosRun, seconds: float) -> None:
    """Run one job of ``seconds`` in a pool of multi-threaded children; return once it runs."""
    pool = next(p for p, threads in run.layout.threads.items() if threads > 1)
    priority = run.layout.probe_priority[pool]
    run.wait_running([run.inject(TASK_OF[priority], [int(seconds * 1000)], priority)])


def busy_script(run: ChaosRun) -> None:
    """A script runs past busy-reply-threshold: every other command gets BUSY.

    One thread of a multi-threaded child runs a job that ends inside the BUSY
    window, so that thread meets BUSY while its idle siblings (blocked in BLPOP
    since before the script, which Redis does not answer meanwhile) do not.
    """
    assert run.client is not None
    try:
        run.client.config_set("busy-reply-threshold", BUSY_THRESHOLD_MS)
    except redis.ResponseError:  # Redis 6.2 knows it by its old name
        run.client.config_set("lua-time-limit", BUSY_THRESHOLD_MS)
    spinner = redis.Redis.from_url(run.url, socket_timeout=run.profile.pause + 30)
    run.on_close(spinner.close)
    occupy_one_thread(run, (BUSY_THRESHOLD_MS / 1000 + run.profile.pause) / 2)
    run.begin_fault()
    run.fault("BUSY script", run.layout.all_slots, f"{run.profile.pause:g}s")
    spinner.eval(SPIN, 0, run.profile.pause)  # returns when the script ends: the pacing
    run.end_fault()


def readonly_replica(run: ChaosRun) -> None:
    """Make the server a replica (READONLY to every write), then a primary again.

    Its primary is a socket that accepts and never answers, so the replication
    handshake hangs and the server keeps its data (a real primary would replace
    it with its own dataset). A job that outlasts the fault keeps one thread of a
    two-thread child out of it, as a long job would.
    """
    assert run.client is not None
    occupy_one_thread(run, run.profile.fault + 2)
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    run.on_close(hole.close)
    run.begin_fault()
    run.client.execute_command("REPLICAOF", "127.0.0.1", hole.getsockname()[1])
    run.fault("REPLICAOF (READONLY)", run.layout.all_slots, f"{run.profile.fault:g}s")
    time.sleep(run.profile.fault)
    run.client.execute_command("REPLICAOF", "NO", "ONE")
    run.end_fault()


def out_of_memory(run: ChaosRun) -> None:
    """maxmemory below the used memory (noeviction): every write gets OOM, while a
    job outlasts the fault."""
    assert run.client is not None
    occupy_one_thread(run, run.profile.fault + 2)
    run.begin_fault()
    run.client.config_set("maxmemory", 1)
    run.fault("maxmemory (OOM)", run.layout.all_slots, f"{run.profile.fault:g}s")
    time.sleep(run.profile.fault)
    run.client.config_set("maxmemory", 0)
    run.end_fault()


def hup_storm(run: ChaosRun) -> None:
    """A HUP every second, alternating two files that differ in two pools."""
    config = run.master.config_path
    assert config is not None
    high = run.children().get("high")
    run.checks.append(lambda: None if run.children().get("high") == high else
                      f"the unchanged high pool was restarted: {high} -> "
                      f"{run.children().get('high')}")
    run.begin_fault()
    end = time.monotonic() + run.profile.fault
    while time.monotonic() < end:
        run.variant ^= 1
        config.write_text(run.layout.toml(run.variant))
        run.master.send(signal.SIGHUP)
        replaced = run.layout.slots["reports"] + run.layout.slots["default"]
        run.fault("HUP", replaced, f"variant {run.variant}")
        time.sleep(1.0)
    run.end_fault()


def _busy_child(run: ChaosRun) -> tuple[str, int]:
    """A child of a job pool that runs a job right now (any, if none does)."""
    kids = [(label, pid) for label, pids in run.children().items() if label != "scheduler"
            for pid in pids]
    for label, pid in random.sample(kids, len(kids)):
        try:
            if " busy" in " ".join(psutil.Process(pid).cmdline()):
                return label, pid
        except psutil.Error:
            continue
    return random.choice(kids)


def child_stall(run: ChaosRun) -> None:
    """SIGSTOP a busy child past owner_ttl, then SIGCONT."""
    label, pid = _busy_child(run)
    run.on_close(lambda: _signal(pid, signal.SIGCONT))
    run.begin_fault()
    os.kill(pid, signal.SIGSTOP)
    run.fault("SIGSTOP child", run.layout.threads[label], f"{label} {pid} {run.profile.stall:g}s")
    time.sleep(run.profile.stall)
    os.kill(pid, signal.SIGCONT)
    run.end_fault()


def master_stall(run: ChaosRun) -> None:
    """SIGSTOP the master past owner_ttl while a long job runs in a one-thread child,
    then SIGCONT. The children run on; none of them died."""
    long_job = run.inject("chaos_long", [run.profile.stall + 2], "normal")
    run.wait_running([long_job])
    master = run.master
    run.on_close(lambda: _signal(master.pid, signal.SIGCONT))
    run.begin_fault()
    os.kill(master.pid, signal.SIGSTOP)
    run.fault("SIGSTOP master", 0, f"{run.profile.stall:g}s")
    time.sleep(run.profile.stall)
    os.kill(master.pid, signal.SIGCONT)
    run.end_fault()


def memory_runaway(run: ChaosRun) -> None:
    """A job allocates far past its pool's max_memory_mb_hard, every time it runs."""
    run.begin_fault()
    for _ in range(run.profile.hogs):
        hog = run.inject("chaos_hog", [400, 30], "low")
        run.wait_final([hog], timeout=MAX_REDELIVERIES * 8)
        for _ in [r for r in read_ledger(run.ledger) if r.job_id == hog]:
            run.fault("memory runaway killed", run.layout.threads["reports"], hog)
    run.end_fault()


def clock_step(run: ChaosRun) -> None:
    """The application host's wall clock steps an hour ahead, then back, while jobs run."""
    longs = [run.inject("chaos_long", [6.0], "normal") for _ in range(2)]
    run.wait_running(longs)
    run.begin_fault()
    run.set_clock(3600.0)
    run.fault("wall clock +1h", 0)
    time.sleep(run.profile.fault / 2)
    run.set_clock(0.0)
    run.fault("wall clock back 1h", 0)
    time.sleep(run.profile.fault / 2)
    run.end_fault()


def exit_in_job(run: ChaosRun) -> None:
    """A job ends its own process with exit code 0 (a library calling os._exit)."""
    run.begin_fault()
    run.inject("chaos_exit", [], "low")
    run.fault("job calls os._exit(0)", MAX_REDELIVERIES - 1)
    time.sleep(run.profile.fault)
    run.end_fault()


# -- the tests ------------------------------------------------------------------------------


def test_child_kills(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("child_kills"), child_kills))


def test_master_kill(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("master_kill"), master_kill))


def test_redis_restart_always(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("redis_restart_always", appendfsync="always"), redis_restart))


def test_redis_restart_everysec(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("redis_restart_everysec", appendfsync="everysec"),
                       redis_restart))


def test_redis_outage(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("redis_outage"), redis_outage))


def test_client_pause(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("client_pause"), client_pause))


def test_busy_script(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("busy_script", mix=NO_HIGH), busy_script))


def test_busy_script_thin(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("busy_script_thin", layout=THIN), busy_script))


def test_readonly_replica(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("readonly_replica"), readonly_replica))


def test_out_of_memory(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("out_of_memory"), out_of_memory))


def test_hup_storm(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("hup_storm"), hup_storm))


def test_child_stall(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("child_stall"), child_stall))


def test_master_stall(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("master_stall"), master_stall))


def test_memory_runaway(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("memory_runaway"), memory_runaway))


def test_clock_step(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("clock_step", clock=True), clock_step))


def test_exit_in_job(chaos: ChaosRunFactory) -> None:
    check(run_scenario(chaos("exit_in_job"), exit_in_job))
