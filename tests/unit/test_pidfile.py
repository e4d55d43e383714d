"""The pidfile's lock: whoever holds it is the master; nobody else is ever signalled."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from bananas_prefork.supervisor.pidfile import Pidfile, PidfileError, running_master, signal_master


def test_a_held_pidfile_names_its_master_and_refuses_a_second(tmp_path: Path) -> None:
    first = Pidfile(tmp_path / "run" / "m.pid")
    first.create(os.getpid())
    assert (tmp_path / "run" / "m.pid").read_text() == f"{os.getpid()}\n"
    master = running_master(tmp_path / "run" / "m.pid")
    assert master is not None and master.pid == os.getpid()
    with pytest.raises(PidfileError, match=rf"already running \(pid {os.getpid()}\)"):
        Pidfile(tmp_path / "run" / "m.pid").create(12345)
    first.remove()
    assert not (tmp_path / "run" / "m.pid").exists()
    assert running_master(tmp_path / "run" / "m.pid") is None


def test_an_unlocked_pidfile_is_stale_whatever_pid_it_names(tmp_path: Path) -> None:
    (tmp_path / "m.pid").write_text(f"{os.getpid()}\n")  # alive, but holds no lock
    assert running_master(tmp_path / "m.pid") is None
    with pytest.raises(PidfileError, match="no master is running"):
        signal_master(tmp_path / "m.pid", signal.SIGHUP)


def test_a_pid_started_after_the_file_was_written_is_not_the_master(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = Pidfile(tmp_path / "m.pid")
    held.create(os.getpid())
    os.utime(tmp_path / "m.pid", (0, 0))  # written long before this process started
    assert running_master(tmp_path / "m.pid") is None
    held.remove()


@pytest.mark.parametrize("error, message", [
    (psutil.NoSuchProcess(1), "exited before the signal reached it"),
    (psutil.AccessDenied(1), "not allowed to signal master"),
])
def test_a_vanished_or_forbidden_master_is_one_line(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    error: Exception, message: str) -> None:
    held = Pidfile(tmp_path / "m.pid")
    held.create(os.getpid())

    def refuse(self: psutil.Process, signum: int) -> None:
        raise error

    monkeypatch.setattr(psutil.Process, "send_signal", refuse)
    with pytest.raises(PidfileError, match=message):
        signal_master(tmp_path / "m.pid", signal.SIGHUP)
    held.remove()


def test_the_pidfile_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("keep\n")
    (tmp_path / "m.pid").symlink_to(tmp_path / "target")
    with pytest.raises(PidfileError, match="cannot write the pidfile"):
        Pidfile(tmp_path / "m.pid").create(os.getpid())
    assert (tmp_path / "target").read_text() == "keep\n"
