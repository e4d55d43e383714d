"""Every Redis key of a namespace, in one place.

All keys share the hash tag ``{namespace}`` so that one namespace lives in one
Redis Cluster slot and the Lua scripts may touch any of them. The Lua scripts
build the same keys from the same prefix with ``key(part, ...)`` in
``lua/lib/keys.lua``; the part names below are the contract between the two.
"""

from __future__ import annotations

PRIORITIES: tuple[str, ...] = ("high", "normal", "low")  # also in lua/lib/keys.lua
ANY_TYPE = "*"


def namespace_problem(namespace: str) -> str | None:
    """Why a namespace cannot prefix keys, or None: it goes inside the ``{...}`` hash tag."""
    if not namespace or any(c in namespace for c in "{}: \t\n"):
        return f"invalid namespace {namespace!r}: use letters, digits, '-', '_' or '.'"
    return None


class Keys:
    """Key templates for one namespace."""

    def __init__(self, namespace: str = "bananas") -> None:
        problem = namespace_problem(namespace)
        if problem:
            raise ValueError(problem)
        self.namespace = namespace
        self.prefix = "{%s}" % namespace

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # jobs and queues
    def job(self, job_id: str) -> str:
        """Hash: one job's record (see job.py for the fields)."""
        return self._key("job", job_id)

    def ready(self, priority: str, job_type: str) -> str:
        """List of job ids waiting to run, oldest at the head."""
        return self._key("ready", priority, job_type)

    def heads(self, priority: str) -> str:
        """Sorted set: job type -> enqueue sequence of the head of its ready list."""
        return self._key("heads", priority)

    def group_heads(self, priority: str, group: str) -> str:
        """Sorted set: ``heads`` for the job types of one consumer group only."""
        return self._key("gheads", priority, group)

    def groups(self, job_type: str) -> str:
        """Set of the consumer groups (ids) that serve a job type."""
        return self._key("groups", job_type)

    def group(self, group: str) -> str:
        """String with a TTL: present while the group's ``group_heads`` (every priority)
        are built; renewed by each fetch of the group that finds nothing."""
        return self._key("group", group)

    @property
    def group_types(self) -> str:
        """Hash: consumer group id -> its job types (JSON), to prune expired groups."""
        return self._key("group_types")

    def wake(self, priority: str, job_type: str) -> str:
        """List of wake-up tokens that idle consumers block on (``*`` = any type)."""
        return self._key("wake", priority, job_type)

    @property
    def queues(self) -> str:
        """Set of ``priority:job_type`` pairs ever enqueued (for depth reports)."""
        return self._key("queues")

    @property
    def seq(self) -> str:
        """Counter: the enqueue sequence that orders jobs across job types."""
        return self._key("seq")

    @property
    def scheduled(self) -> str:
        """Sorted set: job id -> due time (epoch seconds) of delayed jobs and retries."""
        return self._key("scheduled")

    @property
    def dead(self) -> str:
        """Sorted set: job id -> time it died (capped at ``dead_max``, oldest dropped)."""
        return self._key("dead")

    def done(self, start: str, shard: str) -> str:
        """Hash: job id -> note (``ms``, ``attempts|ms`` or ``attempts:redeliveries|ms``
        after ``start``) of some of the jobs that succeeded with nothing to keep in the
        time slice starting at epoch second ``start``; expires ``done_ttl`` after the
        slice ends (lua/lib/done.lua)."""
        return self._key("done", start, shard)

    @property
    def done_index(self) -> str:
        """Sorted set: start of a ``done`` slice -> when its hash expires."""
        return self._key("done")

    # ownership of in-flight jobs
    def owned(self, owner: str) -> str:
        """Hash: consumer slot -> job id that this owner is running."""
        return self._key("owned", owner)

    def owner(self, owner: str) -> str:
        """String with a TTL: the owner is alive while this key exists."""
        return self._key("owner", owner)

    def control(self, owner: str) -> str:
        """List: a token here wakes an owner's idle threads (used to stop promptly)."""
        return self._key("control", owner)

    @property
    def owners(self) -> str:
        """Set of owners that have held jobs (scanned for dead owners)."""
        return self._key("owners")

    # scheduler
    @property
    def scheduler_lock(self) -> str:
        """String with a TTL: the leader's token (``host:pid:nonce``)."""
        return self._key("scheduler", "lock")

    @property
    def scheduler_wake(self) -> str:
        """List: a token here wakes the leader early (a job is due sooner)."""
        return self._key("scheduler", "wake")

    @property
    def scheduler_handover(self) -> str:
        """List: a token here tells followers the leader let go (contend now)."""
        return self._key("scheduler", "handover")

    @property
    def periodic(self) -> str:
        """Hash: periodic entry name -> its definition (JSON)."""
        return self._key("periodic")

    @property
    def periodic_next(self) -> str:
        """Sorted set: periodic entry name -> next tick time."""
        return self._key("periodic", "next")

    @property
    def periodic_sources(self) -> str:
        """Hash: ``entry name|node`` -> the definition that node declares."""
        return self._key("periodic", "sources")

    # operator's view
    @property
    def alerts_since(self) -> str:
        """Hash: queue alert condition -> since when it holds (epoch seconds)."""
        return self._key("alerts", "since")

    def node(self, node_id: str) -> str:
        """String with a TTL: one master's published status (JSON)."""
        return self._key("node", node_id)

    @property
    def nodes(self) -> str:
        """Sorted set: node id -> last time it published."""
        return self._key("nodes")

    def history(self, resolution: str) -> str:
        """Hash: ring of ``slots`` buckets, slot -> packed figures (``history.py``);
        ``resolution`` is ``second`` or ``minute``."""
        return self._key("history", resolution)
