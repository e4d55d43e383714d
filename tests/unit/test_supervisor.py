"""The master's decisions with the operating system faked: spawning, reaping, backoff,
reloads, rollouts, health. Each test drives the real Master/Workforce code through
a fake fork/kill/waitpid/psutil and a clock that moves only when told."""

from __future__ import annotations

import itertools
import signal

import pytest

from bananas_prefork.supervisor import master as master_module
from bananas_prefork.supervisor.pool import FAILING_AFTER, Child, Pool, SchedulerGroup
from bananas_prefork.supervisor.workforce import Workforce
from tests.unit.fake_os import (
    FakeOS,
    RecordingBroker,
    deployment,
    new_master,
    new_workforce,
)

TWO_POOLS = {"pools": {"high": {"mode": "specialized", "priorities": ["high"],
                                "concurrency": 4, "threads": 2},
                       "io": {"mode": "job-specialized", "job_types": ["fetch"],
                              "concurrency": 3}}}


def pools_of(master_or_workforce: object) -> dict[tuple[str, str], list[int]]:
    workforce = getattr(master_or_workforce, "workforce", master_or_workforce)
    return {(g.kind, g.name): sorted(g.children) for g in workforce.groups  # type: ignore
            if not g.draining}


def ready_all(workforce: object) -> None:
    for child in workforce.children():  # type: ignore[attr-defined]
        if child.ready_at is None:
            child.group.child_ready(child)


# -- spawning and reaping ------------------------------------------------------------


def test_manage_forks_every_wanted_child_and_the_scheduler(fake_os: FakeOS) -> None:
    force = new_workforce(deployment(TWO_POOLS))
    force.manage()
    assert {k: len(v) for k, v in pools_of(force).items()} == {
        ("pool", "high"): 2, ("pool", "io"): 3, ("scheduler", "scheduler"): 1}
    ((_, owners),) = force.owners()
    assert len(owners) == 5 and len(set(owners)) == 5  # the scheduler child holds no jobs
    force.manage()
    assert fake_os.forks == 6  # nothing more once every group is full


def test_the_last_child_of_a_pool_runs_the_remainder_of_its_concurrency(
        fake_os: FakeOS) -> None:
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 3, "threads": 2}}},
                                     scheduler={"enabled": False}))
    force.manage()
    assert sorted(c.scoreboard.threads for c in force.children()) == [1, 2]
    (status,), _ = force.figures(fake_os.clock.wall, 0.9)
    assert (status["concurrency"], status["threads"], status["processes_wanted"]) == (3, 2, 2)
    force.scale(+1)  # TTIN adds a child of `threads` threads
    force.manage()
    assert sorted(c.scoreboard.threads for c in force.children()) == [1, 2, 2]


def test_a_pool_named_scheduler_is_not_the_scheduler(fake_os: FakeOS) -> None:
    force = new_workforce(deployment({"pools": {"scheduler": {"concurrency": 2}}}))
    force.manage()
    kinds = {(g.kind, g.name): type(g) for g in force.groups}
    assert kinds == {("pool", "scheduler"): Pool, ("scheduler", "scheduler"): SchedulerGroup}
    assert len(force.children()) == 3


def test_a_crashed_child_is_replaced_and_its_jobs_count_a_lost_run(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    master = new_master(deployment(TWO_POOLS), monkeypatch)
    master.workforce.manage()
    victim = pools_of(master)[("pool", "io")][0]
    owner = str(master.workforce.child_of(victim).owner)  # type: ignore[union-attr]
    fake_os.exit(victim, signal=signal.SIGSEGV)
    master._reap()
    broker = master.broker
    assert isinstance(broker, RecordingBroker)
    assert broker.recovered == [(owner, True, "worker lost: killed by SIGSEGV")]
    master.workforce.manage()
    assert len(pools_of(master)[("pool", "io")]) == 3 and victim not in pools_of(master)[
        ("pool", "io")]


def test_a_child_that_exits_0_unasked_lost_its_run_and_counts_as_a_failure(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that calls os._exit(0) ends its child with code 0: a lost run all the same,
    and restarts that follow at once back off like any crash loop."""
    master = new_master(deployment({"pools": {"p": {"concurrency": 1}}},
                                   scheduler={"enabled": False}), monkeypatch)
    master.workforce.manage()
    (child,) = master.workforce.children()
    fake_os.exit(child.pid, 0)
    master._reap()
    assert master.broker.recovered == [  # type: ignore[attr-defined]
        (str(child.owner), True, "worker lost: exited with code 0")]
    (group,) = master.workforce.groups
    assert group.restarts == 1 and group.failures == 1


def test_a_child_that_says_it_is_leaving_is_not_a_failure(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child recycling itself after max_jobs_per_child says so before it exits 0."""
    master = new_master(deployment({"pools": {"p": {"concurrency": 1}}},
                                   scheduler={"enabled": False}), monkeypatch)
    master.workforce.manage()
    (child,) = master.workforce.children()
    child.group.child_ready(child)
    fake_os.report(child, b'{"leaving": "recycling: max_jobs_per_child reached"}')
    fake_os.exit(child.pid, 0)
    master._reap()
    (group,) = master.workforce.groups
    assert group.restarts == 0 and group.failures == 0
    assert master.broker.recovered == [  # type: ignore[attr-defined]
        (str(child.owner), False, "worker lost: recycling: max_jobs_per_child reached")]


def test_a_child_we_stopped_returns_its_jobs_unharmed(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    master = new_master(deployment(TWO_POOLS), monkeypatch)
    master.workforce.manage()
    child = master.workforce.children()[0]
    master.workforce.stop(child, "draining")
    assert fake_os.sent(signal.SIGTERM) == [child.pid]
    fake_os.exit(child.pid, 0)
    master._reap()
    assert master.broker.recovered == [  # type: ignore[attr-defined]
        (str(child.owner), False, "worker lost: draining")]


def test_children_that_cannot_start_back_off_until_the_pool_is_failing(
        fake_os: FakeOS) -> None:
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 1}}},
                                     scheduler={"enabled": False}))
    waits = []
    for _ in range(FAILING_AFTER + 2):
        force.manage()
        (child,) = force.children()
        fake_os.exit(child.pid, 3)  # EXIT_BOOT_ERROR, before it ever said ready
        force.child_exited(child, fake_os.waitpid(-1, 0)[1])
        (group,) = force.groups
        waits.append(max(0.0, group.next_spawn_at - fake_os.clock.mono))
        fake_os.clock.advance(waits[-1] + 0.001)
    assert waits[0] == 0 and all(b > a for a, b in itertools.pairwise(waits[1:]))
    assert force.groups[0].failing


def test_a_failed_fork_is_retried_later(fake_os: FakeOS) -> None:
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 1}}},
                                     scheduler={"enabled": False}))
    fake_os.fail_forks = 1
    force.manage()
    assert force.children() == [] and not force.groups[0].may_spawn(fake_os.clock.mono)
    fake_os.clock.advance(1.0)
    force.manage()
    assert len(force.children()) == 1


def test_ttin_and_ttou_change_every_pool_but_never_below_one(fake_os: FakeOS) -> None:
    force = new_workforce(deployment(TWO_POOLS))
    force.scale(+1)
    force.manage()
    assert {k: len(v) for k, v in pools_of(force).items()} == {
        ("pool", "high"): 3, ("pool", "io"): 4, ("scheduler", "scheduler"): 1}
    for _ in range(5):
        force.scale(-1)
    force.manage()
    assert len(fake_os.sent(signal.SIGTERM)) == 2 + 3  # the newest stopped first
    assert {g.name: g.desired for g in force.groups} == {"high": 1, "io": 1, "scheduler": 1}


