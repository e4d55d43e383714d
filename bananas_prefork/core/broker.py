"""The only code that talks to Redis about jobs.

Every change of more than one key is one Lua script (``lua/``): enqueue,
step (settle a run and fetch the next), recover, promote, and the dead-letter
tools. Reads are plain commands. Nothing here knows about processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis
from redis.commands.core import Script

from .backoff import Backoff
from .job import Job, JobInfo
from .keys import ANY_TYPE, PRIORITIES, Keys
from .scripts import Scripts

log = logging.getLogger(__name__)

SUCCEEDED, RETRY, DEAD = "succeeded", "retry", "dead"
DONE = "done"  # the step script's mode for SUCCEEDED with nothing to keep
NOTHING_KEPT = ""  # a SUCCEEDED payload with no result to keep (None, or store_result=False)
ENQUEUE_CHUNK = 1000  # jobs per enqueue call: ~10 ms of Redis time at most
LOST_OWNERSHIP = -1
ENQUEUE_RETRIES = 3  # sends after the first when the connection drops (as the client's)


@dataclass(frozen=True)
class NewJob:
    """A validated, JSON-encoded job ready for the enqueue script."""

    id: str
    name: str
    priority: str
    args_json: str
    kwargs_json: str
    options_json: str = ""
    when: str = ""  # '' now, '+<s>' delay, '@<epoch>' absolute
    given_id: bool = True  # False: a generated id, unique without checking Redis


_PLAIN = ("{}", "", "", "0")  # a header's kwargs, options, when and check for add_plain


class EnqueueBatch:
    """Jobs packed as the enqueue script reads them: the fields that consecutive jobs
    share (type, priority, kwargs, options, time) go once, in a header; each job adds
    its id and arguments. A batch of like jobs costs two arguments per job. A batch
    comes in parts of up to ENQUEUE_CHUNK jobs, one script call each."""

    __slots__ = ("_checks", "_header", "_plain", "_prefix", "argv", "part_counts", "parts")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.parts: list[list[str]] = []  # each: [prefix, its number of jobs, ...]
        self.part_counts: list[int] = []  # jobs in each part
        self._checks: list[tuple[list[str], int]] = []  # each header's check flag
        self._new_part()

    def _new_part(self) -> None:
        self.argv: list[str] = [self._prefix, ""]
        self.parts.append(self.argv)
        self.part_counts.append(0)
        self._header: tuple[str, str, str, str, str, str] | None = None
        self._plain = ("", "")  # (name, priority) of the header when add_plain may follow it

    def add(self, job_id: str, name: str, priority: str, args_json: str, kwargs_json: str,
            options_json: str, when: str, given_id: bool) -> None:
        if self.part_counts[-1] == ENQUEUE_CHUNK:
            self._new_part()
        header = (name, priority, kwargs_json, options_json, when, "1" if given_id else "0")
        if header != self._header:
            self._header = header
            self._plain = (name, priority) if header[2:] == _PLAIN else ("", "")
            self.argv.append("")
            self.argv.extend(header)
            self._checks.append((self.argv, len(self.argv) - 1))
        self._append(job_id, args_json)

    def add_plain(self, job_id: str, name: str, priority: str, args_json: str) -> None:
        """A job with a generated id and nothing but arguments (enqueue_many's usual item)."""
        plain_name, plain_priority = self._plain
        if (self.part_counts[-1] == ENQUEUE_CHUNK or name != plain_name
                or priority != plain_priority):
            self.add(job_id, name, priority, args_json, "{}", "", "", False)
            return
        self._append(job_id, args_json)

    def _append(self, job_id: str, args_json: str) -> None:
        self.argv.append(job_id)
        self.argv.append(args_json)
        self.part_counts[-1] += 1

    def add_job(self, job: NewJob) -> None:
        self.add(job.id, job.name, job.priority, job.args_json, job.kwargs_json,
                 job.options_json, job.when, job.given_id)

    def check_every_id(self) -> None:
        """Before sending again after a lost reply: the first call may have created
        the jobs, so generated ids are checked too and nothing is enqueued twice."""
        for part, index in self._checks:
            part[index] = "1"


@dataclass(slots=True)
class Settlement:
    """How a run ended, as the step script records it (one per job: not frozen, whose
    __init__ costs a call per field)."""

    mode: str  # SUCCEEDED | RETRY | DEAD
    job: Job
    payload: str  # result JSON (NOTHING_KEPT: none to keep), or the error text
    traceback: str = ""
    delay: float = 0.0  # retry backoff, seconds


class LockLost(Exception):
    """The scheduler lock is not (or no longer) ours: do not act."""


class NotReplicated(redis.ConnectionError):
    """Fewer replicas than ``min_replicas_ack`` confirmed a write in time.

    A connection error to every retry loop: the write may not survive a
    failover, so the same (idempotent) call is sent again, on a new connection
    (after a failover, to the new primary).
    """


REPLICA_ACK_TIMEOUT_MS = 1000


class Broker:
    """Jobs in one Redis namespace."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "bananas",
        *,
        result_ttl: int = 3600,
        done_ttl: int = 300,
        dead_ttl: int = 7 * 86400,
        dead_max: int = 10_000,
        owner_ttl: float = 30.0,
        max_redeliveries: int = 3,
        min_replicas_ack: int = 0,
    ) -> None:
        self.client = client
        self.min_replicas_ack = min_replicas_ack
        self.keys = Keys(namespace)
        self.scripts = Scripts(client)
        self.result_ttl = int(result_ttl)
        self.done_ttl = int(done_ttl)
        self.dead_ttl = max(1, int(dead_ttl))
        self.dead_max = max(1, int(dead_max))
        self.owner_ttl = owner_ttl
        self.max_redeliveries = max_redeliveries
        self._local = threading.local()

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    def _connection(self) -> ScriptConnection:
        """This thread's own connection for enqueue calls (new after a fork).

        The client's per-command bookkeeping costs more than the enqueue script
        itself; a connection per thread needs none of it. The retry is ours
        (``enqueue_batch``).
        """
        local = self._local
        connection: ScriptConnection | None = getattr(local, "connection", None)
        if connection is None or local.pid != os.getpid():
            connection = ScriptConnection(self.client)
            local.connection, local.pid = connection, os.getpid()
        return connection

    # Liveness. The promise: a dead owner's jobs are back in their queues within
    # ``owner_ttl``. That is the owner key's lifetime after its last renewal plus
    # the time until the scheduler leader's next scan notices it expired, so
    # the key lives for ``owner_ttl`` less one scan period (and a little slack).

    @property
    def recovery_period(self) -> float:
        """How often the scheduler leader looks for owners whose liveness expired."""
        return max(1.0, self.owner_ttl / 10)

    @property
    def liveness(self) -> float:
        """Seconds an owner key lives after a renewal (renew at a third of it)."""
        return max(self.owner_ttl / 2, self.owner_ttl - self.recovery_period - 0.5)

    # Typed reads (the client decodes every reply to str).

    def members(self, key: str) -> list[str]:
        """A set's members, sorted."""
        return sorted(cast(set[str], self.client.smembers(key)))

    def fields(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], self.client.hgetall(key))

    def scored(self, key: str, upto: float | str = "+inf",
               limit: int | None = None) -> list[tuple[str, float]]:
        """Members of a sorted set with scores up to ``upto``, lowest first."""
        return cast(list[tuple[str, float]], self.client.zrangebyscore(
            key, "-inf", upto, start=0 if limit else None, num=limit, withscores=True))

    def lowest(self, key: str) -> tuple[str, float] | None:
        first = cast(list[tuple[str, float]], self.client.zrange(key, 0, 0, withscores=True))
        return first[0] if first else None

    # -- producing ---------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[bool]:
        """Record and queue the jobs in order; False where the id already existed."""
        batch = EnqueueBatch(self.prefix)
        for job in jobs:
            batch.add_job(job)
        return self.enqueue_batch(batch)

    def enqueue_batch(self, batch: EnqueueBatch) -> list[bool]:
        """The same for a packed batch: one script call per part of up to ENQUEUE_CHUNK
        jobs, each part all or nothing (no call runs long enough to stall Redis for
        every other client). A part whose reply was lost is sent again with every id
        checked, so nothing is enqueued twice; with ``min_replicas_ack`` the last part
        waits (WAIT, in the same round trip) until enough replicas have the writes."""
        flags: list[bool] = []
        if not batch.part_counts[0]:
            return flags
        for number, (part, count) in enumerate(zip(batch.parts, batch.part_counts,
                                                   strict=True)):
            part[1] = str(count)
            last = number == len(batch.parts) - 1
            skipped = self._send_part(batch, part, wait=last and self.min_replicas_ack > 0)
            part_flags = [True] * count
            for position in skipped:
                part_flags[int(position) - 1] = False
            flags += part_flags
        return flags

    def _send_part(self, batch: EnqueueBatch, part: list[str], wait: bool) -> list[Any]:
        backoff = Backoff(0.1, 1.0, jitter=(0.5, 1.0))
        while True:
            try:
                if not wait:
                    return list(self._connection().call(self.scripts.enqueue, 1,
                                                        self.keys.seq, *part))
                skipped, acked = self._connection().call(
                    self.scripts.enqueue, 1, self.keys.seq, *part, then=self.wait_command)
                self.check_replicas(acked)
                return list(skipped)
            except (redis.ConnectionError, redis.TimeoutError):  # NotReplicated included
                if backoff.failures >= ENQUEUE_RETRIES:
                    raise
                batch.check_every_id()
                time.sleep(backoff.failed())

    @property
    def wait_command(self) -> tuple[str, int, int]:
        return ("WAIT", self.min_replicas_ack, REPLICA_ACK_TIMEOUT_MS)

    def check_replicas(self, acked: int) -> None:
        """After a script call and its WAIT: NotReplicated when too few replicas have it."""
        if int(acked) < self.min_replicas_ack:
            raise NotReplicated(f"NOREPLICAS {acked} of {self.min_replicas_ack} replica(s) "
                                f"confirmed the write within {REPLICA_ACK_TIMEOUT_MS} ms")

    # -- consuming ---------------------------------------------------------

    def step(
        self,
        owner: str,
        slot: int,
        settlement: Settlement | None,
        fetch: bool,
        priorities: Sequence[str],
        job_types: Sequence[str],
        *,
        woke: bool = False,
    ) -> tuple[int | None, Job | None]:
        """Settle the slot's finished run (if any) and fetch its next job (if asked).

        Returns (settle status or None, next job or None). A status of
        LOST_OWNERSHIP means the run had been taken away; nothing changed.
        ``woke``: the slot waited idle before this fetch (it then wakes the next
        idle consumer when more jobs wait). Consumers call this through a
        ``StepChannel``; this is the same call for everyone else (the master
        settling a timed-out job, tests).
        """
        reply = self.scripts.step(
            keys=[self.keys.owned(owner), self.keys.owner(owner)],
            args=[self.prefix, owner, slot, int(self.liveness * 1000),
                  *self.settle_args(settlement), fetch_flag(fetch, woke),
                  *serves_args(priorities, job_types)],
        )
        return parse_step_reply(reply)

    def settle_args(self, settlement: Settlement | None) -> tuple[Any, ...]:
        if settlement is None:
            return NO_SETTLEMENT
        mode, payload = settlement.mode, settlement.payload
        if mode == SUCCEEDED:
            mode, ttl = (DONE, self.done_ttl) if payload == NOTHING_KEPT else (
                SUCCEEDED, self.result_ttl)
        else:
            ttl = self.dead_ttl
        return (mode, settlement.job.id, settlement.job.attempt, payload,
                settlement.traceback, settlement.delay, ttl, self.dead_max)

    def channel(self, owner: str, slot: int, priorities: Sequence[str],
                job_types: Sequence[str]) -> StepChannel:
        return StepChannel(self, owner, slot, priorities, job_types)

    def wake_keys(self, priorities: Sequence[str], job_types: Sequence[str],
                  owner: str) -> list[str]:
        """What an owner's idle slots block on: the wake-up lists of what they serve, and
        the owner's control list (``wake_owner``)."""
        return [*(self.keys.wake(p, t) for p in priorities for t in job_types),
                self.keys.control(owner)]

    def wake_owner(self, owner: str, count: int) -> None:
        """Wake an owner's idle slots (they block on its control list too), e.g. to stop."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.keys.control(owner), *["stop"] * count)
            pipe.expire(self.keys.control(owner), 60)
            pipe.execute()

    def wait_for_work(self, wake_keys: Sequence[str], timeout: float) -> bool:
        """Block until a wake-up token arrives (True) or the timeout passes (False)."""
        return self.client.blpop(list(wake_keys), timeout=timeout) is not None

    # -- liveness and recovery ----------------------------------------------

    def renew_owners(self, owners: Iterable[str]) -> None:
        """Keep owners alive: one pipelined round trip for all of them."""
        owners = list(owners)
        if not owners:
            return
        ttl_ms = int(self.liveness * 1000)
        with self.client.pipeline(transaction=False) as pipe:
            # Listed before the key is set: a live owner key always has its owner listed
            # for recovery scans (a fetch sets the key only when it is missing).
            pipe.sadd(self.keys.owners, *owners)
            for owner in owners:
                pipe.set(self.keys.owner(owner), "1", px=ttl_ms)
            pipe.execute()

    def recover(self, owner: str, *, known_dead: bool, lost_run: bool = True,
                reason: str = "worker lost") -> tuple[int, int]:
        """Return an owner's running jobs to the front of their queues.

        ``known_dead``: the caller knows the owner is gone (it reaped it, or
        it is the owner releasing itself); otherwise only an owner whose
        liveness key expired is recovered. ``lost_run``: count a redelivery
        (poison-pill protection); False for jobs returned unharmed.
        Returns (requeued, buried); (-1, 0) if the owner is alive.
        """
        requeued, buried = self.scripts.recover(
            keys=[self.keys.owned(owner), self.keys.owner(owner)],
            args=[self.prefix, owner, "1" if known_dead else "0", "1" if lost_run else "0",
                  self.max_redeliveries, self.dead_ttl, reason, self.dead_max],
        )
        if requeued > 0 or buried > 0:
            log.warning("recovered jobs of %s: %d requeued, %d dead (%s)",
                        owner, requeued, buried, reason)
        return int(requeued), int(buried)

    def owner_ids(self) -> list[str]:
        """Every owner that may hold jobs (live or not yet recovered)."""
        return self.members(self.keys.owners)

    def next_due(self) -> float | None:
        """When the earliest scheduled job is due (epoch seconds), or None."""
        first = self.lowest(self.keys.scheduled)
        return first[1] if first else None

    def recover_dead_owners(self) -> int:
        """Recover the jobs of every owner whose liveness key expired."""
        owners = self.owner_ids()
        if not owners:
            return 0
        with self.client.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.exists(self.keys.owner(owner))
            alive = pipe.execute()
        recovered = 0
        for owner, is_alive in zip(owners, alive, strict=True):
            if not is_alive:
                requeued, buried = self.recover(owner, known_dead=False,
                                                reason="worker lost: liveness expired")
                recovered += max(0, requeued) + buried
        return recovered

    # -- scheduling ----------------------------------------------------------

    def promote_due(self, token: str, batch: int = 1000) -> tuple[int, float | None]:
        """Move up to ``batch`` due jobs to their queues.

        Returns (promoted, seconds until the next due job or None).
        Raises LockLost if ``token`` does not hold the scheduler lock.
        """
        promoted, next_due = self.scripts.promote(
            keys=[self.keys.scheduled, self.keys.scheduler_lock, self.keys.seq],
            args=[self.prefix, token, batch],
        )
        if int(promoted) < 0:
            raise LockLost(token)
        wait = float(next_due)
        return int(promoted), (None if wait < 0 else wait)

    # -- reading -------------------------------------------------------------

    def job_info(self, job_id: str) -> JobInfo | None:
        """A job's record; for one that succeeded with nothing to keep, what its note
        says (``done_ttl``); None when unknown or expired."""
        fields = cast(dict[str, str], self.client.hgetall(self.keys.job(job_id)))
        if fields:
            return JobInfo.from_hash(job_id, fields)
        start, note = self._done_note(job_id)
        if note is None:
            return None
        runs, _, ms = note.rpartition("|")
        attempts, _, redeliveries = runs.partition(":")
        return JobInfo.from_hash(job_id, {"state": SUCCEEDED, "attempts": attempts or "1",
                                          "redeliveries": redeliveries or "0",
                                          "finished_at": str(int(start) + int(ms) / 1000)})

    def _done_note(self, job_id: str) -> tuple[str, str | None]:
        """(slice start, note) of a job in the live ``done`` slices, newest first."""
        starts = cast(list[str], self.client.zrevrange(self.keys.done_index, 0, -1))
        shards = note_shards(job_id)
        with self.client.pipeline(transaction=False) as pipe:
            for start in starts:
                for shard in shards:
                    pipe.hget(self.keys.done(start, shard), job_id)
            notes = cast(list[str | None], pipe.execute())
        for index, note in enumerate(notes):
            if note is not None:
                return starts[index // len(shards)], note
        return "", None

    def _queue_pairs(self) -> list[tuple[str, str]]:
        """Every (priority, job type) ever enqueued, from the ``queues`` set."""
        pairs = []
        for pair in self.members(self.keys.queues):
            priority, job_type = pair.split(":", 1)
            pairs.append((priority, job_type))
        return pairs

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Ready jobs per priority and job type, including types nobody serves."""
        pairs = self._queue_pairs()
        with self.client.pipeline(transaction=False) as pipe:
            for priority, job_type in pairs:
                pipe.llen(self.keys.ready(priority, job_type))
            lengths = pipe.execute()
        depths: dict[str, dict[str, int]] = {p: {} for p in PRIORITIES}
        for (priority, job_type), length in zip(pairs, lengths, strict=True):
            depths.setdefault(priority, {})[job_type] = int(length)
        return depths

    def empty_queues(self) -> set[str]:
        """The ``priority:type`` queues with no job waiting now."""
        depths = self.queue_depths()
        return {f"{p}:{t}" for p, types in depths.items() for t, n in types.items() if not n}

    def prune_queues(self, pairs: Iterable[str]) -> int:
        """Forget the queues among ``pairs`` that are still empty, and their wake-up tokens."""
        return int(self._in_batches(self.scripts.queues_prune, [self.keys.queues],
                                    sorted(pairs)))

    def prune_groups(self) -> int:
        """Forget the consumer groups that no consumer fetched for lately (rebuilt if used)."""
        return int(self.scripts.groups_prune(keys=[self.keys.group_types], args=[self.prefix]))

    def queue_report(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
        """Depths (as queue_depths) and the age in seconds of each non-empty queue's head."""
        pairs = self._queue_pairs()
        with self.client.pipeline(transaction=False) as pipe:
            for priority, job_type in pairs:
                pipe.llen(self.keys.ready(priority, job_type))
                pipe.lindex(self.keys.ready(priority, job_type), 0)
            pipe.time()
            *replies, (sec, usec) = pipe.execute()
        lengths, heads = replies[0::2], replies[1::2]
        with self.client.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hget(self.keys.job(head or "-"), "enqueued_at")
            enqueued = pipe.execute()
        now = sec + usec / 1e6
        depths: dict[str, dict[str, int]] = {p: {} for p in PRIORITIES}
        ages: dict[str, dict[str, float]] = {}
        for (priority, job_type), length, at in zip(pairs, lengths, enqueued, strict=True):
            depths.setdefault(priority, {})[job_type] = int(length)
            if at:
                ages.setdefault(priority, {})[job_type] = max(0.0, now - float(at))
        return depths, ages

    def counts(self) -> dict[str, int]:
        """Scheduled, dead and in-flight job counts."""
        owners = self.owner_ids()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.scheduled)
            pipe.zcard(self.keys.dead)
            for owner in owners:
                pipe.hlen(self.keys.owned(owner))
            scheduled, dead, *held = pipe.execute()
        return {"scheduled": int(scheduled), "dead": int(dead), "in_flight": sum(held)}

    # -- dead letters --------------------------------------------------------

    def dead_ids(self, limit: int | None = None, offset: int = 0) -> list[str]:
        """Dead job ids, most recent first (from the ``offset``-th on)."""
        end = -1 if limit is None else offset + max(0, limit - 1)
        return cast(list[str], self.client.zrevrange(self.keys.dead, offset, end))

    def dead_count(self) -> int:
        return int(cast(int, self.client.zcard(self.keys.dead)))

    def job_fields(self, ids: Sequence[str], fields: Sequence[str]) -> list[list[str | None]]:
        """Some fields of many jobs in one round trip (a page of a listing)."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self.keys.job(job_id), list(fields))
            return cast(list[list[str | None]], pipe.execute())

    def dead_jobs(self, limit: int = 50, offset: int = 0,
                  ids: Sequence[str] | None = None) -> list[JobInfo]:
        """A page of dead jobs, most recent first (or the given ones)."""
        ids = self.dead_ids(limit, offset) if ids is None else ids
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            records = pipe.execute()
        return [JobInfo.from_hash(i, r) for i, r in zip(ids, records, strict=True) if r]

    def requeue_dead(self, ids: Sequence[str]) -> int:
        return self._in_batches(self.scripts.dead_requeue, [self.keys.dead, self.keys.seq], ids)

    def remove_dead(self, ids: Sequence[str]) -> int:
        return self._in_batches(self.scripts.dead_remove, [self.keys.dead], ids)

    def _in_batches(self, script: Any, keys: list[str], ids: Sequence[str]) -> int:
        done = 0
        for start in range(0, len(ids), 500):
            done += int(script(keys=keys, args=[self.prefix, *ids[start:start + 500]]))
        return done

    def eviction_policy(self) -> str | None:
        """Redis' maxmemory-policy (None when INFO is not allowed): anything but
        ``noeviction`` may drop jobs, owner keys and locks under memory pressure."""
        try:
            info = cast(dict[str, Any], self.client.info("memory"))
        except redis.ResponseError:
            return None
        policy = info.get("maxmemory_policy")
        return str(policy) if policy is not None else None

    def ping(self) -> bool:
        return bool(self.client.ping())

    def load_scripts(self) -> None:
        self.scripts.load_all(self.client)


NO_SETTLEMENT: tuple[Any, ...] = ("", "", 0, "", "", 0, 0, 0)
NEED_TYPES = "types"  # the step script's answer when a fetch needs the job types left out


def note_shards(job_id: str) -> tuple[str, str, str]:
    """The job's shard of a ``done`` slice at each level (lua/lib/done.lua)."""
    h = 0
    for byte in job_id.encode()[-8:]:
        h = (h * 257 + byte) % 1000003
    return "a", str(h % 256), str(256 + h % 4096)


