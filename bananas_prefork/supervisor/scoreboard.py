"""What a child tells its master without a system call: a shared-memory record.

The master maps one anonymous shared region per child before forking it. The
child writes its counters and, per slot, the job it runs and when it started;
the master reads them once a second. Writing is a few memory stores per job,
so it costs nothing on the hot path, and it still tells the truth when a job
holds the GIL or hangs in C code: the record says when the job started and
what its hard limit is.

Liveness is written here too, and the master acts on it: the child's main
loop beats the header every quarter second, and each loop of the child (every
job slot, and the scheduler loop where there is one) stamps its own entry
whenever it goes round. A loop silent for ``hang_timeout`` while it runs no job
is stuck (deadlocked, blocked in a call): the master replaces the child.
Times are CLOCK_MONOTONIC, which every process on the machine shares.

A slot is written under a sequence counter (odd while writing) so the master
never reads a half-written job.
"""

from __future__ import annotations

import ctypes
import mmap
import time
from dataclasses import dataclass

# Room for any id whole: a caller's id is at most 200 characters (800 bytes of UTF-8),
# a periodic tick's id at most 224 ASCII bytes; task names at most 200 ASCII bytes.
# Never truncated: the master finds a timed-out job by this id.
JOB_ID_SIZE = 1024
JOB_TYPE_SIZE = 256

STARTING, RUNNING, STOPPING = 0, 1, 2


class _Header(ctypes.Structure):
    _fields_ = [
        ("heartbeat", ctypes.c_double),
        ("state", ctypes.c_uint8),
        ("jobs_done", ctypes.c_uint64),
        ("jobs_failed", ctypes.c_uint64),
    ]


class _Slot(ctypes.Structure):
    _fields_ = [
        ("alive_at", ctypes.c_double),  # the loop's last round
        ("seq", ctypes.c_uint64),
        ("busy", ctypes.c_uint8),
        ("attempt", ctypes.c_uint32),
        ("started_at", ctypes.c_double),
        ("timeout", ctypes.c_double),  # 0: none
        ("job_id", ctypes.c_char * JOB_ID_SIZE),
        ("job_type", ctypes.c_char * JOB_TYPE_SIZE),
    ]


@dataclass(frozen=True)
class SlotView:
    """A consistent copy of one slot."""

    slot: int
    job_id: str
    job_type: str
    attempt: int
    started_at: float  # monotonic (CLOCK_MONOTONIC is one clock for every process)
    timeout: float | None


class Scoreboard:
    """One child's shared record: a header, one entry per job slot, and one per other
    loop the child runs (``loops``: the scheduler's)."""

    def __init__(self, threads: int, loops: int = 0) -> None:
        self.threads = threads
        entries = threads + loops
        size = ctypes.sizeof(_Header) + ctypes.sizeof(_Slot) * entries
        self._map = mmap.mmap(-1, size)
        self._header = _Header.from_buffer(self._map)
        self._slots = (_Slot * entries).from_buffer(self._map, ctypes.sizeof(_Header))
        now = time.monotonic()  # a new child has hang_timeout to show life
        self._header.heartbeat = now
        for entry in self._slots:
            entry.alive_at = now

    def close(self) -> None:
        del self._header, self._slots
        self._map.close()

    # -- the child writes ---------------------------------------------------------

    def beat(self) -> None:
        self._header.heartbeat = time.monotonic()

    def slot_alive(self, slot: int) -> None:
        """A loop went round: it is not stuck."""
        self._slots[slot].alive_at = time.monotonic()

    def set_state(self, state: int) -> None:
        self._header.state = state
        self.beat()

    def job_started(self, slot: int, job_id: str, job_type: str, attempt: int,
                    timeout: float | None) -> None:
        encoded_id, encoded_type = job_id.encode(), job_type.encode()
        if len(encoded_id) >= JOB_ID_SIZE or len(encoded_type) >= JOB_TYPE_SIZE:
            raise ValueError(f"job id or type too long for the scoreboard: {job_id!r}")
        record = self._slots[slot]
        record.seq += 1
        record.job_id = encoded_id
        record.job_type = encoded_type
        record.attempt = attempt
        record.timeout = timeout or 0.0
        record.started_at = record.alive_at = time.monotonic()
        record.busy = 1
        record.seq += 1

    def job_ended(self, slot: int, succeeded: bool) -> None:
        record = self._slots[slot]
        record.seq += 1
        record.busy = 0
        record.seq += 1
        record.alive_at = time.monotonic()
        if succeeded:
            self._header.jobs_done += 1
        else:
            self._header.jobs_failed += 1

    # -- the master reads ---------------------------------------------------------

    @property
    def heartbeat(self) -> float:
        return float(self._header.heartbeat)

    @property
    def state(self) -> int:
        return int(self._header.state)

    @property
    def jobs_done(self) -> int:
        return int(self._header.jobs_done)

    @property
    def jobs_failed(self) -> int:
        return int(self._header.jobs_failed)

    def silence(self, now: float, limit: float, running: list[SlotView]) -> str | None:
        """Why the child looks stuck, or None: a loop silent for ``limit`` seconds while
        running no job, or a silent main loop while no job runs (a job may hold the GIL).
        ``running``: the busy slots, as just read (``busy_slots``)."""
        busy = {view.slot for view in running}
        for index, entry in enumerate(self._slots):
            if index not in busy and now - entry.alive_at > limit:
                name = f"slot {index}" if index < self.threads else "the scheduler loop"
                return f"{name} silent for {now - entry.alive_at:.0f}s"
        if not busy and now - self.heartbeat > limit:
            return f"main loop silent for {now - self.heartbeat:.0f}s"
        return None

    def busy_slots(self) -> list[SlotView]:
        views = []
        for index in range(self.threads):
            view = self._read(index)
            if view is not None:
                views.append(view)
        return views

    def _read(self, index: int) -> SlotView | None:
        record = self._slots[index]
        for _ in range(100):
            before = record.seq
            if before % 2:
                continue
            view = SlotView(index, record.job_id.decode(errors="replace"),
                            record.job_type.decode(errors="replace"), int(record.attempt),
                            float(record.started_at), float(record.timeout) or None)
            busy = bool(record.busy)
            if record.seq == before:
                return view if busy else None
        return None
