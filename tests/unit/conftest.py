"""The unit layer's fixtures: the operating system faked under the supervisor."""

from __future__ import annotations

import pytest

from tests.unit.fake_os import FakeOS, install


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch) -> FakeOS:
    return install(monkeypatch)
