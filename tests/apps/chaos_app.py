"""The chaos suite's application: every run of every job leaves a line in a ledger.

The ledger is one append-only file per process in ``$CHAOS_LEDGER_DIR``
(``<pid>.log``), written with a single ``os.write`` per line on an
``O_APPEND`` descriptor. It needs no server, so no fault the suite injects
(Redis down, paused, read-only, out of memory) can lose or delay a record,
and a line that ``write`` returned for stays in the page cache however its
process dies afterwards. Lines::

    S <job id> <attempt> <pid> <monotonic start> <pool>
    E <job id> <attempt> <pid> <monotonic end>

Times are ``CLOCK_MONOTONIC``, which every process on the machine shares and
which a wall-clock step does not move, so the test compares them with its own
``time.monotonic()``.

With ``$CHAOS_CLOCK_FILE`` set, importing this module (which the master does
before it forks) shifts ``time.time``/``time.time_ns`` of the whole process
tree by the offset (a double, in seconds) stored in that file: a wall-clock
step on the application host that the test can move while everything runs,
with Redis' clock left alone as if Redis ran on another machine.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from bananas_prefork import App, current_job

app = App(namespace=os.environ.get("BANANAS_NAMESPACE", "bananas"))

PROBE_PREFIX = "probe-"
_ledger: tuple[int, int] | None = None  # (pid, fd)


def _ledger_fd() -> int | None:
    """This process's ledger file, opened once per pid (children inherit none)."""
    global _ledger
    directory = os.environ.get("CHAOS_LEDGER_DIR")
    if not directory:
        return None
    if _ledger is None or _ledger[0] != os.getpid():
        path = os.path.join(directory, f"{os.getpid()}.log")
        _ledger = (os.getpid(), os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    return _ledger[1]


def _write(line: str) -> None:
    fd = _ledger_fd()
    if fd is not None:
        os.write(fd, line.encode())


def _started() -> tuple[str, int]:
    job = current_job()
    assert job is not None
    _write(f"S {job.id} {job.attempt} {os.getpid()} {time.monotonic():.6f} {job.pool}\n")
    return job.id, job.attempt


def _ended(job_id: str, attempt: int) -> None:
    _write(f"E {job_id} {attempt} {os.getpid()} {time.monotonic():.6f}\n")


def _run(seconds: float) -> float:
    job_id, attempt = _started()
    time.sleep(seconds)
    _ended(job_id, attempt)
    return seconds


@app.task(priority="high")
def chaos_high(ms: int) -> float:
    """Short, urgent work: the high pool's threads."""
    return _run(ms / 1000)


@app.task(priority="normal")
def chaos_default(ms: int) -> float:
    """Ordinary work: the default pool."""
    return _run(ms / 1000)


@app.task(priority="low")
def chaos_report(ms: int) -> float:
    """Slower work of its own type: the job-specialized pool."""
    return _run(ms / 1000)


@app.task(priority="normal")
def chaos_long(seconds: float) -> float:
    """A job that outlives a stall of its master (owner liveness must hold)."""
    return _run(seconds)


@app.task(priority="low")
def chaos_hog(megabytes: int, hold: float) -> int:
    """A runaway allocation: the pool's max_memory_mb_hard must kill it."""
    job_id, attempt = _started()
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)
    _ended(job_id, attempt)
    return len(block)


@app.task(priority="low", max_retries=0)
def chaos_exit() -> None:
    """A job that ends its own process with exit code 0: a poison pill in disguise."""
    _started()
    os._exit(0)


@app.task
def chaos_probe(group: str, size: int, wait: float) -> bool:
    """Wait until ``size`` probes of ``group`` run at once; True if they all did.

    The test enqueues one probe per slot of a pool: they can only meet if every
    slot of the pool takes one, which proves no consumer thread is gone.
    """
    job_id, attempt = _started()
    directory = Path(os.environ["CHAOS_LEDGER_DIR"])
    (directory / f"{PROBE_PREFIX}{group}-{job_id}").touch()
    deadline = time.monotonic() + wait
    met = False
    while time.monotonic() < deadline:
        if len(list(directory.glob(f"{PROBE_PREFIX}{group}-*"))) >= size:
            met = True
            break
        time.sleep(0.01)
    _ended(job_id, attempt)
    return met


# -- the stepped wall clock -----------------------------------------------------------


def _install_clock(path: str) -> None:
    """Shift time.time()/time.time_ns() by the offset in ``path`` (idempotent)."""
    if getattr(time.time, "chaos_clock", False):
        return  # already installed (the master re-imports the app on HUP and USR2)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset_map = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    real_time, real_time_ns = time.time, time.time_ns

    def offset() -> float:
        return float(struct.unpack_from("d", offset_map, 0)[0])

    def stepped_time() -> float:
        return real_time() + offset()

    def stepped_time_ns() -> int:
        return real_time_ns() + int(offset() * 1e9)

    marked: Callable[[], float] = stepped_time
    marked.chaos_clock = True  # type: ignore[attr-defined]
    time.time = marked
    time.time_ns = stepped_time_ns


if os.environ.get("CHAOS_CLOCK_FILE"):
    _install_clock(os.environ["CHAOS_CLOCK_FILE"])
