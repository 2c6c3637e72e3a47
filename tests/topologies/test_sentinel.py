"""The client on a real Sentinel topology: discovery, configuration errors,
following a failover (+switch-master), and READONLY from a demoted primary.

Who holds which connection is read from the servers themselves (CLIENT LIST,
by the client name each test picks), not from the client's internals.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from flowqd.config import RedisConfig
from flowqd.errors import BrokerUnavailable
from flowqd.redis import open_redis
from flowqd.redis._sentinel import open_sentinel_locator
from tests.daemonproc import start_daemon
from tests.faults.helpers import poll, settings
from tests.redisproc import RedisServer, free_port, redis_command
from tests.sentinelproc import (
    MASTER,
    SENTINEL_PASSWORD,
    SentinelProcess,
    SentinelTopology,
    sentinel_command,
)


def sentinel_config(topology: SentinelTopology, **overrides: Any) -> RedisConfig:
    values: dict[str, Any] = {
        "sentinels": topology.sentinel_addresses,
        "sentinel_master": MASTER,
        "sentinel_password": SENTINEL_PASSWORD,
        "connect_timeout_s": 2.0,
        "command_timeout_s": 2.0,
    }
    values.update(overrides)
    return RedisConfig(**values)


def unique(prefix: str = "sentinel-test") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def clients(port: int, name: str, *, sentinel: bool = False) -> list[dict[str, str]]:
    """The connections named ``name`` on the server (or sentinel) on ``port``."""
    text = (
        sentinel_command(port, "CLIENT", "LIST")
        if sentinel
        else redis_command(port, "CLIENT", "LIST")
    )
    found = []
    for line in bytes(text).decode().splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("name") == name:
            found.append(fields)
    return found


def subscribed_on(ports: list[int], name: str) -> list[int]:
    """Which of ``ports`` hold a subscription of ``name`` (the +switch-master watch)."""
    return [p for p in ports if any(c["sub"] != "0" for c in clients(p, name, sentinel=True))]


async def until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll another process's state until ``condition`` holds, failing after ``seconds``."""

    async def check() -> bool:
        return condition()

    with trio.fail_after(seconds):
        await poll(check, every=0.02)


async def test_commands_reach_the_primary_the_sentinels_name(sentinels: SentinelTopology) -> None:
    primary, replica = sentinels.primary(), sentinels.replica()
    name, key = unique(), unique("key")
    async with open_redis(sentinel_config(sentinels), name=name) as redis:
        assert await redis.execute("SET", key, "here") == b"OK"
        assert redis_command(primary, "GET", key) == b"here"
        assert clients(primary, name)
        assert not clients(replica, name)


async def test_an_unknown_master_name_is_named_with_what_to_check(
    sentinels: SentinelTopology,
) -> None:
    config = sentinel_config(sentinels, sentinel_master="no-such-master")
    async with open_redis(config, name=unique()) as redis:
        with pytest.raises(BrokerUnavailable) as caught:
            await redis.execute("PING")
    message = str(caught.value)
    assert "does not monitor a master named 'no-such-master'" in message
    assert all(address in message for address in sentinels.sentinel_addresses)
    assert "redis.sentinel_master" in message and "redis.sentinels" in message


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("wrong", "refused the login (WRONGPASS"),
        (None, "asks for a password: set redis.sentinel_password"),
    ],
)
async def test_a_wrong_or_missing_sentinel_password_says_so(
    sentinels: SentinelTopology, password: str | None, expected: str
) -> None:
    config = sentinel_config(sentinels, sentinel_password=password)
    async with open_redis(config, name=unique()) as redis:
        with pytest.raises(BrokerUnavailable) as caught:
            await redis.execute("PING")
    assert expected in str(caught.value)
    assert "redis.sentinel_password" in str(caught.value)


async def test_with_no_sentinel_up_the_client_opens_and_commands_fail_clearly() -> None:
    nobody = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    config = RedisConfig(sentinels=nobody, sentinel_master=MASTER, command_timeout_s=2.0)
    with trio.fail_after(1):
        async with open_redis(config, name=unique()) as redis:
            with (
                trio.fail_after(config.connect_timeout_s + 1),
                pytest.raises(BrokerUnavailable) as caught,
            ):
                await redis.execute("PING")
    message = str(caught.value)
    assert all(f"{address}: cannot be reached" in message for address in nobody), message


async def test_a_daemon_starts_with_no_sentinel_up_and_answers_503_naming_them() -> None:
    nobody = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    env = {"FLOWQD_REDIS__SENTINELS": ",".join(nobody), "FLOWQD_REDIS__SENTINEL_MASTER": MASTER}
    timeouts = settings(redis__connect_timeout_s=1, server__broker_timeout_s=1)
    with trio.fail_after(30):
        async with (
            start_daemon(["--role", "main", *timeouts], env=env) as main,
            httpx.AsyncClient(base_url=main.api, timeout=3) as client,
        ):
            response = await client.get("/api/v1/queue")
    assert response.status_code == 503, response.text
    assert all(address in main.text() for address in nobody), main.text()
    assert "redis.sentinels" in main.text()


