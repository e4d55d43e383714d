"""The soak test's application: jobs that leave each kind of trace a finished job
can leave (nothing, a result, a retry then a dead letter), and nothing of their
own in Redis."""

from __future__ import annotations

import os

from bananas_prefork import App

app = App(namespace=os.environ.get("BANANAS_NAMESPACE", "bananas"))


@app.task
def nothing(n: int = 0) -> None:
    """Succeeds with nothing to keep: a note for done_ttl."""


@app.task
def answer(n: int = 0) -> dict[str, int]:
    """Succeeds with a result: kept for result_ttl."""
    return {"n": n}


@app.task(store_result=False)
def quiet(n: int = 0) -> str:
    """A result nobody reads: a note, like nothing()."""
    return "x" * 200


@app.task(max_retries=1, retry_backoff=0.05)
def fails(n: int = 0) -> None:
    """Fails twice (a retry in between): dead, capped by dead_max."""
    raise ValueError(f"soak failure {n}")
