"""The scheduler lock and its signals: the only code on the ``scheduler:*`` keys.

One token holds ``scheduler:lock`` (``SET NX PX``); it is renewed by
compare-and-extend and released by compare-and-delete, so only its holder
can do either. Two lists carry signals: ``scheduler:handover`` tells
followers that the leader let go (contend now rather than wait out the
lease), ``scheduler:wake`` tells the leader a job is due sooner than it
planned to wake. The scripts that act for the leader (promote, periodic
fire) check the token themselves (fencing).
"""

from __future__ import annotations

from typing import cast

from .broker import Broker

HANDOVER_TTL = 60  # seconds a hand-over signal waits for a follower


class LeaderLock:
    def __init__(self, broker: Broker) -> None:
        self.client = broker.client
        self.keys = broker.keys
        self.scripts = broker.scripts
        self.prefix = broker.prefix

    def acquire(self, token: str, lease: float) -> bool:
        return bool(self.client.set(self.keys.scheduler_lock, token, nx=True,
                                    px=int(lease * 1000)))

    def renew(self, token: str, lease: float) -> bool:
        return bool(self.scripts.lock_renew(keys=[self.keys.scheduler_lock],
                                            args=[self.prefix, token, int(lease * 1000)]))

    def release(self, token: str) -> bool:
        """Let go if we hold it, and tell the followers so; False if it was not ours."""
        if not self.scripts.lock_release(keys=[self.keys.scheduler_lock],
                                         args=[self.prefix, token]):
            return False
        with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.scheduler_handover)
            pipe.rpush(self.keys.scheduler_handover, token)
            pipe.expire(self.keys.scheduler_handover, HANDOVER_TTL)
            pipe.execute()
        return True

    def holder(self) -> tuple[str | None, float | None]:
        """(token, seconds left) of the lock, or (None, None)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.scheduler_lock)
            pipe.pttl(self.keys.scheduler_lock)
            token, pttl = pipe.execute()
        if token is None or pttl < 0:
            return None, None
        return cast(str, token), pttl / 1000.0

    def wait_for_handover(self, timeout: float) -> None:
        """Block until the leader lets go or ``timeout`` passes."""
        self.client.blpop([self.keys.scheduler_handover], timeout=max(0.01, timeout))

    def wait_for_wake(self, timeout: float) -> bool:
        """(The leader) block until a job is due sooner than planned; False on timeout."""
        return self.client.blpop([self.keys.scheduler_wake], timeout=timeout) is not None

    def wake_leader(self) -> None:
        """Make the leader look at the schedule now (one token is enough)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.keys.scheduler_wake, "1")
            pipe.ltrim(self.keys.scheduler_wake, -1, -1)
            pipe.execute()