async def test_a_dead_sentinel_is_asked_last_next_time(sentinels: SentinelTopology) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = sentinel_config(sentinels, sentinels=[dead, *sentinels.sentinel_addresses])
    async with open_sentinel_locator(config, None, unique()) as locator:
        assert locator.address == f"sentinel master {MASTER}"
        host, port = await locator.locate(trio.current_time() + 2)
        assert (host, port) == ("127.0.0.1", sentinels.primary())
        assert locator.address == f"127.0.0.1:{port}"
        assert locator.sentinels == [*sentinels.sentinel_addresses, dead]


async def test_after_a_failover_the_notice_drops_old_connections_and_writes_reach_the_new_one(
    sentinels: SentinelTopology,
) -> None:
    old = sentinels.primary()
    name, key = unique(), unique("key")
    ports = [s.port for s in sentinels.sentinels]
    async with open_redis(sentinel_config(sentinels), name=name) as redis:
        assert await redis.execute("SET", key, "before") == b"OK"
        await until(lambda: bool(subscribed_on(ports, name)), 5)
        assert clients(old, name)
        new = await trio.to_thread.run_sync(sentinels.failover)
        assert new != old
        # Nothing was sent meanwhile: only the +switch-master notice can close them
        # (a primary turned replica keeps its clients' connections).
        await until(lambda: not clients(old, name), 5)
        # The first write after the switch succeeds: no READONLY from the old one.
        assert await redis.execute("SET", key, "after") == b"OK"
        assert redis_command(new, "GET", key) == b"after"
        assert clients(new, name)
        assert not clients(old, name)


async def test_commands_in_flight_when_the_primary_moves_fail_only_as_unavailable(
    sentinels: SentinelTopology,
) -> None:
    # The notice closes every connection, those with a command in flight too:
    # each such command must end as BrokerUnavailable (a 503), never as a bug.
    name, key = unique(), unique("key")
    ports = [s.port for s in sentinels.sentinels]
    outcomes: Counter[str] = Counter()
    done = trio.Event()

    async def hammer() -> None:
        while not done.is_set():
            try:
                await redis.execute("INCR", key)
                outcomes["ok"] += 1
            except BrokerUnavailable:
                outcomes["unavailable"] += 1

    async with open_redis(sentinel_config(sentinels, max_connections=64), name=name) as redis:
        await until(lambda: bool(subscribed_on(ports, name)), 5)
        async with trio.open_nursery() as nursery:
            for _ in range(64):
                nursery.start_soon(hammer)
            new = await trio.to_thread.run_sync(sentinels.failover)
            before = outcomes["ok"]
            await until(lambda: outcomes["ok"] > before + 100, 5)
            done.set()
    assert int(redis_command(new, "GET", key)) > 0
    assert outcomes["ok"] > 100, outcomes


async def test_readonly_from_a_demoted_primary_finds_the_new_one(
    sentinels: SentinelTopology,
) -> None:
    # A decoy that speaks RESP and takes the sentinel password but is no sentinel:
    # listed first, the watch subscribes there and never hears the failover, as
    # when the notice is missed.
    decoy = RedisServer()
    decoy.start()
    try:
        redis_command(decoy.port, "CONFIG", "SET", "requirepass", SENTINEL_PASSWORD)
        old = sentinels.primary()
        name, key = unique(), unique("key")
        config = sentinel_config(
            sentinels, sentinels=[f"127.0.0.1:{decoy.port}", *sentinels.sentinel_addresses]
        )
        async with open_redis(config, name=name) as redis:
            await until(lambda: bool(subscribed_on([decoy.port], name)), 5)
            assert await redis.execute("SET", key, "before") == b"OK"
            new = await trio.to_thread.run_sync(sentinels.failover)
            assert clients(old, name), "the pooled connection to the old primary is still open"
            with pytest.raises(BrokerUnavailable, match="not the primary any more"):
                await redis.execute("SET", key, "after")
            assert not clients(old, name)
            assert await redis.execute("SET", key, "after") == b"OK"
            assert redis_command(new, "GET", key) == b"after"
    finally:
        decoy.close()


async def test_the_watch_moves_to_another_sentinel_when_its_own_dies(
    sentinels: SentinelTopology,
) -> None:
    old = sentinels.primary()
    name = unique()
    by_port: dict[int, SentinelProcess] = {s.port: s for s in sentinels.sentinels}
    async with open_redis(sentinel_config(sentinels), name=name) as redis:
        assert await redis.execute("PING") == b"PONG"
        await until(lambda: bool(subscribed_on(list(by_port), name)), 5)
        [watched] = subscribed_on(list(by_port), name)
        by_port[watched].stop()
        alive = [p for p in by_port if p != watched]
        await until(lambda: bool(subscribed_on(alive, name)), 5)
        await trio.to_thread.run_sync(sentinels.failover)
        await until(lambda: not clients(old, name), 5)
        assert await redis.execute("PING") == b"PONG"
