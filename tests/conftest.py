"""Shared fixtures. Network tests use loopback and free ports only."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.redisproc import RedisCluster, RedisServer

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


# ---- Redis Cluster (issue 16) ---------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three primaries with a replica each, started once for the session.

    Tests that fail over or kill a node leave who is primary changed: ask the
    cluster (``owner``, ``primaries``), and use ``healthy_cluster`` to get it
    whole again first and after.
    """
    cluster = RedisCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def healthy_cluster(redis_cluster: RedisCluster) -> Iterator[RedisCluster]:
    """The session cluster, healthy on entry, and made healthy again on exit
    (killed nodes restarted, every replica in sync) for the tests after."""
    redis_cluster.heal()
    yield redis_cluster
    redis_cluster.heal()
