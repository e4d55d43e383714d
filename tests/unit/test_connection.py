"""Redis URLs: every form parsed, validated and redacted; where the URL comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from bananas_prefork.core import connection
from bananas_prefork.core.config import ConfigError, from_mapping, load_environment
from bananas_prefork.core.connection import (
    ASKED,
    FIRST_RUN,
    embedded_reason,
    parse_sentinel,
    redact,
    resolve,
    url_problem,
)


@pytest.mark.parametrize("url, shown", [
    ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
    ("redis://user:p%40ss@h:1/0", "redis://user:***@h:1/0"),
    ("redis://user:p@ss@h:1/0", "redis://user:***@h:1/0"),  # an unescaped @ in the password
    ("rediss://u:pw@h:1/0?ssl_ca_certs=/ca.crt&password=pw2",
     "rediss://u:***@h:1/0?ssl_ca_certs=/ca.crt&password=***"),
    ("unix://:pw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ("redis+sentinel://u:pw@h1:26379,h2:26380/mymaster/0?sentinel_password=spw&ssl=true",
     "redis+sentinel://u:***@h1:26379,h2:26380/mymaster/0?sentinel_password=***&ssl=true"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("--redis=redis://:pw@h/0", "--redis=redis://:***@h/0"),
])
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_sentinel_url_is_parsed_completely() -> None:
    parsed = parse_sentinel("redis+sentinel://app:p%3Aw@10.0.0.1:26379,10.0.0.2,[::1]:5000/"
                            "orders/3?sentinel_password=s&ssl=true&ssl_ca_certs=/ca.crt")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 5000))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == \
        ("orders", 3, "app", "p:w")
    assert parsed.option("sentinel_password") == "s"
    assert parsed.tls == {"ssl": True, "ssl_ca_certs": "/ca.crt"}
    assert parse_sentinel("redis+sentinel://h/m").tls == {}


@pytest.mark.parametrize("url, problem", [
    ("redis+sentinel://h:26379/", "name the monitored primary"),
    ("redis+sentinel://h:port/m", "a Sentinel port is a number"),
    ("redis+sentinel://h/m/zero", "the database is a number"),
    ("redis+sentinel://h/m?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
    ("redis+sentinel://:secret@h/m?ssl_cert_reqs=maybe", "ssl_cert_reqs is one of"),
    ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs is one of"),
    ("rediss://:secret@h/0?ssl_ca_cert=/ca.crt", "did you mean 'ssl_ca_certs'?"),
    ("redis://:secret@h/0?ssl_ca_certs=/ca.crt", "a TLS option: use a rediss:// URL"),
    ("http://:secret@h/0", "must start with redis://"),
])
def test_url_problems_are_named_without_the_password(url: str, problem: str) -> None:
    found = url_problem(url)
    assert found is not None and problem in found and "secret" not in found


def test_valid_urls_of_every_form() -> None:
    for url in ("redis://h:1/0", "rediss://u:p@h:1/0?ssl_cert_reqs=required&ssl_ca_certs=/c",
                "redis://h/0?socket_timeout=5&health_check_interval=10&protocol=3",
                "rediss://h/0?ssl_certfile=/a&ssl_keyfile=/b&ssl_check_hostname=false",
                "unix:///run/r.sock?db=1", "redis+sentinel://:p@a:1,b:2/m/0?ssl=1"):
        assert url_problem(url) is None, url


def test_the_url_file_variable_comes_after_bananas_redis_url_and_before_redis_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "url").write_text("redis://:from-file@h:1/0\n")
    monkeypatch.setenv("REDIS_URL", "redis://generic:1/0")
    monkeypatch.setenv("BANANAS_REDIS_URL_FILE", str(tmp_path / "url"))
    monkeypatch.delenv("BANANAS_REDIS_URL", raising=False)
    assert resolve() == "redis://:from-file@h:1/0"
    assert load_environment({"BANANAS_APP": "x:app", "REDIS_URL": "redis://generic:1/0",
                             "BANANAS_REDIS_URL_FILE": str(tmp_path / "url")},
                            dotenv=None).redis_url == "redis://:from-file@h:1/0"
    monkeypatch.setenv("BANANAS_REDIS_URL", "redis://explicit:1/0")
    assert resolve() == "redis://explicit:1/0"
    monkeypatch.delenv("BANANAS_REDIS_URL")
    monkeypatch.setenv("BANANAS_REDIS_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="BANANAS_REDIS_URL_FILE: cannot read"):
        resolve()


def test_redis_url_file_in_a_deployment(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis+sentinel://:pw@s1:26379/m/0\n")
    deployment = from_mapping({"app": "x:app", "redis_url_file": str(tmp_path / "url")}, "d")
    assert deployment.redis_url == "redis+sentinel://:pw@s1:26379/m/0"
    with pytest.raises(ConfigError, match="give redis_url or redis_url_file, not both"):
        from_mapping({"app": "x:app", "redis_url": "redis://h/0",
                      "redis_url_file": str(tmp_path / "url")}, "d")
    (tmp_path / "bad").write_text("http://:pw@h/0\n")
    with pytest.raises(ConfigError, match="redis_url_file: must start") as raised:
        from_mapping({"app": "x:app", "redis_url_file": str(tmp_path / "bad")}, "d")
    assert "pw" not in str(raised.value)


@pytest.mark.parametrize("configured, env, refused, reason", [
    ("embedded", {}, False, ASKED),
    ("redis://h/0", {}, True, None),
    (None, {"REDIS_URL": "embedded"}, False, ASKED),
    (None, {"REDIS_URL": "redis://h/0"}, True, None),
    (None, {}, True, FIRST_RUN),  # a laptop with nothing: the quick start
    (None, {}, False, None),  # something listens on 6379, even slowly: wait for it
    (None, {"INVOCATION_ID": "x"}, True, None),  # systemd: never a private server
    (None, {"NOTIFY_SOCKET": "/run/n"}, True, None),
])
def test_when_a_master_runs_an_embedded_server(monkeypatch: pytest.MonkeyPatch,
                                               configured: str | None, env: dict[str, str],
                                               refused: bool, reason: str | None) -> None:
    for name in ("BANANAS_REDIS_URL", "BANANAS_REDIS_URL_FILE", "REDIS_URL", "INVOCATION_ID",
                 "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(connection.embedded, "refused", lambda url: refused)
    assert embedded_reason(configured) == reason