def test_a_starting_master_never_recovers_an_owner_that_is_alive(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another machine (or container) may have the same hostname and an owner whose master
    pid is not running here: only the owner's liveness key decides."""
    import socket

    master = new_master(deployment(TWO_POOLS), monkeypatch)
    broker = master.broker
    assert isinstance(broker, RecordingBroker)
    twin = f"{socket.gethostname()}:999999:1000:abcd1234"  # same host name, pid not here
    monkeypatch.setattr(broker, "owner_ids", lambda: [twin])
    master.state = master_module.State.STARTING
    monkeypatch.setattr(broker, "ping", lambda: True)
    monkeypatch.setattr(broker, "load_scripts", lambda: None)
    master._connect()
    assert master.state is master_module.State.RUNNING
    assert broker.recovered == []


# -- reloads and rollouts ------------------------------------------------------------


def test_hup_adds_drains_replaces_and_keeps(fake_os: FakeOS,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    master = new_master(deployment(TWO_POOLS), monkeypatch)
    master.workforce.manage()
    ready_all(master.workforce)
    before = pools_of(master)
    changed = {"pools": {"high": TWO_POOLS["pools"]["high"],  # unchanged
                         "io": {**TWO_POOLS["pools"]["io"], "concurrency": 2},  # changed
                         "cpu": {"mode": "job-specialized", "job_types": ["report"],
                                 "concurrency": 1}}}  # added
    monkeypatch.setattr(master_module, "load", lambda path: deployment(changed))
    master._reload_config()
    master.workforce.manage()
    after = pools_of(master)
    assert after[("pool", "high")] == before[("pool", "high")]  # same pids
    assert after[("scheduler", "scheduler")] == before[("scheduler", "scheduler")]
    assert len(after[("pool", "cpu")]) == 1
    new_io = master.workforce.current("pool", "io")
    assert new_io is not None and len(new_io.children) == 2
    old_io = [g for g in master.workforce.groups if g.name == "io" and g is not new_io]
    assert old_io and not old_io[0].draining  # the old generation drains once the new is up
    ready_all(master.workforce)
    master.workforce.manage()
    assert old_io[0].draining
    assert sorted(fake_os.sent(signal.SIGTERM)) == before[("pool", "io")]


def test_hup_to_another_redis_keeps_the_old_generation_alive_in_its_own(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the old generation drains in the old namespace, its jobs stay owned there
    (renewed) and come back there when a child dies."""
    master = new_master(deployment(TWO_POOLS), monkeypatch)
    old_broker = master.broker
    master.workforce.manage()
    ready_all(master.workforce)
    old_children = master.workforce.children()
    new_broker = RecordingBroker()
    monkeypatch.setattr(master, "new_broker", lambda: new_broker)
    monkeypatch.setattr(master_module, "load", lambda path: deployment(TWO_POOLS,
                                                                       namespace="other"))
    master._reload_config()
    master.workforce.manage()  # the new generation starts; the old one runs on meanwhile
    fake_os.clock.advance(60)
    master._renew_liveness()
    old_owners = {str(c.owner) for c in old_children if c.owner}
    assert old_owners and old_owners <= set(old_broker.renewed[-1])  # type: ignore[attr-defined]
    assert not old_owners & set(new_broker.renewed[-1])
    victim = next(c for c in old_children if c.owner)
    fake_os.exit(victim.pid, signal=signal.SIGKILL)
    master._reap()
    assert [r[0] for r in old_broker.recovered] == [str(victim.owner)]  # type: ignore
    assert new_broker.recovered == []


def test_hup_keeps_a_pool_named_scheduler_apart_from_the_scheduler(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    pools = {"pools": {"scheduler": {"concurrency": 1}}}
    master = new_master(deployment(pools), monkeypatch)
    master.workforce.manage()
    ready_all(master.workforce)
    before = pools_of(master)
    grown = {"pools": {"scheduler": {"concurrency": 2}}}
    monkeypatch.setattr(master_module, "load", lambda path: deployment(grown))
    master._reload_config()
    master.workforce.manage()
    ready_all(master.workforce)
    master.workforce.manage()
    after = pools_of(master)
    assert after[("scheduler", "scheduler")] == before[("scheduler", "scheduler")]
    assert len(after[("pool", "scheduler")]) == 2
    assert not set(after[("pool", "scheduler")]) & set(before[("pool", "scheduler")])


def test_hup_with_a_broken_file_keeps_everything(fake_os: FakeOS,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from bananas_prefork.core.config import ConfigError

    master = new_master(deployment(TWO_POOLS), monkeypatch)
    master.workforce.manage()
    before = pools_of(master)

    def broken(path: object) -> object:
        raise ConfigError("unit.toml", "pools.io.concurrency", "must be >= 1", 7)

    monkeypatch.setattr(master_module, "load", broken)
    master._reload_config()
    master.workforce.manage()
    assert pools_of(master) == before and "unit.toml:7" in (master.reload_error or "")


def test_hup_that_changes_the_scheduler_replaces_only_the_scheduler(
        fake_os: FakeOS, monkeypatch: pytest.MonkeyPatch) -> None:
    master = new_master(deployment(TWO_POOLS), monkeypatch)
    master.workforce.manage()
    ready_all(master.workforce)
    before = pools_of(master)
    monkeypatch.setattr(master_module, "load", lambda path: deployment(
        TWO_POOLS, scheduler={"interval": "2s"}))
    master._reload_config()
    master.workforce.manage()
    after = pools_of(master)
    assert after[("pool", "high")] == before[("pool", "high")]
    assert after[("pool", "io")] == before[("pool", "io")]
    assert after[("scheduler", "scheduler")] != before[("scheduler", "scheduler")]


def test_usr2_rolls_one_group_at_a_time(fake_os: FakeOS,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    master = new_master(deployment(TWO_POOLS), monkeypatch)
    master.workforce.manage()
    ready_all(master.workforce)
    master._reload_code()
    for _ in range(20):
        master._advance_rollout()
        master.workforce.manage()
        generations = {}
        for group in master.workforce.groups:
            generations.setdefault(group.name, []).append(group.generation)
        assert sum(len(g) > 1 for g in generations.values()) <= 1  # one group at a time
        ready_all(master.workforce)
        for child in master.workforce.children():
            if child.stopping and fake_os.processes[child.pid].alive:
                fake_os.exit(child.pid, 0)
        master._reap()
        if not master.rollout:
            break
    assert not master.rollout
    assert all(g.generation > 3 for g in master.workforce.groups)


# -- health -------------------------------------------------------------------------------


def a_job_with_a_hard_limit_of_5s() -> tuple[Workforce, Child]:
    """A workforce of one ready child, whose only slot has just started a 5 s job."""
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 1, "job_timeout": "5s"}}},
                                     scheduler={"enabled": False}))
    force.manage()
    (child,) = force.children()
    child.group.child_ready(child)
    child.scoreboard.job_started(0, "j1", "fetch", 1, 5.0)
    return force, child


def test_a_job_past_its_hard_limit_gets_term_then_kill(fake_os: FakeOS) -> None:
    force, child = a_job_with_a_hard_limit_of_5s()
    fake_os.clock.advance(4.0)
    force.check_health()
    assert fake_os.signals == []
    fake_os.clock.advance(2.0)
    force.check_health()
    assert fake_os.sent(signal.SIGTERM) == [child.pid] and child.timed_out is not None
    fake_os.clock.advance(2.0)
    force.check_health()
    assert fake_os.sent(signal.SIGKILL) == [child.pid]


def test_a_wall_clock_step_does_not_kill_a_healthy_job(fake_os: FakeOS) -> None:
    """NTP may step the wall clock by minutes; hard limits run on the monotonic clock."""
    force, child = a_job_with_a_hard_limit_of_5s()
    fake_os.clock.advance(1.0)
    fake_os.clock.step_wall(3600.0)
    force.check_health()
    fake_os.clock.step_wall(-7200.0)
    force.check_health()
    assert fake_os.signals == [] and child.timed_out is None


def test_a_child_silent_outside_a_job_is_replaced(fake_os: FakeOS) -> None:
    """A slot stuck outside a job (deadlocked, blocked in a call) stops beating: after
    ``hang_timeout`` the child is killed and replaced. A busy slot is judged by its
    job's hard limit instead, however long it is silent."""
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 2, "threads": 2}}},
                                     scheduler={"enabled": False}, hang_timeout="30s"))
    force.manage()
    (child,) = force.children()
    child.group.child_ready(child)
    child.scoreboard.slot_alive(0)
    child.scoreboard.slot_alive(1)
    child.scoreboard.job_started(0, "long", "report", 1, None)
    for _ in range(5):
        fake_os.clock.advance(5.0)
        child.scoreboard.beat()
        child.scoreboard.slot_alive(1)
        force.check_health()
    assert fake_os.signals == []  # slot 0 is busy, slot 1 keeps beating
    for _ in range(7):
        fake_os.clock.advance(5.0)
        child.scoreboard.beat()  # the main loop lives on, slot 1 is stuck
        force.check_health()
    assert fake_os.sent(signal.SIGKILL) == [child.pid]
    assert "slot 1" in (child.stop_reason or "")


