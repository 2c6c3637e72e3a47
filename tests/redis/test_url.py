"""Where the client connects: URL parsing and the fallback to separate settings."""

from __future__ import annotations

import pytest

from flowqd.config import RedisConfig
from flowqd.errors import ConfigError
from flowqd.redis import Target, parse_target


def test_full_url() -> None:
    target = parse_target(RedisConfig(url="redis://alice:s3cret@redis.example:6380/2"))
    assert target == Target("redis.example", 6380, "alice", "s3cret", 2, tls=False)
    assert target.address == "redis.example:6380"
    assert "s3cret" not in repr(target)


def test_rediss_turns_tls_on_and_defaults_port() -> None:
    target = parse_target(RedisConfig(url="rediss://redis.example"))
    assert (target.host, target.port, target.db, target.tls) == ("redis.example", 6379, 0, True)


def test_password_only_and_percent_encoding() -> None:
    target = parse_target(RedisConfig(url="redis://:p%40ss%3Aword@h/3"))
    assert (target.username, target.password, target.db) == (None, "p@ss:word", 3)


def test_ipv6_host() -> None:
    target = parse_target(RedisConfig(url="redis://[::1]:7000"))
    assert (target.host, target.port, target.address) == ("::1", 7000, "[::1]:7000")


def test_parts_missing_from_url_fall_back_to_settings() -> None:
    config = RedisConfig(url="redis://h:1", username="bob", password="pw", db=4, tls=True)
    target = parse_target(config)
    assert (target.username, target.password, target.db, target.tls) == ("bob", "pw", 4, True)


def test_url_parts_win_over_settings() -> None:
    config = RedisConfig(url="redis://u:p@h:1/1", username="bob", password="pw", db=4)
    target = parse_target(config)
    assert (target.username, target.password, target.db) == ("u", "p", 1)


def test_no_url_uses_separate_settings() -> None:
    config = RedisConfig(host="10.0.0.5", port=6390, username="u", password="p", db=7, tls=True)
    assert parse_target(config) == Target("10.0.0.5", 6390, "u", "p", 7, tls=True)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h:6379", "unknown scheme http://"),
        ("localhost:6379", "unknown scheme"),
        ("redis://", "no host"),
        ("redis://h:notaport", "Port could not be cast"),
        ("redis://h/zero", "database number"),
        ("redis://h/0?ssl=true", "query parameters"),
    ],
)
def test_bad_urls_name_the_setting_and_hide_the_password(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(RedisConfig(url=url))
    message = str(info.value)
    assert message.startswith("redis.url: ")
    assert why in message
    assert "redis://[[user]:password@]host" in message


def test_bad_url_message_masks_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(RedisConfig(url="http://u:hunter2@h"))
    assert "hunter2" not in str(info.value)
    assert "u:***@h" in str(info.value)
