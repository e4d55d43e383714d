"""The deployment files: the systemd units pass ``systemd-analyze verify`` and
carry the settings the master relies on, the installer's dry run shows every
step without changing anything, and each Kubernetes pool is a valid worker
configuration."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from bananas_prefork.core.config import Deployment, load_environment, load_file
from bananas_prefork.core.durations import parse_duration
from bananas_prefork.core.keys import PRIORITIES
from bananas_prefork.examples.tasks import app as demo_app
from bananas_prefork.supervisor.loader import import_app
from tests.masters import ROOT

UNITS = ("bananas-prefork.service", "bananas-prefork@.service")
INSTALLED_BINARY = "/opt/bananas-prefork/venv/bin/bananas-prefork"
PRODUCTION = load_file(ROOT / "configs" / "production.toml")
Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value given (ExecReload= may repeat)."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            unit[section][key.strip()].append(value.strip())
    return unit


def _seconds(value: str) -> float:
    """systemd's time spans as the units here write them: "45", "45s", "2min"."""
    return parse_duration(value.replace("min", "m"))


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    # verify insists that ExecStart= exists: point it at this venv's script.
    binary = Path(sys.executable).with_name("bananas-prefork")
    assert binary.is_file(), binary
    text = (ROOT / "systemd" / name).read_text()
    assert INSTALLED_BINARY in text
    (tmp_path / name).write_text(text.replace(INSTALLED_BINARY, str(binary)))
    instance = name.replace("@.", "@demo.")  # a template is verified as an instance
    result = subprocess.run(["/usr/bin/systemd-analyze", "verify", str(tmp_path / instance)],
                            capture_output=True, text=True, timeout=60)
    # Problems with other units of this machine are not ours; every line about
    # ours is (verify exits 0 on unknown keys and bad values, so read the output).
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if name.split("@")[0] in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_has_the_settings_the_master_relies_on(name: str) -> None:
    service = parse_unit((ROOT / "systemd" / name).read_text())["Service"]

    def one(key: str) -> str:
        assert len(service[key]) == 1, (key, service[key])
        return service[key][0]

    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    config = "%i.toml" if "@" in name else "bananas-prefork.toml"
    assert one("ExecStart") == f"{INSTALLED_BINARY} start /etc/bananas-prefork/{config}"
    assert "/bin/kill -HUP $MAINPID" in service["ExecReload"]
    assert one("KillMode") == "mixed" and one("KillSignal") == "SIGTERM"
    # systemd must not KILL a master still inside its graceful-stop budget.
    budget = max(Deployment.shutdown_timeout, PRODUCTION.shutdown_timeout)
    assert _seconds(one("TimeoutStopSec")) > budget
    assert one("Restart") == "on-failure" and one("RestartSec")
    assert _seconds(one("WatchdogSec")) > 0
    assert one("User") == one("Group") == "bananas"
    assert one("WorkingDirectory").startswith("/var/lib/bananas-prefork")
    # production.toml's pidfile lives in the unit's runtime directory.
    assert PRODUCTION.pidfile is not None
    assert Path(PRODUCTION.pidfile).parent == Path("/run", one("RuntimeDirectory"))
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes",
                       "ReadWritePaths": "/var/lib/bananas-prefork"}.items():
        assert one(key) == value, key


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / "install"), *args],
                          capture_output=True, text=True, timeout=60)


def test_install_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    result = _install("--dry-run", "--prefix", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\\[", "[").replace("\\]", "]")  # printf %q escapes
    for step in ("system user bananas", f"-m venv {tmp_path}/opt/bananas-prefork/venv",
                 "pip install", f"{ROOT}[embedded]",
                 f"{ROOT}/configs/production.toml {tmp_path}/etc/bananas-prefork/"
                 "bananas-prefork.toml",
                 f"{tmp_path}/var/lib/bananas-prefork",
                 f"{ROOT}/systemd/bananas-prefork@.service {tmp_path}/etc/systemd/system/",
                 "daemon-reload", "systemctl enable --now bananas-prefork"):
        assert step in out, (step, out)
    assert list(tmp_path.iterdir()) == []
    assert "skipped check: it imports the application, never as root" in out


def test_install_never_imports_the_application_as_root() -> None:
    result = _install("--dry-run")
    assert result.returncode == 0, result.stderr
    checks = [line for line in result.stdout.splitlines()
              if line.startswith("+") and " check " in line]
    assert checks and all(line.startswith("+ runuser -u bananas -- env --chdir=") for line in
                          checks), checks
    assert result.stdout.index("==> 4.") < result.stdout.index(checks[0])


def test_install_dry_run_on_this_machine_changes_nothing() -> None:
    # Without --prefix it plans the real install (user, /opt, /etc, units), even
    # as root; a dry run only prints it.
    targets = [Path(p) for p in ("/opt/bananas-prefork", "/etc/bananas-prefork",
                                 "/var/lib/bananas-prefork",
                                 "/etc/systemd/system/bananas-prefork.service")]
    before = [path.exists() for path in targets]
    result = _install("--dry-run")
    assert result.returncode == 0, result.stderr
    headers = re.findall(r"^==> (\d)\.", result.stdout, flags=re.M)
    assert headers == ["1", "2", "3", "4", "5"], result.stdout
    assert [path.exists() for path in targets] == before


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument --bogus"),
    (["--config", "/nonexistent.toml"], "no such config file"),
])
def test_install_rejects_bad_arguments(args: list[str], message: str) -> None:
    result = _install("--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def _kubernetes_pools() -> dict[str, Deployment]:
    """Each Deployment's worker configuration: the ConfigMap plus its own env."""
    folder = ROOT / "deploy" / "kubernetes"
    data = (folder / "configmap.yaml").read_text().split("\ndata:\n", 1)[1]
    shared = {key: value.strip('"')
              for key, value in re.findall(r"^  ([A-Z_]+): (\S+)$", data, flags=re.M)}
    pools = {}
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        if "\nkind: Deployment\n" in text:
            own = re.findall(r'- name: ([A-Z_]+)\n\s+value: "([^"]*)"', text)
            assert own, path
            pools[path.stem] = load_environment({**shared, **dict(own)}, dotenv=None)
    return pools


def test_kubernetes_pools_are_valid_and_serve_every_task_at_every_priority() -> None:
    pools = _kubernetes_pools()
    assert set(pools) == {"worker-high", "worker-cpu", "worker-io", "scheduler"}
    import_app(pools["scheduler"])
    # Workers leave scheduling to the scheduler-only Deployment.
    assert [name for name, d in pools.items() if d.scheduler.enabled] == ["scheduler"]
    served = {(task, priority) for d in pools.values() for pool in d.pools if pool.runs_jobs
              for priority in pool.priorities for task in demo_app.tasks
              if pool.job_types == ("*",) or task in pool.job_types}
    assert served == {(task, p) for task in demo_app.tasks for p in PRIORITIES}
