"""The deployment file and the environment: typed results and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bananas_prefork.core.config import ConfigError, load_environment, load_file
from bananas_prefork.core.settings import boolean

FULL = '''
app = "tests.apps.recorder:app"
redis_url = "redis://127.0.0.1:6379/0"
namespace = "shop"
shutdown_timeout = "45s"
pidfile = "/run/bananas/bananas.pid"

[scheduler]
enabled = true
interval = "500ms"

[[periodic]]
task = "generate_report"
cron = "*/5 * * * *"
priority = "low"
args = [1, "x"]

[[periodic]]
name = "heartbeat"
task = "record"
every = "30s"

[pools.high]
mode = "specialized"
priorities = ["high"]
concurrency = 50
threads = 10
max_jobs_per_child = 10000
max_memory_mb = 512
job_timeout = "5m"

[pools.io]
mode = "job-specialized"
job_types = ["fetch_data", "send_email"]
concurrency = 20
threads = 20

[pools.tiny]
mode = "thin"
concurrency = 4
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pools.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_file(write(tmp_path, text))
    return info.value


def test_full_file_parses_into_typed_frozen_objects(tmp_path: Path) -> None:
    d = load_file(write(tmp_path, FULL))
    assert (d.app, d.namespace, d.shutdown_timeout, d.scheduler.interval) == (
        "tests.apps.recorder:app", "shop", 45.0, 0.5)
    high, io, tiny = d.pools
    assert (high.name, high.priorities, high.processes, high.threads, high.job_timeout) == (
        "high", ("high",), 5, 10, 300.0)
    assert io.job_types == ("fetch_data", "send_email") and io.processes == 1
    assert (tiny.processes, tiny.threads) == (1, 4)  # thin: one process, a thread per job
    assert [p.entry_name for p in d.periodic] == ["generate_report", "heartbeat"]
    assert d.periodic[0].args == (1, "x") and d.periodic[1].every == 30.0
    with pytest.raises(AttributeError):
        d.app = "other"  # type: ignore[misc]


def test_defaults_without_pools_give_one_default_pool(tmp_path: Path) -> None:
    d = load_file(write(tmp_path, 'app = "x:app"\n'))
    (pool,) = d.pools
    assert (pool.name, pool.mode, pool.concurrency, pool.threads, pool.priorities,
            pool.job_types) == ("default", "default", 10, 1, ("high", "normal", "low"), ("*",))
    assert (d.scheduler.enabled, d.scheduler.interval, d.namespace) == (True, 1.0, None)


@pytest.mark.parametrize("text, line, fragment", [
    ('app = "x:app"\n\n[pools.a]\nconcurrency = \n', 4, "invalid TOML"),
    ('app = "x:app"\n[pools.a\n', 2, "invalid TOML"),
])
def test_syntax_errors_name_file_and_line(tmp_path: Path, text: str, line: int,
                                          fragment: str) -> None:
    err = error_of(tmp_path, text)
    assert err.line == line and fragment in str(err)
    assert str(err).startswith(f"{tmp_path / 'pools.toml'}:{line}: ")


@pytest.mark.parametrize("text, key, line, fragment", [
    ('app = "x:app"\n[pools.a]\nconcurency = 5\n', "pools.a.concurency", 3,
     "did you mean 'concurrency'"),
    ('app = "x:app"\nshutdown_timout = "1s"\n', "shutdown_timout", 2,
     "did you mean 'shutdown_timeout'"),
    ('app = "x:app"\n[scheduler]\ninterval = "1s"\nenable = false\n', "scheduler.enable", 4,
     "did you mean 'enabled'"),
    ('app = "x:app"\n[[periodic]]\ntask = "a"\nevery = "1m"\ncorn = "x"\n', "periodic[0].corn",
     5, "did you mean 'cron'"),
    ('app = "x:app"\n[pool.a]\nconcurrency = 1\n', "pool", 2, "did you mean 'pools'"),
])
def test_unknown_keys_suggest_the_closest_valid_one(tmp_path: Path, text: str, key: str,
                                                    line: int, fragment: str) -> None:
    err = error_of(tmp_path, text)
    assert (err.key, err.line) == (key, line) and fragment in err.message


@pytest.mark.parametrize("text, key, fragment", [
    ('app = "x:app"\n[pools.a]\nconcurrency = "ten"\n', "pools.a.concurrency",
     "must be a whole number"),
    ('app = "x:app"\n[pools.a]\nconcurrency = 0\n', "pools.a.concurrency", "must be >= 1"),
    ('app = "x:app"\n[pools.a]\nmode = "turbo"\n', "pools.a.mode",
     "must be one of thin, default, specialized, job-specialized, scheduler-only"),
    ('app = "x:app"\n[pools.a]\npriorities = ["urgent"]\n', "pools.a.priorities",
     "unknown priority 'urgent'"),
    ('app = "x:app"\n[pools.a]\njob_timeout = "soon"\n', "pools.a.job_timeout",
     "not a duration"),
    ('app = "x:app"\nshutdown_timeout = -1\n', "shutdown_timeout", "not negative"),
    ('app = "x:app"\n[scheduler]\nenabled = "maybe"\n', "scheduler.enabled", "true or false"),
    ('app = "x:app"\n[pools.a]\nmode = "job-specialized"\n', "pools.a.job_types",
     "needs the job types"),
    ('app = "x:app"\n[pools.a]\nmode = "default"\njob_types = ["x"]\n', "pools.a.job_types",
     "job-specialized"),
    ('app = "x:app"\n[pools.a]\nmode = "thin"\nconcurrency = 11\n', "pools.a.concurrency",
     "1 to 10"),
    ('app = "x:app"\n[pools.a]\nmode = "thin"\npriorities = ["high"]\n', "pools.a.priorities",
     "every priority"),
    ('app = "x:app"\n[pools.a]\nconcurrency = 2\nthreads = 4\n', "pools.a.threads",
     "cannot exceed concurrency"),
    ('app = "x:app"\n[pools.a]\nmode = "thin"\nconcurrency = 2\nthreads = 4\n',
     "pools.a.threads", "cannot exceed concurrency"),
    ('app = "x:app"\n[pools.a]\nmax_memory_mb = 500\nmax_memory_mb_hard = 400\n',
     "pools.a.max_memory_mb_hard", "must be above max_memory_mb"),
    ('app = "x:app"\n[pools]\n', "pools", "is empty"),
    ('app = "x:app"\n[[periodic]]\ntask = "a"\n', "periodic[0]", "cron"),
    ('app = "x:app"\n[[periodic]]\ntask = "a"\ncron = "* *"\n', "periodic[0].cron",
     "not a valid cron expression"),
    ('app = "x:app"\n[[periodic]]\ntask = "a"\nevery = "1m"\n[[periodic]]\ntask = "a"\n'
     'every = "2m"\n', "periodic[1]", "a second entry named 'a'"),
    ('redis_url = "redis://x"\n', "app", "is required"),
    ('app = "x:app"\nredis_url = "http://x"\n', "redis_url", "must start with redis://"),
    ('app = "x:app"\nredis_url = "redis://h:port/0"\n', "redis_url", "Port could not be cast"),
    ('app = "x:app"\nredis_url = "redis://h:99999/0"\n', "redis_url", "Port out of range"),
    ('app = "x:app"\nnamespace = "bad ns{"\n', "namespace", "invalid namespace"),
    ('app = "x:app"\nredis_url = "redis://h:1/notadb"\n', "redis_url", "database is a number"),
    ('app = "x:app"\nnamespace = ""\n', "namespace", "non-empty"),
    ('app = "x:app"\nredis_url = ""\n', "redis_url", "non-empty"),
    ('app = "x:app"\n[scheduler]\nenabled = false\n[pools.s]\nmode = "scheduler-only"\n',
     "scheduler.enabled", "nothing to run"),
    ('app = "x:app"\n[pools.a]\npriorities = "high"\n', "pools.a.priorities",
     'must be a list, e.g. ["high", "normal"]'),
    ('app = "x:app"\n[pools.a]\nmode = "job-specialized"\njob_types = "a,b"\n',
     "pools.a.job_types", "must be a list"),
])
def test_bad_values_say_what_is_allowed(tmp_path: Path, text: str, key: str,
                                        fragment: str) -> None:
    err = error_of(tmp_path, text)
    assert err.key == key and fragment in err.message, str(err)
    if err.line is not None:
        assert str(err).startswith(f"{tmp_path / 'pools.toml'}:{err.line}: {key}: ")


def test_the_environment_keeps_its_comma_lists(tmp_path: Path) -> None:
    d = load_environment({"BANANAS_APP": "x:app", "WORKER_MODE": "job-specialized",
                          "WORKER_PRIORITIES": "high, low", "WORKER_JOB_TYPES": "a,b"},
                         dotenv=None)
    assert d.pools[0].priorities == ("high", "low") and d.pools[0].job_types == ("a", "b")


def test_concurrency_caps_the_jobs_run_at_once(tmp_path: Path) -> None:
    d = load_file(write(tmp_path, 'app = "x:app"\n[pools.a]\nconcurrency = 3\nthreads = 2\n'))
    (pool,) = d.pools
    assert pool.processes == 2 and [pool.threads_of(i) for i in range(3)] == [2, 1, 2]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_file(tmp_path / "missing.toml")


def test_environment_builds_one_pool_named_after_the_mode(tmp_path: Path) -> None:
    d = load_environment({"BANANAS_APP": "x:app", "WORKER_MODE": "job-specialized",
                          "WORKER_CONCURRENCY": "8", "WORKER_THREADS": "4",
                          "WORKER_JOB_TYPES": "fetch_data, send_email",
                          "SCHEDULER_INTERVAL": "250ms", "ENABLE_SCHEDULER": "No",
                          "REDIS_URL": "redis://h:1/0"}, dotenv=None)
    (pool,) = d.pools
    assert (pool.name, pool.processes, pool.threads, pool.job_types) == (
        "job-specialized", 2, 4, ("fetch_data", "send_email"))
    assert (d.scheduler.interval, d.scheduler.enabled, d.redis_url, d.source) == (
        0.25, False, "redis://h:1/0", "environment")


def test_environment_defaults_match_the_design() -> None:
    d = load_environment({"BANANAS_APP": "x:app"}, dotenv=None)
    (pool,) = d.pools
    assert (pool.name, pool.mode, pool.concurrency, pool.priorities, pool.job_types) == (
        "default", "default", 10, ("high", "normal", "low"), ("*",))
    assert (d.scheduler.interval, d.scheduler.enabled) == (1.0, True)


def test_real_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BANANAS_APP=from.dotenv:app\nWORKER_CONCURRENCY=3\nWORKER_MODE=thin\n")
    d = load_environment({"WORKER_CONCURRENCY": "5"}, dotenv=dotenv)
    assert d.app == "from.dotenv:app" and d.pools[0].concurrency == 5
    assert d.pools[0].mode == "thin" and d.pools[0].threads == 5


@pytest.mark.parametrize("environ, variable, fragment", [
    ({}, "BANANAS_APP", "is required"),
    ({"BANANAS_APP": "x:app", "WORKER_CONCURRENCY": "many"}, "WORKER_CONCURRENCY",
     "whole number"),
    ({"BANANAS_APP": "x:app", "WORKER_MODE": "job-specialized"}, "WORKER_JOB_TYPES",
     "needs the job types"),
    ({"BANANAS_APP": "x:app", "ENABLE_SCHEDULER": "perhaps"}, "ENABLE_SCHEDULER", "true or"),
    ({"BANANAS_APP": "x:app", "WORKER_PRIORITIES": "high,urgent"}, "WORKER_PRIORITIES",
     "unknown priority"),
])
def test_environment_errors_name_the_variable(environ: dict[str, str], variable: str,
                                              fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_environment(environ, dotenv=None)
    assert info.value.key == variable and fragment in info.value.message
    assert str(info.value).startswith(f"environment: {variable}: ")


@pytest.mark.parametrize("text, value", [
    ("true", True), ("FALSE", False), ("1", True), ("0", False), ("Yes", True), ("no", False),
    ("ON", True), ("off", False),
])
def test_booleans_accept_the_usual_spellings(text: str, value: bool) -> None:
    assert boolean(text) is value



@pytest.mark.parametrize("environ, variable", [
    ({"BANANAS_REDIS_URL": "notaurl"}, "BANANAS_REDIS_URL"),
    ({"BANANAS_REDIS_URL": "", "REDIS_URL": "ftp://x"}, "REDIS_URL"),
    ({"BANANAS_NAMESPACE": "a b"}, "BANANAS_NAMESPACE"),
])
def test_bad_connection_settings_in_the_environment_name_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str],
        variable: str) -> None:
    for name in ("BANANAS_REDIS_URL", "REDIS_URL", "BANANAS_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=f"^environment: {variable}: "):
        load_environment({"BANANAS_APP": "x:app", **environ}, dotenv=None)
    for name, value in environ.items():  # a file that leaves them to the environment
        monkeypatch.setenv(name, value)
    err = error_of(tmp_path, 'app = "x:app"\n')
    assert (err.source, err.key) == ("environment", variable), str(err)
    if variable == "BANANAS_NAMESPACE":  # the App() in the app module would read it
        err = error_of(tmp_path, 'app = "x:app"\nnamespace = "fine"\n')
        assert (err.source, err.key) == ("environment", variable), str(err)