def fetch_flag(fetch: bool, woke: bool) -> str:
    return ("2" if woke else "1") if fetch else "0"


def serves_args(priorities: Sequence[str], job_types: Sequence[str]) -> tuple[str, ...]:
    """What a slot serves, as the step script reads it: the lists as separate arguments,
    and between them the consumer group of its types (lib/fetch.lua)."""
    return (str(len(priorities)), *priorities, group_id(job_types), *job_types)


def group_id(job_types: Sequence[str]) -> str:
    """The consumer group of several job types, the same for every consumer of the same
    set ('' for any type or a single one, which need no group)."""
    if len(job_types) < 2 or ANY_TYPE in job_types:
        return ""
    return hashlib.sha1(",".join(sorted(set(job_types))).encode()).hexdigest()[:16]


class ScriptConnection:
    """A bare connection for script calls: one per consumer slot, one per thread for
    enqueues.

    redis-py's client spends about 50 us per command on bookkeeping (pool checkout,
    retry wrapper, reply callbacks), more than a step or an enqueue script costs in
    Redis; a connection of our own, sending EVALSHA packed by hiredis, needs none of
    it. After NOSCRIPT (a restarted or flushed Redis) the source goes once with EVAL,
    which loads it. After any error the connection is closed and the error raised:
    the caller sends the same idempotent call again, on a new connection. It is
    opened with ``connect()`` itself, which (with a Sentinel URL) asks the Sentinels
    for the primary of the moment; an implicit reconnect would not.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.connection = client.connection_pool.make_connection()
        self.connected = False

    def call(self, script: Script, *args: Any, then: tuple[Any, ...] | None = None) -> Any:
        """The script's reply; with ``then`` (a command such as WAIT, sent in the same
        round trip), the pair of replies."""
        try:
            if not self.connected:
                self.connection.connect()
                self.connected = True
            extra = [hiredis.pack_command(then)] if then else []
            self.connection.send_packed_command(
                [hiredis.pack_command(("EVALSHA", script.sha, *args)), *extra])
            try:
                reply = self.connection.read_response()
            except redis.exceptions.NoScriptError:
                if then:
                    self.connection.read_response()  # the command after it answered too
                self.connection.send_packed_command(
                    [hiredis.pack_command(("EVAL", script.script, *args)), *extra])
                reply = self.connection.read_response()
            return (reply, self.connection.read_response()) if then else reply
        except redis.RedisError:  # a reply may be left unread: never reuse the connection
            self.close()
            raise

    def close(self) -> None:
        self.connection.disconnect()
        self.connected = False


def parse_step_reply(reply: Sequence[Any]) -> tuple[int | None, Job | None]:
    status = None if reply[0] == "" else int(reply[0])
    return status, (Job.from_reply(reply[1:]) if len(reply) > 1 else None)


class StepChannel:
    """One consumer thread's own connection for ``step``, the one call per job.

    redis-py's client spends about 50 us per command on bookkeeping (pool
    checkout, retry wrapper, reply callbacks): a third of a job's whole cost.
    A dedicated connection sending EVALSHA directly skips it. After NOSCRIPT
    (a restarted Redis) it loads the script and sends again; after a dropped
    connection or another transient error (READONLY from a demoted primary, too few
    replica confirmations under ``min_replicas_ack``) it disconnects and raises, and
    the consumer retries the same step, which is safe because a step is idempotent.
    The connection comes from the client's pool, so with a Sentinel URL a reconnect
    asks the Sentinels for the primary.
    """

    def __init__(self, broker: Broker, owner: str, slot: int, priorities: Sequence[str],
                 job_types: Sequence[str]) -> None:
        self.broker = broker
        self.connection = ScriptConnection(broker.client)
        self.script = broker.scripts.step
        keys = broker.keys
        self.head = (2, keys.owned(owner), keys.owner(owner), broker.prefix, owner, slot,
                     int(broker.liveness * 1000))
        self.serves = serves_args(priorities, job_types)
        # A group's consumer sends its job types only when a fetch may need them
        # (lib/fetch.lua): the first fetch, the first after an empty one, a retry.
        self.serves_short = self.serves[:len(priorities) + 2]
        self.short = False
        self.woke = False  # set after the slot waited idle; cleared by its next fetch

    def step(self, settlement: Settlement | None,
             fetch: bool) -> tuple[int | None, Job | None]:
        serves = self.serves_short if self.short and fetch else self.serves
        self.short = False  # until this call has answered with a job
        args = (*self.head, *self.broker.settle_args(settlement),
                fetch_flag(fetch, self.woke), *serves)
        if settlement is not None and self.broker.min_replicas_ack:
            reply, acked = self.connection.call(self.script, *args,
                                                then=self.broker.wait_command)
            self.broker.check_replicas(acked)
        else:
            reply = self.connection.call(self.script, *args)
        if len(reply) == 2 and reply[1] == NEED_TYPES:
            status, _ = parse_step_reply(reply[:1])
            return status, self.step(None, fetch)[1]
        if fetch:
            self.woke = False
        status, job = parse_step_reply(reply)
        self.short = job is not None and self.serves_short[-1] != ""
        return status, job

    def close(self) -> None:
        self.connection.close()
