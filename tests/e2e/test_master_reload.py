"""Live changes: HUP (the file), USR2 (the code), TTIN/TTOU (the size)."""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from bananas_prefork import App
from tests.helpers import wait_until
from tests.masters import MasterFactory, toml

POOLS = """
[pools.keep]
concurrency = 1

[pools.change]
concurrency = 1

[pools.drop]
concurrency = 1
"""

POOLS_AFTER = """
[pools.keep]
concurrency = 1

[pools.change]
concurrency = 2

[pools.added]
mode = "job-specialized"
job_types = ["send_email"]
concurrency = 1
"""


def test_hup_adds_removes_and_replaces_pools_and_keeps_the_rest(
        masters: MasterFactory, app: App) -> None:
    master = masters(toml(POOLS))
    before = master.wait_children({"keep": 1, "change": 1, "drop": 1, "scheduler": 1})
    master.config_path.write_text(toml(POOLS_AFTER))
    master.send(signal.SIGHUP)
    master.wait_notify("RELOADING=1")
    master.wait_notify("READY=1")
    # the old generation of "change" runs until the new one is up: wait for it to go
    wait_until(lambda: not set(master.children().get("change", [])) & set(before["change"]),
               timeout=15, message="the old generation of pool change to stop")
    after = master.wait_children({"keep": 1, "change": 2, "added": 1, "scheduler": 1})
    assert after["keep"] == before["keep"]
    assert after["scheduler"] == before["scheduler"]
    job_id = app.enqueue("send_email", args=["x"])
    wait_until(lambda: app.job(job_id).state == "succeeded")


def test_hup_with_an_invalid_file_keeps_the_running_config(masters: MasterFactory) -> None:
    master = masters(toml(POOLS))
    before = master.wait_children({"keep": 1, "change": 1, "drop": 1, "scheduler": 1})
    master.config_path.write_text(toml(POOLS) + "\n[pools.keep\n")
    master.send(signal.SIGHUP)
    master.wait_notify("RELOADING=1")
    master.wait_notify("READY=1")
    assert "reload failed; the running configuration stays" in master.read_log()
    assert "invalid TOML" in master.read_log()
    master.config_path.write_text(toml('[pools.keep]\nconcurency = 1\n'))
    master.send(signal.SIGHUP)
    master.wait_notify("RELOADING=1")
    master.wait_notify("READY=1")
    assert "did you mean 'concurrency'" in master.read_log()
    assert master.children() == before


def test_hup_with_a_new_app_module_that_fails_to_import_keeps_running(
        masters: MasterFactory) -> None:
    master = masters(toml(POOLS))
    before = master.wait_children({"keep": 1, "change": 1, "drop": 1, "scheduler": 1})
    master.config_path.write_text(toml(POOLS, app="tests.apps.nonexistent:app"))
    master.send(signal.SIGHUP)
    master.wait_notify("READY=1")
    assert "cannot import 'tests.apps.nonexistent'" in master.read_log()
    assert master.children() == before


DEPLOYABLE = '''
from bananas_prefork import App

app = App()
VERSION = {version!r}


@app.task
def version() -> str:
    return VERSION
'''


def test_usr2_rolls_every_child_onto_fresh_code(masters: MasterFactory, app: App,
                                                tmp_path: Path) -> None:
    code = tmp_path / "deployable.py"
    code.write_text(DEPLOYABLE.format(version="one"))
    master = masters(toml("[pools.a]\nconcurrency = 2\n\n[pools.b]\nconcurrency = 1\n",
                          app="deployable:app", namespace=app.namespace),
                     env={"PYTHONDONTWRITEBYTECODE": "1"}, cwd=tmp_path)
    before = master.wait_children({"a": 2, "b": 1, "scheduler": 1})
    first = app.enqueue("version")
    wait_until(lambda: app.job(first).state == "succeeded")
    assert app.job(first).result == "one"
    code.write_text(DEPLOYABLE.format(version="two, deployed"))
    master.send(signal.SIGUSR2)
    master.wait_notify("RELOADING=1")

    def all_replaced() -> bool:
        kids = master.children()
        return {k: len(v) for k, v in kids.items()} == {"a": 2, "b": 1, "scheduler": 1} and \
            not any(set(kids[k]) & set(before[k]) for k in kids)

    wait_until(all_replaced, timeout=30)
    second = app.enqueue("version")
    wait_until(lambda: app.job(second).state == "succeeded")
    assert app.job(second).result == "two, deployed"
    log = master.read_log()
    assert log.index("pool a: generation") < log.index("pool b: generation")


def test_usr2_with_broken_code_keeps_the_old_code(masters: MasterFactory, app: App,
                                                  tmp_path: Path) -> None:
    code = tmp_path / "deployable.py"
    code.write_text(DEPLOYABLE.format(version="one"))
    master = masters(toml("[pools.a]\nconcurrency = 1\n", app="deployable:app",
                          namespace=app.namespace),
                     env={"PYTHONDONTWRITEBYTECODE": "1"}, cwd=tmp_path)
    before = master.wait_children({"a": 1, "scheduler": 1})
    code.write_text("this is not python\n")
    master.send(signal.SIGUSR2)
    master.wait_notify("READY=1")
    assert "code reload failed; the running code stays" in master.read_log()
    assert master.children() == before
    job_id = app.enqueue("version")
    wait_until(lambda: app.job(job_id).state == "succeeded")
    assert app.job(job_id).result == "one"


def test_ttin_and_ttou_scale_every_pool_by_one(masters: MasterFactory) -> None:
    master = masters(toml("[pools.a]\nconcurrency = 2\n\n[pools.b]\nconcurrency = 1\n"))
    master.wait_children({"a": 2, "b": 1, "scheduler": 1})
    master.send(signal.SIGTTIN)
    master.wait_children({"a": 3, "b": 2, "scheduler": 1})
    master.send(signal.SIGTTOU)  # (a signal sent twice at once arrives once: wait between)
    master.wait_children({"a": 2, "b": 1, "scheduler": 1})
    master.send(signal.SIGTTOU)
    master.wait_children({"a": 1, "b": 1, "scheduler": 1})
    master.send(signal.SIGTTOU)  # never below one process per pool
    master.wait_children({"a": 1, "b": 1, "scheduler": 1})


def test_hup_keeps_nothing_running_that_was_removed(masters: MasterFactory,
                                                    rclient: redis.Redis) -> None:
    master = masters(toml(POOLS))
    master.wait_children({"keep": 1, "change": 1, "drop": 1, "scheduler": 1})
    master.config_path.write_text(toml("[pools.keep]\nconcurrency = 1\n[scheduler]\n"
                                       "enabled = false\n"))
    master.send(signal.SIGHUP)
    master.wait_children({"keep": 1})
