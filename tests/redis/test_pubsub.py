"""Pub/sub on a dedicated connection."""

from __future__ import annotations

import pytest
import trio

from flowqd.config import RedisConfig
from flowqd.errors import RedisReplyError
from flowqd.redis import Redis, open_redis
from tests.redisproc import RedisServer


async def test_enters_after_confirmation_and_yields_messages_in_order(
    redis: Redis, key: str
) -> None:
    a, b = f"{key}:a", f"{key}:b".encode()
    with trio.fail_after(5):
        async with redis.subscribe(a, b) as subscription:
            stats = redis.statistics()
            assert (stats.dedicated_connections, stats.open_connections) == (1, 1)
            # Entered only once Redis confirmed both channels: no sleep needed.
            replies = await redis.pipeline(
                [("PUBLISH", a, "1"), ("PUBLISH", b, b"\x00\xff"), ("PUBLISH", a, 3)]
            )
            assert replies == [1, 1, 1]
            received = []
            async for channel, message in subscription:
                received.append((channel, message))
                if len(received) == 3:
                    break
        assert received == [(a.encode(), b"1"), (b, b"\x00\xff"), (a.encode(), b"3")]
        assert redis.statistics().dedicated_connections == 0
        assert await redis.execute("PUBSUB", "NUMSUB", a) == [a.encode(), 0]


async def test_cancelled_wait_keeps_the_subscription(redis: Redis, key: str) -> None:
    with trio.fail_after(5):
        async with redis.subscribe(key) as subscription:
            with trio.move_on_after(0.05):
                await subscription.__anext__()
            assert redis.statistics().dedicated_connections == 1
            await redis.execute("PUBLISH", key, "after")
            assert await subscription.__anext__() == (key.encode(), b"after")


async def test_subscribe_needs_a_channel(redis: Redis) -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        async with redis.subscribe():
            pass


async def test_refused_subscribe_raises_and_closes(
    redis: Redis, redis_server: RedisServer, key: str
) -> None:
    user = "flowqd-nochannels"
    config = RedisConfig(host="127.0.0.1", port=redis_server.port, username=user)
    with trio.fail_after(5):
        await redis.execute("ACL", "SETUSER", user, "on", "nopass", "resetchannels", "+@all")
        try:
            async with open_redis(config) as limited:
                with pytest.raises(RedisReplyError, match="NOPERM"):
                    async with limited.subscribe(key):
                        raise AssertionError("subscribed without permission")
                assert limited.statistics().open_connections == 0
        finally:
            await redis.execute("ACL", "DELUSER", user)
