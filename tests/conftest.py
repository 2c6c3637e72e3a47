"""Shared fixtures. Network tests use loopback and free ports only."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.redisproc import RedisServer

_queue_numbers = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests isolate by queue name."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop, kill or restart it."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name no other test uses, so tests share one Redis safely."""
    return f"t{next(_queue_numbers)}-{request.node.name[:40]}".replace("[", "-").replace("]", "")
