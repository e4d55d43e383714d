"""Contract tests of the cheaper script paths: the lazy heads index, consumer groups,
wake-ups only on empty lists, packed enqueue batches and owner listing."""

from __future__ import annotations

import redis

from bananas_prefork import App
from bananas_prefork.core.broker import SUCCEEDED, EnqueueBatch, Settlement, StepChannel, group_id
from bananas_prefork.core.job import Job
from bananas_prefork.core.keys import PRIORITIES, Keys
from tests.conftest import snapshot

ALL = ["*"]


def fetch(app: App, owner: str = "w1", slot: int = 0, types: list[str] | None = None,
          woke: bool = False) -> Job | None:
    return app.broker.step(owner, slot, None, True, list(PRIORITIES), types or ALL,
                           woke=woke)[1]


def settle_and_fetch(app: App, job: Job, owner: str = "w1", slot: int = 0,
                     types: list[str] | None = None) -> tuple[int | None, Job | None]:
    return app.broker.step(owner, slot, Settlement(SUCCEEDED, job, "null"), True,
                           list(PRIORITIES), types or ALL)


def drain(app: App, owner: str = "w1", types: list[str] | None = None) -> list[str]:
    ids: list[str] = []
    while (job := fetch(app, owner=owner, types=types)) is not None:
        ids.append(job.id)
        app.broker.step(owner, 0, Settlement(SUCCEEDED, job, "null"), False, [], [])
    return ids


def drain_channel(channel: StepChannel) -> list[str]:
    """A slot's loop: settle the last job and fetch the next in one call."""
    ids: list[str] = []
    status, job = channel.step(None, True)
    while job is not None:
        ids.append(job.id)
        status, job = channel.step(Settlement(SUCCEEDED, job, "null"), True)
        assert status == 1
    return ids


def test_a_lone_type_keeps_order_when_a_recovered_job_of_another_comes_back(app: App) -> None:
    # B1 goes to a consumer of B only; A is then alone in the index and '*' pops it
    # without keeping its score exact. B1 coming back must still go first.
    b1 = app.enqueue("b")
    a1, a2 = app.enqueue("a"), app.enqueue("a")
    assert fetch(app, owner="typed", types=["b"]).id == b1
    assert fetch(app, owner="any").id == a1
    app.broker.recover("typed", known_dead=True, lost_run=False)
    assert [fetch(app, owner="x", slot=n).id for n in range(2)] == [b1, a2]
    assert fetch(app, owner="x", slot=2) is None


