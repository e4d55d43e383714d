"""The pidfile names this deployment's master and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.test_cli import one_line_error, run
from tests.helpers import wait_until
from tests.masters import MasterFactory, toml


def test_two_masters_started_at_once_on_one_pidfile_one_wins(masters: MasterFactory) -> None:
    config = toml("[pools.default]\nconcurrency = 1\n", pidfile="m.pid")
    racing = [masters(config, start=False, name=f"racer{i}") for i in range(2)]
    for master in racing:
        master.start(wait_ready=False)

    def one_exited() -> list[int]:
        return [i for i, m in enumerate(racing) if m.proc and m.proc.poll() is not None]

    (loser,) = wait_until(one_exited, timeout=20, message="one master to give up")
    winner = racing[1 - loser]
    assert racing[loser].wait_exit(5) == 1
    assert "a master is already running (pid" in racing[loser].read_log()
    winner.wait_notify("READY=1")
    assert (winner.tmp / "m.pid").read_text().strip() == str(winner.pid)


def test_stop_and_reload_never_signal_a_process_that_only_looks_like_a_master(
        tmp_path: Path) -> None:
    # A dead master's pid, reused by a process whose command line mentions the project.
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "bananas-prefork", "start"])
    try:
        (tmp_path / "p.toml").write_text('app = "tests.apps.recorder:app"\npidfile = "m.pid"\n')
        (tmp_path / "m.pid").write_text(f"{decoy.pid}\n")
        for command in ("stop", "reload"):
            one_line_error(run(command, "p.toml", cwd=tmp_path), 1, "no master is running")
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
