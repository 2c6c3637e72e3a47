"""What must not go wrong: cancellation, killed connections, restarts, a full pool.

Every test bounds itself with ``trio.fail_after``; waits on Redis's view of
its clients poll CLIENT LIST, because Redis notices a closed socket only on
its next event-loop pass.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from flowqd.config import RedisConfig
from flowqd.errors import BrokerUnavailable
from flowqd.redis import Redis, open_redis
from tests.redis.helpers import blocked, clients_named, kill_clients, wait_until_clients
from tests.redisproc import RedisServer

NAME = "flowqd-test"  # the tested client's connections (conftest's ``redis``)


def none(clients: list[dict[str, str]]) -> bool:
    return not clients


# ---- cancelling a blocked command ----------------------------------------------


@pytest.fixture(params=["pool", "dedicated"])
async def blmove(
    request: pytest.FixtureRequest, redis: Redis
) -> AsyncIterator[Callable[..., Awaitable[object]]]:
    """BLMOVE through the pool or on a dedicated connection."""
    if request.param == "pool":
        yield redis.execute
    else:
        async with redis.dedicated() as connection:
            yield connection.execute


async def test_cancelled_blmove_unblocks_redis_and_consumes_nothing(
    redis: Redis, observer: Redis, key: str, blmove: Callable[..., Awaitable[object]]
) -> None:
    src, dst = f"{key}:wait", f"{key}:active"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def block() -> None:
                with scope:
                    await blmove("BLMOVE", src, dst, "LEFT", "RIGHT", 30, timeout=31)
                    raise AssertionError("BLMOVE returned")

            nursery.start_soon(block)
            await wait_until_clients(observer, NAME, blocked)
            scope.cancel()
        # Closing the socket is what makes Redis forget the blocked command.
        await wait_until_clients(observer, NAME, none)
        assert redis.statistics().open_connections == 0
        await observer.execute("RPUSH", src, "job-1")
        assert await observer.execute("LRANGE", src, 0, -1) == [b"job-1"]
        assert await observer.execute("LLEN", dst) == 0
        # The pool (or the dedicated connection) works, and the item goes to
        # the next BLMOVE.
        assert await blmove("BLMOVE", src, dst, "LEFT", "RIGHT", 1, timeout=2) == b"job-1"
        assert await observer.execute("LRANGE", dst, 0, -1) == [b"job-1"]


async def test_timed_out_blmove_consumes_nothing(
    redis: Redis, observer: Redis, key: str, blmove: Callable[..., Awaitable[object]]
) -> None:
    src, dst = f"{key}:wait", f"{key}:active"
    with trio.fail_after(10):
        start = trio.current_time()
        with pytest.raises(BrokerUnavailable, match=r"did not answer within 0\.3s \(BLMOVE"):
            await blmove("BLMOVE", src, dst, "LEFT", "RIGHT", 30, timeout=0.3)
        assert 0.3 <= trio.current_time() - start < 2
        await wait_until_clients(observer, NAME, none)
        await observer.execute("RPUSH", src, "job-1")
        assert await observer.execute("LLEN", dst) == 0
        assert await blmove("BLMOVE", src, dst, "LEFT", "RIGHT", 1, timeout=2) == b"job-1"


async def test_a_thousand_cancellations_leak_nothing(
    redis_url: str, observer: Redis, key: str
) -> None:
    src, dst = f"{key}:wait", f"{key}:active"
    # Two slots: had a cancellation leaked one, the last commands would hang.
    config = RedisConfig(url=redis_url, max_connections=2)
    with trio.fail_after(60):
        async with open_redis(config, name=NAME) as redis:
            for i in range(1000):
                # Cancelled at once, while connecting, while sending, or blocked.
                with trio.move_on_after(0.0005 * (i % 4)):
                    await redis.execute("BLMOVE", src, dst, "LEFT", "RIGHT", 30, timeout=31)
                    raise AssertionError("BLMOVE returned")
            stats = redis.statistics()
            assert (stats.open_connections, stats.in_use_connections, stats.waiting_tasks) == (
                0,
                0,
                0,
            )
            await wait_until_clients(observer, NAME, none)
            await observer.execute("RPUSH", src, "job-1")
            assert await observer.execute("LLEN", dst) == 0
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(redis.execute, "PING")
            assert await redis.execute("LPOP", src) == b"job-1"
            assert redis.statistics().open_connections <= 2
            assert len(await clients_named(observer, NAME)) == redis.statistics().open_connections


# ---- connections that die ----------------------------------------------------


async def test_killed_pool_connection_is_replaced(redis: Redis, observer: Redis, key: str) -> None:
    with trio.fail_after(10):
        await redis.execute("SET", key, "v")
        [before] = await clients_named(observer, NAME)
        assert await kill_clients(observer, NAME) == 1
        # The idle connection is seen closed before use; the command just works.
        assert await redis.execute("GET", key) == b"v"
        [after] = await clients_named(observer, NAME)
        assert after["id"] != before["id"]
        assert redis.statistics().open_connections == 1


async def test_killed_dedicated_connection_reconnects(
    redis: Redis, observer: Redis, key: str
) -> None:
    with trio.fail_after(10):
        async with redis.dedicated() as connection:
            await connection.execute("SET", key, "v")
            await kill_clients(observer, NAME)
            assert await connection.execute("GET", key) == b"v"


async def test_connection_killed_while_blocked_raises(
    redis: Redis, observer: Redis, key: str
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def kill_when_blocked() -> None:
                await wait_until_clients(observer, NAME, blocked)
                await kill_clients(observer, NAME)

            nursery.start_soon(kill_when_blocked)
            with pytest.raises(BrokerUnavailable, match="closed the connection"):
                await redis.execute("BLPOP", key, 30, timeout=31)
        assert redis.statistics().open_connections == 0
        assert await redis.execute("PING") == b"PONG"


async def test_hung_redis_times_out_and_no_stale_reply_is_read(
    own_redis_server: RedisServer,
) -> None:
    config = RedisConfig(url=own_redis_server.url, command_timeout_s=0.3)
    assert own_redis_server.proc is not None
    pid = own_redis_server.proc.pid
    with trio.fail_after(10):
        async with open_redis(config) as redis:
            await redis.pipeline([("SET", "a", "A"), ("SET", "b", "B")])
            os.kill(pid, signal.SIGSTOP)
            try:
                start = trio.current_time()
                with pytest.raises(BrokerUnavailable, match=r"did not answer within 0\.3s \(GET"):
                    await redis.execute("GET", "a")
                assert trio.current_time() - start < 1.5
            finally:
                os.kill(pid, signal.SIGCONT)
            # Redis now answers the GET a it had queued; that reply must not
            # be taken for the answer to this command.
            assert await redis.execute("GET", "b") == b"B"


async def test_redis_stopped_and_started_again(own_redis_server: RedisServer) -> None:
    config = RedisConfig(
        url=own_redis_server.url, command_timeout_s=2, connect_timeout_s=1, max_connections=4
    )
    with trio.fail_after(20):
        async with open_redis(config) as redis:
            await redis.execute("SET", "k", "v")
            await trio.to_thread.run_sync(own_redis_server.stop)
            for _ in range(3):
                start = trio.current_time()
                with pytest.raises(BrokerUnavailable, match="cannot be reached"):
                    await redis.execute("GET", "k")
                assert trio.current_time() - start < 2
            with pytest.raises(BrokerUnavailable):
                await redis.pipeline([("GET", "k")])
            await trio.to_thread.run_sync(own_redis_server.start)
            assert await redis.execute("GET", "k") == b"v"  # appendonly kept it
            stats = redis.statistics()
            assert (stats.open_connections, stats.in_use_connections) == (1, 0)


async def test_commands_during_a_restart_fail_fast_then_work(
    own_redis_server: RedisServer,
) -> None:
    timeout = 2.0
    config = RedisConfig(url=own_redis_server.url, command_timeout_s=timeout, connect_timeout_s=1)
    outcomes: list[str] = []
    with trio.fail_after(30):
        async with open_redis(config) as redis:
            await redis.execute("SET", "k", "v")
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def restart() -> None:
                    await trio.to_thread.run_sync(own_redis_server.restart)
                    done.set()

                nursery.start_soon(restart)
                while not done.is_set():
                    start = trio.current_time()
                    try:
                        assert await redis.execute("GET", "k") == b"v"
                        outcomes.append("ok")
                    except BrokerUnavailable:
                        outcomes.append("unavailable")
                    assert trio.current_time() - start <= timeout + 0.5
                    await trio.sleep(0.001)
            assert await redis.execute("GET", "k") == b"v"
    # The outage was seen, as errors, not as a hang.
    assert "unavailable" in outcomes


# ---- subscriptions across a restart -----------------------------------------------


async def test_subscription_raises_on_restart_and_a_new_one_works(
    own_redis_server: RedisServer,
) -> None:
    config = RedisConfig(url=own_redis_server.url, command_timeout_s=2)
    with trio.fail_after(20):
        async with open_redis(config) as redis:
            async with redis.subscribe("ring") as subscription:
                assert await redis.execute("PUBLISH", "ring", "1") == 1
                assert await subscription.__anext__() == (b"ring", b"1")
                await trio.to_thread.run_sync(own_redis_server.restart)
                with pytest.raises(BrokerUnavailable, match="closed the connection"):
                    async for _ in subscription:
                        raise AssertionError("a message after the restart")
                # Over for good: iterating again says so at once.
                with pytest.raises(BrokerUnavailable):
                    await subscription.__anext__()
            assert redis.statistics().dedicated_connections == 0
            async with redis.subscribe("ring") as subscription:
                assert await redis.execute("PUBLISH", "ring", "2") == 1
                assert await subscription.__anext__() == (b"ring", b"2")


async def test_subscription_notices_a_silent_redis_by_ping(own_redis_server: RedisServer) -> None:
    config = RedisConfig(url=own_redis_server.url, command_timeout_s=0.3)
    assert own_redis_server.proc is not None
    pid = own_redis_server.proc.pid
    with trio.fail_after(10):
        async with (
            open_redis(config) as redis,
            redis.subscribe("ring", ping_interval=0.2) as subscription,
        ):
            # Quiet but alive: PING answered, nothing yielded, no error.
            with trio.move_on_after(0.5):
                await subscription.__anext__()
                raise AssertionError("no message was published")
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(BrokerUnavailable, match="did not answer a PING"):
                    await subscription.__anext__()
            finally:
                os.kill(pid, signal.SIGCONT)


# ---- a full pool ---------------------------------------------------------------


async def test_full_pool_waits_then_raises_at_the_deadline(
    redis_url: str, observer: Redis, key: str
) -> None:
    config = RedisConfig(url=redis_url, max_connections=2)
    with trio.fail_after(20):
        async with open_redis(config, name=NAME) as redis:
            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(
                        functools.partial(redis.execute, "BLPOP", f"{key}:{i}", 10, timeout=11)
                    )
                await wait_until_clients(
                    observer, NAME, lambda clients: sum(blocked([c]) for c in clients) == 2
                )
                stats = redis.statistics()
                assert (stats.open_connections, stats.in_use_connections) == (2, 2)

                start = trio.current_time()
                with pytest.raises(BrokerUnavailable) as info:
                    await redis.execute("PING", timeout=0.3)
                assert trio.current_time() - start >= 0.3
                assert "no free connection" in str(info.value)
                assert "all 2 were busy" in str(info.value)
                assert "redis.max_connections" in str(info.value)

                # A waiter gets the connection as soon as one is free.
                async with trio.open_nursery() as waiters:
                    waiters.start_soon(redis.execute, "PING")
                    await trio.testing.wait_all_tasks_blocked()
                    assert redis.statistics().waiting_tasks == 1
                    await observer.execute("RPUSH", f"{key}:0", "x")
                assert redis.statistics().waiting_tasks == 0
                nursery.cancel_scope.cancel()
            stats = redis.statistics()
            assert stats.open_connections <= 2
            assert stats.in_use_connections == 0


# ---- Redis refusing for now ----------------------------------------------------------


async def test_busy_redis_is_unavailable_not_a_reply_error(own_redis_server: RedisServer) -> None:
    # LOADING after a restart and BUSY during a long script both mean "not
    # now": the command did not run, and callers retry as for an outage.
    slow = (
        "local t = redis.call('TIME'); while true do local n = redis.call('TIME'); "
        "if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 1000000 then return 1 end end"
    )
    config = RedisConfig(url=own_redis_server.url)
    with trio.fail_after(10):
        async with open_redis(config) as redis, open_redis(config) as other:
            await redis.execute("CONFIG", "SET", "busy-reply-threshold", 50)
            await redis.execute("SET", "k", "v")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(other.execute, "EVAL", slow, 0, timeout=5))
                await trio.testing.wait_all_tasks_blocked()
                while True:  # a command that slipped in before the script simply ran
                    try:
                        await redis.execute("GET", "k")
                    except BrokerUnavailable as exc:
                        assert "is not ready (BUSY" in str(exc)
                        break
                with pytest.raises(BrokerUnavailable, match="not ready"):
                    await redis.pipeline([("GET", "k"), ("SET", "k", "w")])
            assert await redis.execute("GET", "k") == b"v"
