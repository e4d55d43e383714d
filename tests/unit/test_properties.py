"""Properties: whatever a user writes or passes, the answer is a valid result or the
documented error (ConfigError for a deployment, ValueError for a job), never another
exception."""

from __future__ import annotations

import string
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bananas_prefork import App
from bananas_prefork.core.config import (
    AlertsConfig,
    ConfigError,
    Deployment,
    PeriodicConfig,
    PoolConfig,
    SchedulerConfig,
    from_mapping,
    load_file,
)
from bananas_prefork.core.settings import declared

UNREACHABLE = "redis://127.0.0.1:1/0"

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["1s", "500ms", "5m", "-1s", "1x", "high", "*", "thin",
                                     "embedded", "redis://h:1/0", "redis://h:p/0", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)


def keys_of(cls: type) -> list[str]:
    return [f.name for f in declared(cls)]


def table(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """A table with the settings' own keys (and a stray one now and then)."""
    known = st.sampled_from(keys_of(cls))
    return st.dictionaries(st.one_of(known, known, st.text(max_size=10)), values, max_size=6)


deployments = st.fixed_dictionaries(
    {"app": st.one_of(st.just("x:app"), values)},
    optional={
        **{key: values for key in keys_of(Deployment) if key != "app"},
        "scheduler": table(SchedulerConfig),
        "alerts": table(AlertsConfig),
        "periodic": st.one_of(st.lists(table(PeriodicConfig), max_size=3), values),
        "pools": st.one_of(st.dictionaries(
            st.one_of(st.sampled_from(["a", "high", "io"]), st.text(max_size=8)),
            table(PoolConfig), max_size=3), values),
    })


@settings(max_examples=150, deadline=None)
@given(deployments)
def test_any_deployment_is_valid_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        deployment = from_mapping(data, "pools.toml")
    except ConfigError as exc:
        assert exc.source == "pools.toml" and exc.message
    else:
        assert deployment.pools and all(p.concurrency >= 1 for p in deployment.pools)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=string.printable + "éü\x00", max_size=200))
def test_any_file_text_is_valid_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pools.toml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    try:
        load_file(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


app = App(UNREACHABLE, namespace="props")
json_like = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(),
                                   st.floats(allow_nan=True, allow_infinity=True),
                                   st.text(max_size=10)),
                         lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                 st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3)),
                         max_leaves=10)
anything = st.one_of(json_like, st.sets(st.integers(), max_size=2), st.binary(max_size=5),
                     st.builds(object), st.tuples(st.integers()))


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.text(max_size=12), st.sampled_from(["send_email", "a.b:c"])),
       args=st.one_of(st.lists(anything, max_size=3), anything),
       kwargs=st.one_of(st.dictionaries(st.one_of(st.text(max_size=5), st.integers()),
                                        anything, max_size=3), anything),
       priority=st.one_of(st.none(), st.sampled_from(["high", "normal", "low", "urgent"]),
                          anything),
       delay=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(-5, 10**12), st.text(max_size=6),
                       st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=2))),
       at=st.one_of(st.none(), st.datetimes(), st.text(max_size=5)),
       job_id=st.one_of(st.none(), st.text(max_size=210)),
       max_retries=st.one_of(st.none(), st.integers(-3, 10), anything),
       timeout=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=5)))
def test_any_job_is_encoded_or_refused_with_a_value_error(
        name: Any, args: Any, kwargs: Any, priority: Any, delay: Any, at: Any, job_id: Any,
        max_retries: Any, timeout: Any) -> None:
    try:
        job = app.new_job(name, args, kwargs, priority=priority, delay=delay, at=at,
                          job_id=job_id, max_retries=max_retries, timeout=timeout)
    except ValueError as exc:
        assert str(exc)
    else:
        assert job.priority in ("high", "normal", "low")
        assert job.id.isprintable() and " " not in job.id and 1 <= len(job.id) <= 200
        if job.when.startswith("@"):
            assert isinstance(at, datetime)
