"""The only code that talks to Redis about jobs.

Every change of more than one key is one Lua script (``lua/``): enqueue,
step (settle a run and fetch the next), recover, promote, and the dead-letter
tools. Reads are plain commands. Nothing here knows about processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from .errors import is_transient
from .job import Job, JobInfo
from .keys import PRIORITIES, Keys
from .scripts import Scripts

log = logging.getLogger(__name__)

SUCCEEDED, RETRY, DEAD = "succeeded", "retry", "dead"
ENQUEUE_CHUNK = 1000  # jobs per enqueue call: ~10 ms of Redis time at most
LOST_OWNERSHIP = -1


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

    def as_argv(self) -> tuple[str, ...]:
        return (self.id, self.name, self.priority, self.args_json, self.kwargs_json,
                self.options_json, self.when)


@dataclass(frozen=True)
class Settlement:
    """How a run ended, as the step script records it."""

    mode: str  # SUCCEEDED | RETRY | DEAD
    job: Job
    payload: str  # result JSON, or the error text
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
ENQUEUE_ATTEMPTS = 5


class Broker:
    """Jobs in one Redis namespace."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "bananas",
        *,
        result_ttl: int = 3600,
        dead_ttl: int = 7 * 86400,
        owner_ttl: float = 30.0,
        max_redeliveries: int = 3,
        min_replicas_ack: int = 0,
    ) -> None:
        self.client = client
        self.min_replicas_ack = min_replicas_ack
        self.keys = Keys(namespace)
        self.scripts = Scripts(client)
        self.result_ttl = int(result_ttl)
        self.dead_ttl = max(1, int(dead_ttl))
        self.owner_ttl = owner_ttl
        self.max_redeliveries = max_redeliveries

    @property
    def prefix(self) -> str:
        return self.keys.prefix

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
        """Record and queue the jobs in order; False where the id already existed.

        Up to ENQUEUE_CHUNK jobs are one atomic script call; a bigger batch is several
        calls sent in one round trip (each chunk all or nothing), so that no call runs
        long enough to stall Redis for every other client.
        """
        keys = [self.keys.seq, self.keys.queues]
        chunks = [jobs[start:start + ENQUEUE_CHUNK]
                  for start in range(0, len(jobs), ENQUEUE_CHUNK)]
        if len(chunks) == 1 and not self.min_replicas_ack:
            return [bool(f) for f in self.scripts.enqueue(keys=keys, args=_argv(self, jobs))]
        return self._enqueue_in_chunks(keys, chunks)

    def _enqueue_in_chunks(self, keys: list[str], chunks: list[Sequence[NewJob]]) -> list[bool]:
        """The chunks in one round trip and, with ``min_replicas_ack``, a WAIT on the same
        connection, sent again while too few replicas confirm (the first reply's flags
        stand: a resend finds the ids it wrote)."""
        flags: list[bool] | None = None
        for attempt in range(1, ENQUEUE_ATTEMPTS + 1):
            with self.client.pipeline(transaction=False) as pipe:
                for chunk in chunks:
                    self.scripts.enqueue(keys=keys, args=_argv(self, chunk), client=pipe)
                if self.min_replicas_ack:
                    pipe.execute_command(*self.wait_command)
                replies = pipe.execute()
            if not self.min_replicas_ack:
                return [bool(flag) for reply in replies for flag in reply]
            *replies, acked = replies
            flags = flags or [bool(flag) for reply in replies for flag in reply]
            try:
                self.check_replicas(acked)
                return flags
            except NotReplicated:
                if attempt == ENQUEUE_ATTEMPTS:
                    raise
                time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

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
    ) -> tuple[int | None, Job | None]:
        """Settle the slot's finished run (if any) and fetch its next job (if asked).

        Returns (settle status or None, next job or None). A status of
        LOST_OWNERSHIP means the run had been taken away; nothing changed.
        Consumers call this through a ``StepChannel``; this is the same call
        for everyone else (the master settling a timed-out job, tests).
        """
        reply = self.scripts.step(
            keys=[self.keys.owned(owner), self.keys.owner(owner)],
            args=[self.prefix, owner, slot, int(self.liveness * 1000),
                  *self.settle_args(settlement), "1" if fetch else "0",
                  ",".join(priorities), ",".join(job_types)],
        )
        return parse_step_reply(reply)

    def settle_args(self, settlement: Settlement | None) -> tuple[Any, ...]:
        if settlement is None:
            return NO_SETTLEMENT
        ttl = self.result_ttl if settlement.mode == SUCCEEDED else self.dead_ttl
        return (settlement.mode, settlement.job.id, settlement.job.attempt, settlement.payload,
                settlement.traceback, settlement.delay, ttl)

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
        ttl_ms = int(self.liveness * 1000)
        with self.client.pipeline(transaction=False) as pipe:
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
                  self.max_redeliveries, self.dead_ttl, reason],
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
        fields = cast(dict[str, str], self.client.hgetall(self.keys.job(job_id)))
        return JobInfo.from_hash(job_id, fields) if fields else None

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
        owners = self.members(self.keys.owners)
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


def _argv(broker: Broker, jobs: Sequence[NewJob]) -> list[str]:
    argv = [broker.prefix]
    for job in jobs:
        argv.extend(job.as_argv())
    return argv


NO_SETTLEMENT: tuple[Any, ...] = ("", "", 0, "", "", 0, 0)


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
        self.connection = broker.client.connection_pool.make_connection()
        self.script = broker.scripts.step
        keys = broker.keys
        self.head = (2, keys.owned(owner), keys.owner(owner), broker.prefix, owner, slot,
                     int(broker.liveness * 1000))
        self.serves = (",".join(priorities), ",".join(job_types))
        self.connected = False

    def step(self, settlement: Settlement | None,
             fetch: bool) -> tuple[int | None, Job | None]:
        args = (*self.head, *self.broker.settle_args(settlement), "1" if fetch else "0",
                *self.serves)
        try:
            if not self.connected:
                # connect() itself, not send_command's implicit reconnect: only connect()
                # asks a Sentinel pool where the primary is now.
                self.connection.connect()
                self.connected = True
            try:
                self.connection.send_command("EVALSHA", self.script.sha, *args)
                reply = self.connection.read_response()
            except redis.exceptions.NoScriptError:
                self.connection.send_command("EVAL", self.script.script, *args)
                reply = self.connection.read_response()
            if settlement is not None and self.broker.min_replicas_ack:
                self.connection.send_command(*self.broker.wait_command)
                self.broker.check_replicas(self.connection.read_response())
        except redis.RedisError as exc:
            if is_transient(exc):  # reconnect: after a failover, to the new primary
                self.close()
            raise
        return parse_step_reply(reply)

    def close(self) -> None:
        self.connection.disconnect()
        self.connected = False
