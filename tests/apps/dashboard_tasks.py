"""The recorder app and two tasks for the dashboard's tests: one that fails until the
test fixes it (retried from the page, it then succeeds) and one whose error text and
traceback carry markup (the page must show it as text)."""

from __future__ import annotations

from tests.apps.recorder import _record, _redis, app

__all__ = ["app"]


def fixed_key(namespace: str) -> str:
    return "{%s}:test:fixed" % namespace


@app.task(max_retries=0)
def fixable(tag: str = "") -> str:
    """Fails until the test sets the fixed key."""
    _record()
    if not _redis().exists(fixed_key(app.namespace)):
        raise RuntimeError(f"not fixed yet {tag}")
    return f"fixed {tag}"


@app.task(max_retries=0)
def hostile(text: str) -> None:
    """Dies with ``text`` in its error and traceback."""
    _record()
    raise ValueError(text)