def test_a_child_whose_main_loop_is_silent_is_replaced(fake_os: FakeOS) -> None:
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 1}}},
                                     scheduler={"enabled": False}, hang_timeout="30s"))
    force.manage()
    (child,) = force.children()
    child.group.child_ready(child)
    child.scoreboard.beat()
    for _ in range(7):
        fake_os.clock.advance(5.0)
        child.scoreboard.slot_alive(0)
        force.check_health()
    assert fake_os.sent(signal.SIGKILL) == [child.pid]


def test_a_child_over_its_hard_memory_limit_is_killed(fake_os: FakeOS) -> None:
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 1,
                                                      "max_memory_mb_hard": 100}}},
                                     scheduler={"enabled": False}))
    force.manage()
    (child,) = force.children()
    fake_os.processes[child.pid].rss_mb = 150
    force.check_health()
    assert fake_os.sent(signal.SIGKILL) == [child.pid] and child.lost_run


def test_memory_recycling_is_one_child_at_a_time(fake_os: FakeOS) -> None:
    force = new_workforce(deployment({"pools": {"p": {"concurrency": 3,
                                                      "max_memory_mb": 100}}},
                                     scheduler={"enabled": False}))
    force.manage()
    for child in force.children():
        fake_os.processes[child.pid].rss_mb = 150
    force.check_health()
    assert len(fake_os.sent(signal.SIGTERM)) == 1


