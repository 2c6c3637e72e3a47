"""Fixtures for the broker contract suite: one ``broker`` per kind, both kinds.

Memory-broker tests that involve time get trio's autojump clock through the
``clock`` fixture (pytest-trio picks up any Clock among a test's arguments);
the Redis broker runs on real time with short delays.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from flowqd.config import Config, QueueConfig, RedisConfig
from flowqd.queue import Broker, open_broker
from flowqd.queue.keys import prefix_of
from tests.redisproc import RedisCluster

BrokerFactory = Callable[..., AbstractAsyncContextManager[Broker]]


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Both backends, always, and the Redis one on a Redis Cluster too: the suite
    starts its own redis-server for "redis" and a cluster for "cluster"."""
    return str(request.param)


@pytest.fixture
def clock(broker_kind: str) -> trio.testing.MockClock | None:
    return trio.testing.MockClock(autojump_threshold=0) if broker_kind == "memory" else None


def broker_of(kind: str) -> str:
    """``queue.broker`` for a broker kind: a cluster is the Redis broker."""
    return "redis" if kind == "cluster" else kind


def redis_config(kind: str, request: pytest.FixtureRequest) -> RedisConfig:
    """The session Redis for "redis", the session Redis Cluster for "cluster"."""
    if kind == "redis":
        return RedisConfig(url=request.getfixturevalue("redis_server").url)
    if kind == "cluster":
        return RedisConfig(cluster=True, url=request.getfixturevalue("redis_cluster").url)
    return RedisConfig()


@pytest.fixture(params=["redis", "cluster"])
def redis_kind(request: pytest.FixtureRequest) -> str:
    """For the Redis-only tests: a single redis-server and a Redis Cluster."""
    return str(request.param)


def node_of_queue(kind: str, request: pytest.FixtureRequest, queue: str) -> RedisConfig:
    """A plain (not cluster) client's config for the server that holds ``queue``: the
    session Redis, or the cluster primary owning the queue's slot. For looking at
    that server (INFO, CLIENT LIST, KEYS) as the tests on one redis-server do."""
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return RedisConfig(url=cluster.url_of(cluster.owner(prefix_of(queue))))
    return redis_config(kind, request)


@pytest.fixture
def make_config(
    broker_kind: str, request: pytest.FixtureRequest, queue_name: str
) -> Callable[..., Config]:
    redis = redis_config(broker_kind, request)

    def make(**queue: Any) -> Config:
        settings: dict[str, Any] = {"backoff_s": 0.05, "name": queue_name} | queue
        return Config(
            role="all",
            queue=QueueConfig(broker=broker_of(broker_kind), **settings),  # type: ignore[arg-type]
            redis=redis,
        )

    return make


@pytest.fixture
def open_test_broker(make_config: Callable[..., Config]) -> BrokerFactory:
    """``async with open_test_broker(**queue_settings) as broker``: running, with maintenance."""

    @asynccontextmanager
    async def factory(*, stalled_interval_s: float = 0.1, **queue: Any) -> AsyncIterator[Broker]:
        async with open_broker(make_config(**queue)) as broker, trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            await nursery.start(
                lambda task_status: broker.work.run_maintenance(
                    stalled_interval_s=stalled_interval_s, task_status=task_status
                )
            )
            yield broker
            nursery.cancel_scope.cancel()

    return factory


@pytest.fixture
async def broker(open_test_broker: BrokerFactory) -> AsyncIterator[Broker]:
    async with open_test_broker() as b:
        yield b