def test_a_lone_type_listed_after_its_list_emptied_is_dropped(app: App,
                                                              rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    job = fetch(app) if app.enqueue("a") else None
    assert job is not None and rclient.zcard(keys.heads("normal")) == 1  # lazily kept
    assert settle_and_fetch(app, job) == (1, None)
    assert rclient.zcard(keys.heads("normal")) == 0
    assert rclient.hlen(keys.owned("w1")) == 0  # the slot was freed: nothing refilled it


def test_a_group_consumer_takes_the_oldest_of_its_types_only(app: App,
                                                             rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    ids = [app.enqueue(name) for name in ("c", "a", "x", "b", "a", "c", "x")]
    served = [i for i, name in zip(ids, "caxbacx", strict=True) if name != "x"]
    channel = app.broker.channel("g1", 0, PRIORITIES, ["a", "b", "c"])
    try:
        assert drain_channel(channel) == served
    finally:
        channel.close()
    assert drain(app, owner="any") == [ids[2], ids[6]]
    # a second consumer of the same types (any order) shares the group
    gid = channel.serves[len(PRIORITIES) + 1]
    assert gid and app.broker.channel("g2", 0, ["high"], ["c", "b", "a"]).serves[2] == gid
    assert rclient.sismember(keys.groups("a"), gid)


def test_a_group_index_follows_every_change_and_is_rebuilt_when_lost(
        app: App, rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    types = ["a", "b"]
    first = app.enqueue("a")
    job = fetch(app, owner="g", types=types)  # builds the group's index
    assert job is not None and job.id == first
    gid = app.broker.channel("g", 1, PRIORITIES, types).serves[len(PRIORITIES) + 1]
    later = [app.enqueue("b", priority="high"), app.enqueue("a", priority="low")]
    assert rclient.zrange(keys.group_heads("high", gid), 0, -1) == ["b"]
    # Redis lost the group's records (a restart without persistence): rebuilt
    for key in (keys.group(gid), keys.group_heads("high", gid), keys.group_heads("low", gid)):
        rclient.delete(key)
    assert fetch(app, owner="g", slot=1, types=types).id == later[0]
    assert fetch(app, owner="g", slot=2, types=types).id == later[1]


def test_a_group_channel_leaves_its_types_out_until_they_are_needed(app: App) -> None:
    ids = [app.enqueue(name) for name in ("a", "b", "a")]
    channel = app.broker.channel("g", 0, PRIORITIES, ["a", "b"])
    try:
        assert drain_channel(channel) == ids  # the last call needed the types (empty)
        assert not channel.short
        later = app.enqueue("b")
        status, job = channel.step(None, True)
        assert status is None and job is not None and job.id == later
        assert channel.short
    finally:
        channel.close()


def test_enqueue_wakes_only_empty_lists_and_a_woken_fetch_wakes_the_next(
        app: App, rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    typed, anyone = keys.wake("normal", "a"), keys.wake("normal", "*")
    app.enqueue("a")
    app.enqueue("a")  # the list was not empty: no second token
    assert rclient.llen(typed) == rclient.llen(anyone) == 1
    rclient.delete(typed, anyone)  # an idle consumer took the one token
    assert fetch(app, woke=True) is not None  # jobs remain: it wakes the next one
    assert rclient.llen(typed) == rclient.llen(anyone) == 1
    rclient.delete(typed, anyone)
    assert fetch(app, slot=1, woke=True) is not None  # the list is now empty: no token
    assert rclient.llen(typed) == rclient.llen(anyone) == 0


def test_a_packed_batch_keeps_its_order_across_headers_and_runs(app: App) -> None:
    items = [("a" if i % 700 < 650 else "b", [i]) for i in range(2500)]
    items[10] = ("a", [10], {"k": 1})  # a header of its own in the middle of a run
    ids = app.enqueue_many(items)
    assert len(set(ids)) == 2500
    assert app.job(ids[10]).kwargs == {"k": 1} and app.job(ids[11]).kwargs == {}
    assert drain(app) == ids


def test_a_batch_sent_again_after_a_lost_reply_enqueues_nothing_twice(
        app: App, rclient: redis.Redis) -> None:
    batch = EnqueueBatch(app.broker.prefix)
    for n in range(3):
        batch.add(f"gen-{n}", "a", "normal", f"[{n}]", "{}", "", "", False)
    assert app.broker.enqueue_batch(batch) == [True] * 3
    before = snapshot(rclient)
    batch.check_every_id()  # what enqueue_batch does before sending again
    assert app.broker.enqueue_batch(batch) == [False] * 3
    assert snapshot(rclient) == before


def test_a_live_owner_recovered_as_dead_is_listed_again_by_its_next_claim(
        app: App, rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    for _ in range(3):
        app.enqueue("a")
    job = fetch(app, owner="w")
    assert job is not None and rclient.sismember(keys.owners, "w")
    status, job = settle_and_fetch(app, job, owner="w")  # refills the slot
    assert status == 1 and job is not None
    app.broker.recover("w", known_dead=True, lost_run=False)  # e.g. its liveness lapsed
    assert not rclient.sismember(keys.owners, "w") and not rclient.exists(keys.owner("w"))
    status, again = settle_and_fetch(app, job, owner="w")
    assert status == -1 and again is not None  # that run was taken; a new one starts
    assert rclient.sismember(keys.owners, "w") and rclient.pttl(keys.owner("w")) > 0


def test_renewal_lists_the_owners_it_keeps_alive(app: App, rclient: redis.Redis) -> None:
    keys = Keys(app.namespace)
    app.broker.renew_owners(["o1", "o2"])
    assert rclient.smembers(keys.owners) == {"o1", "o2"}
    assert rclient.pttl(keys.owner("o1")) > 0


def test_a_group_built_by_a_consumer_of_some_priorities_serves_all(app: App) -> None:
    a0 = app.enqueue("a")  # already queued when the group is built
    typed = ["a", "b"]
    assert app.broker.step("hi", 0, None, True, ["high"], typed)[1] is None  # builds it
    b1, a1 = app.enqueue("b"), app.enqueue("a")
    both = app.broker.channel("both", 0, ["high", "normal"], typed)
    try:
        assert drain_channel(both) == [a0, b1, a1]
    finally:
        both.close()


def test_a_group_nobody_fetches_for_is_pruned_and_rebuilt_if_used_again(
        app: App, rclient: redis.Redis) -> None:
    keys, gid = Keys(app.namespace), group_id(["a", "b"])
    assert fetch(app, types=["a", "b"]) is None  # the group is built, with a lifetime
    assert 0 < rclient.ttl(keys.group(gid)) <= 600
    assert app.broker.prune_groups() == 0  # alive: kept
    app.enqueue("a")
    rclient.delete(keys.group(gid))  # its lifetime passed without an empty fetch
    assert app.broker.prune_groups() == 1
    assert not rclient.sismember(keys.groups("a"), gid)
    assert not rclient.exists(keys.group_heads("normal", gid), keys.group_types)
    job = fetch(app, types=["a", "b"])  # a consumer still there rebuilds it
    assert job is not None and job.name == "a"
    assert rclient.sismember(keys.groups("b"), gid) and rclient.hexists(keys.group_types, gid)
