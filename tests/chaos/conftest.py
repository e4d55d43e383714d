"""Fixtures of the chaos suite: runs that clean up after themselves (the ``chaos``
marker comes from the folder, as every layer's does).

The profile comes from ``$BANANAS_CHAOS_PROFILE`` (``short``, the default, in the
normal test run; ``full`` from ``scripts/chaos``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import ChaosRun, current_profile


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Callable[..., ChaosRun]]:
    """Make a ``ChaosRun``; every process it started is killed at teardown, pass or fail."""
    runs: list[ChaosRun] = []

    def make(name: str, **options: Any) -> ChaosRun:
        run = ChaosRun(name, tmp_path, current_profile(), **options)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()
