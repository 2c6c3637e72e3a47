"""Fixtures for the Redis client tests: a client on the session Redis, key names."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from flowqd.config import RedisConfig
from flowqd.redis import Redis, open_redis


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(RedisConfig(url=redis_url), name="flowqd-test") as client:
        yield client


@pytest.fixture
def key(queue_name: str) -> str:
    """A key prefix no other test uses."""
    return f"flowqd-test:{queue_name}"


@pytest.fixture
async def observer(redis_url: str) -> AsyncIterator[Redis]:
    """A second client, to watch and poke Redis without touching the tested pool."""
    async with open_redis(RedisConfig(url=redis_url), name="flowqd-observer") as client:
        yield client
