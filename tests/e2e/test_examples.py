"""The shipped examples work as documented: every file in configs/ validates and
starts a real master that runs the demo tasks it serves, and the demo load
generator enqueues a mix of every job type."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest

from bananas_prefork import App
from bananas_prefork.core.config import load_file
from bananas_prefork.core.keys import PRIORITIES
from bananas_prefork.examples.tasks import app as demo_app
from tests.helpers import wait_until
from tests.masters import ROOT, MasterFactory

CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
ARGUMENTS: dict[str, tuple[list[object], dict[str, object]]] = {
    "send_email": (["ada@example.com"], {"subject": "Your receipt"}),
    "generate_report": ([42], {}),
    "process_images": ([7], {}),
    "fetch_data": (["crm"], {"page": 2}),
    "process_analytics": ([], {"events": 2_000}),
}
# The children each file is documented to start, by pool (a lone thin pool
# runs the scheduler in its own process).
LAYOUTS = {
    "thin": {"thin": 1},
    "default": {"default": 2, "scheduler": 1},
    "specialized": {"high": 2, "normal": 3, "low": 2, "scheduler": 1},
    "job-specialized": {"cpu": 4, "io": 2, "analytics": 2, "scheduler": 1},
    "scheduler-only": {"scheduler": 1},
    "production": {"high": 2, "cpu": 4, "io": 2, "analytics": 2, "scheduler": 1},
}
APP_LINE = 'app = "bananas_prefork.examples.tasks:app"\n'


def test_every_mode_has_an_example_config() -> None:
    assert {path.stem for path in CONFIGS} == set(LAYOUTS)
    assert set(demo_app.tasks) == set(ARGUMENTS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_passes_check(path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    result = subprocess.run([sys.executable, "-m", "bananas_prefork", "check", str(path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"{path}: OK" in result.stdout and "5 task(s)" in result.stdout


def for_test(text: str, tmp: Path, namespace: str) -> str:
    """The shipped file, pointed at this test's namespace, pidfile and a free metrics port.

    The namespace goes in the file because a file's master takes it from the file
    or the App, not from BANANAS_NAMESPACE; the Redis URL comes from the environment.
    """
    shipped = tomllib.loads(text)
    assert "redis_url" not in shipped and "namespace" not in shipped  # left to the environment
    assert text.count(APP_LINE) == 1
    text = text.replace(APP_LINE, f'{APP_LINE}namespace = "{namespace}"\n')
    text = re.sub(r'^pidfile = ".*"', f'pidfile = "{tmp / "master.pid"}"', text, flags=re.M)
    return re.sub(r"^metrics_port = \d+", f"metrics_port = {_free_port()}", text, flags=re.M)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_starts_runs_its_jobs_and_stops_cleanly(
        path: Path, masters: MasterFactory, redis_url: str, namespace: str,
        tmp_path: Path) -> None:
    master = masters(for_test(path.read_text(), tmp_path, namespace))
    master.wait_children(LAYOUTS[path.stem])
    assert master.config_path is not None
    pidfile = load_file(master.config_path).pidfile
    if pidfile:
        assert Path(pidfile).read_text().strip() == str(master.pid)

    # Every file that runs jobs has a pool for every task at its default priority;
    # a scheduler-only master leaves them queued but still promotes delayed jobs.
    client = App(redis_url, namespace=namespace)
    final = "queued" if path.stem == "scheduler-only" else "succeeded"
    ids = [client.enqueue(task, args=args, kwargs=kwargs, priority=demo_app.tasks[task].priority)
           for task, (args, kwargs) in ARGUMENTS.items()]
    ids.append(client.enqueue("send_email", args=["bob@example.com"], priority="low", delay=0.2))
    wait_until(lambda: all(client.job(i).state == final for i in ids), timeout=20,
               interval=0.05, message=f"{path.stem}: every job {final}")

    master.send(signal.SIGTERM)
    assert master.wait_exit(timeout=30) == 0, master.read_log()[-4000:]
    if pidfile:
        assert not Path(pidfile).exists()


DemoFactory = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def demo(redis_url: str, namespace: str) -> Iterator[DemoFactory]:
    """Starts the load generator against the test Redis; kills what is left at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "bananas_prefork.examples.demo", "--redis", redis_url,
                "--namespace", namespace, *extra]
        started.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_demo_enqueues_a_mix_of_every_job_type(demo: DemoFactory, app: App) -> None:
    process = demo("--duration", "2", "--rate", "50", "--seed", "7")
    total = 2 * 50
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    lines = out.strip().splitlines()
    assert re.match(r"\[\s+1s\] \+\d+ jobs", lines[1]), out
    summary = re.match(r"enqueued (\d+) jobs", lines[-1])
    assert summary is not None and int(summary.group(1)) == total, out

    depths = app.queue_depths()
    queued = {task: sum(depths[p].get(task, 0) for p in PRIORITIES) for task in ARGUMENTS}
    assert all(queued.values()), depths
    assert all(sum(depths[p].values()) for p in PRIORITIES), depths
    scheduled = app.broker.counts()["scheduled"]
    assert scheduled > 0 and sum(queued.values()) + scheduled == total


def test_demo_stops_cleanly_on_sigterm(demo: DemoFactory) -> None:
    process = demo("--rate", "20")
    assert process.stdout is not None
    assert process.stdout.readline().startswith("enqueueing 20 jobs/s")
    assert process.stdout.readline().startswith("[   1s]")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert re.match(r"enqueued \d+ jobs in", out.strip().splitlines()[-1]), out


def test_the_demo_command_stops_through_the_master(namespace: str, tmp_path: Path) -> None:
    """`bananas-prefork demo` ends by asking the master to stop, not by killing its whole
    process group: the scheduler child and the embedded Redis stop in order, no error."""
    demo_file = resources.files("bananas_prefork") / "examples" / "demo.toml"
    config = tmp_path / "demo.toml"
    config.write_text('redis_url = "embedded"\n' + demo_file.read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BANANAS_REDIS_URL")}
    env.update(PYTHONPATH=str(ROOT), BANANAS_NAMESPACE=namespace)
    done = subprocess.run([sys.executable, "-m", "bananas_prefork", "demo", "--duration", "4",
                           "--rate", "20", "--config", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / ".bananas" / "demo-master.log").read_text()
    assert " ERROR " not in log and "killing" not in log, log[-3000:]
    assert "stopped" in log
