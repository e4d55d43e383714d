"""The command line: exit codes and one-line errors, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bananas_prefork import App
from tests.masters import ROOT


def run(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "bananas_prefork", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_check_accepts_a_valid_file(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('app = "tests.apps.recorder:app"\n[pools.a]\n'
                                     'concurrency = 4\nthreads = 2\n')
    result = run("check", "p.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "p.toml: OK" in result.stdout and "pool a: default, 2 process(es)" in result.stdout


@pytest.mark.parametrize("text, fragments", [
    ('app = "tests.apps.recorder:app"\n[pools.a]\nconcurrency = \n',
     ["p.toml:3:", "invalid TOML"]),
    ('app = "tests.apps.recorder:app"\n[pools.a]\nconcurency = 4\n',
     ["p.toml:3:", "pools.a.concurency", "did you mean 'concurrency'"]),
    ('app = "tests.apps.recorder:app"\n[pools.a]\nmode = "fast"\n',
     ["p.toml:3:", "pools.a.mode", "must be one of"]),
    ('app = "tests.apps.nowhere:app"\n',
     ["p.toml:1:", "app", "cannot import 'tests.apps.nowhere'", "ModuleNotFoundError"]),
    ('app = "tests.apps.recorder:missing"\n', ["p.toml:1:", "is not an App"]),
])
def test_check_and_start_reject_bad_files_with_one_line(tmp_path: Path, text: str,
                                                        fragments: list[str]) -> None:
    (tmp_path / "p.toml").write_text(text)
    one_line_error(run("check", "p.toml", cwd=tmp_path), 2, *fragments)
    one_line_error(run("start", "p.toml", cwd=tmp_path), 2, *fragments)


def test_start_from_a_broken_environment_exits_2(tmp_path: Path) -> None:
    env = {"BANANAS_APP": "tests.apps.recorder:app", "WORKER_CONCURRENCY": "lots"}
    one_line_error(run("start", cwd=tmp_path, env=env), 2, "environment: WORKER_CONCURRENCY")
    one_line_error(run("start", cwd=tmp_path, env={"BANANAS_APP": ""}), 2, "BANANAS_APP")


def test_enqueue_prints_the_id(tmp_path: Path, redis_url: str, namespace: str) -> None:
    result = run("enqueue", "send_email", "--args", '["a@example.com"]', "--kwargs",
                 '{"subject": "hi"}', "--priority", "high", "--delay", "1m",
                 "--redis", redis_url, "--namespace", namespace, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    info = App(redis_url, namespace=namespace).job(job_id)
    assert (info.state, info.priority, info.args, info.kwargs) == (
        "scheduled", "high", ["a@example.com"], {"subject": "hi"})


def test_enqueue_with_the_deployment_file_applies_task_defaults(
        tmp_path: Path, redis_url: str, namespace: str) -> None:
    app = App(redis_url, namespace=namespace)
    (tmp_path / "p.toml").write_text(f'app = "tests.apps.recorder:app"\nredis_url = '
                                     f'"{redis_url}"\nnamespace = "{namespace}"\n')
    (tmp_path / "gone.toml").write_text(f'app = "tests.apps.gone:app"\nredis_url = '
                                        f'"{redis_url}"\nnamespace = "{namespace}"\n')

    def priority_of(*extra: str, config: str = "p.toml") -> str:
        result = run("enqueue", "urgent", "--config", config, *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        info = app.job(result.stdout.strip())
        assert info is not None
        return info.priority

    assert priority_of() == "high"  # urgent's own default, known from the app
    assert priority_of("--priority", "low") == "low"
    assert priority_of(config="gone.toml") == "normal"  # app not importable here: by name
    warned = run("enqueue", "urgent", "--config", "gone.toml", cwd=tmp_path)
    assert "warning: task defaults not applied" in warned.stderr
    assert len(warned.stdout.split()) == 1


@pytest.mark.parametrize("args, fragment", [
    (["--args", "[1"], "--args: not valid JSON"),
    (["--args", '{"a": 1}'], "--args: must be a JSON array"),
    (["--kwargs", "[]"], "--kwargs: must be a JSON object"),
    (["--priority", "urgent"], "unknown priority"),
    (["--delay", "soon"], "bad delay"),
])
def test_enqueue_rejects_bad_input(tmp_path: Path, redis_url: str, args: list[str],
                                   fragment: str) -> None:
    one_line_error(run("enqueue", "send_email", *args, "--redis", redis_url, cwd=tmp_path), 2,
                   fragment)


@pytest.mark.parametrize("command", [["enqueue", "send_email"], ["status"], ["job", "x"],
                                     ["dead", "list"]])
@pytest.mark.parametrize("options, env, fragment", [
    (["--redis", "notaurl"], {}, "--redis: must start with redis://"),
    (["--redis", "redis://h:99999/0"], {}, "--redis: Port out of range"),
    ([], {"BANANAS_REDIS_URL": "notaurl"}, "BANANAS_REDIS_URL: must start with redis://"),
    (["--redis", "redis://127.0.0.1:1/0", "--namespace", "bad ns{"], {},
     "--namespace: invalid namespace"),
    (["--redis", ""], {}, "--redis: must not be empty"),
    (["--redis", "redis://127.0.0.1:1/0", "--namespace", ""], {}, "--namespace: must not be"),
])
def test_bad_connection_options_are_one_line(tmp_path: Path, command: list[str],
                                             options: list[str], env: dict[str, str],
                                             fragment: str) -> None:
    one_line_error(run(*command, *options, cwd=tmp_path, env=env), 2, fragment)


def test_a_file_on_the_embedded_redis_never_falls_back_to_another(tmp_path: Path) -> None:
    (tmp_path / "e.toml").write_text('app = "tests.apps.recorder:app"\nredis_url = "embedded"\n')
    for command in (["enqueue", "send_email"], ["status"]):
        option = "--config" if command[0] == "enqueue" else None
        args = [*command, option, "e.toml"] if option else [*command, "e.toml"]
        one_line_error(run(*args, cwd=tmp_path), 1, "no embedded Redis runs")


def test_enqueue_without_redis_exits_1(tmp_path: Path) -> None:
    result = run("enqueue", "send_email", "--redis", "redis://127.0.0.1:1/0", cwd=tmp_path)
    assert result.returncode == 1 and "cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr
