"""Several queues (issue 17, item 2): one broker per queue, run on every broker kind.

Each queue is its own broker (``open_brokers``): its jobs, pause, counts and
settings are its own, and on a Redis Cluster its keys live in the slot of its
own hash tag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from flowqd.config import Config, QueueConfig, QueueSettings
from flowqd.jobs import JobStatus
from flowqd.queue import Brokers, open_brokers
from flowqd.queue.keys import QueueKeys, prefix_of
from tests.queue.conftest import broker_of, redis_config
from tests.queue.helpers import claim_one, done, spec
from tests.redisproc import RedisCluster, redis_command


def two_queues(kind: str, request: pytest.FixtureRequest, a: str, b: str) -> Config:
    """Queue ``a`` the default one, ``b`` declared with settings of its own."""
    return Config(
        role="all",
        queue=QueueConfig(broker=broker_of(kind), name=a, backoff_s=0.05),  # type: ignore[arg-type]
        queues={b: QueueSettings(max_attempts=3, backoff_s=0.5)},
        redis=redis_config(kind, request),
    )


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Brokers]:
    async with open_brokers(config) as brokers, trio.open_nursery() as nursery:
        for broker in brokers.by_queue.values():
            await nursery.start(broker.run)
        yield brokers
        nursery.cancel_scope.cancel()


async def test_a_queue_gives_only_its_own_jobs(
    broker_kind: str, request: pytest.FixtureRequest, queue_name: str
) -> None:
    a, b = queue_name, f"{queue_name}-b"
    async with running(two_queues(broker_kind, request, a, b)) as brokers:
        assert list(brokers.by_queue) == [a, b] and brokers.default is brokers[a]
        with trio.fail_after(10):
            [in_a] = await brokers[a].jobs.enqueue([spec(1)])
            [in_b] = await brokers[b].jobs.enqueue([spec(2)])
            # A job is read, claimed and counted only through its own queue.
            assert await brokers[b].jobs.get_job(in_a) is None
            assert await brokers[a].jobs.get_job(in_b) is None
            claimed_b = await claim_one(brokers[b], "wb")
            assert claimed_b.job.id == in_b
            assert await brokers[b].work.claim("wb", 10, lock_ttl_s=30, block_s=0.05) == []
            claimed_a = await claim_one(brokers[a], "wa")
            assert claimed_a.job.id == in_a
            await brokers[a].work.flush([], [done(claimed_a, "A")])
            counts_a = await brokers[a].control.counts()
            counts_b = await brokers[b].control.counts()
            assert counts_a[JobStatus.COMPLETED] == 1 and counts_a[JobStatus.ACTIVE] == 0
            assert counts_b[JobStatus.COMPLETED] == 0 and counts_b[JobStatus.ACTIVE] == 1


async def test_pausing_one_queue_leaves_the_others_working(
    broker_kind: str, request: pytest.FixtureRequest, queue_name: str
) -> None:
    a, b = queue_name, f"{queue_name}-b"
    async with running(two_queues(broker_kind, request, a, b)) as brokers:
        with trio.fail_after(10):
            await brokers[a].control.pause()
            assert await brokers[a].control.is_paused()
            assert not await brokers[b].control.is_paused()
            [in_a] = await brokers[a].jobs.enqueue([spec(1)])
            [in_b] = await brokers[b].jobs.enqueue([spec(2)])
            assert await brokers[a].work.claim("w", 10, lock_ttl_s=30, block_s=0.05) == []
            assert (await claim_one(brokers[b], "w")).job.id == in_b
            await brokers[a].control.resume()
            assert (await claim_one(brokers[a], "w")).job.id == in_a


async def test_each_queue_applies_its_own_settings(
    broker_kind: str, request: pytest.FixtureRequest, queue_name: str
) -> None:
    a, b = queue_name, f"{queue_name}-b"
    async with running(two_queues(broker_kind, request, a, b)) as brokers:
        with trio.fail_after(10):
            [in_a] = await brokers[a].jobs.enqueue([spec(1)])
            [in_b] = await brokers[b].jobs.enqueue([spec(2)])
            job_a = await brokers[a].jobs.get_job(in_a)
            job_b = await brokers[b].jobs.get_job(in_b)
            # [queues.b] max_attempts = 3; the default queue keeps [queue]'s 1.
            assert job_a is not None and job_a.max_attempts == 1
            assert job_b is not None and job_b.max_attempts == 3


def test_queue_keys_carry_their_own_hash_tag() -> None:
    a, b = QueueKeys("predictions"), QueueKeys("bulk")
    assert a.wait == "flowqd:{predictions}:wait" and a.job("j1").startswith("flowqd:{predictions}:")
    assert b.wait == "flowqd:{bulk}:wait"


async def test_queues_spread_over_the_cluster_masters(
    redis_cluster: RedisCluster, request: pytest.FixtureRequest, queue_name: str
) -> None:
    """Two queues whose hash tags fall to different primaries: each queue's keys
    live on its own primary, and both work through one client."""
    first = redis_cluster.owner(prefix_of(queue_name))
    other = next(
        f"{queue_name}-{n}"
        for n in range(1000)
        if redis_cluster.owner(prefix_of(f"{queue_name}-{n}")) != first
    )
    assert redis_cluster.key_slot(prefix_of(queue_name)) != redis_cluster.key_slot(prefix_of(other))
    async with running(two_queues("cluster", request, queue_name, other)) as brokers:
        with trio.fail_after(10):
            [in_a] = await brokers[queue_name].jobs.enqueue([spec(1)])
            [in_b] = await brokers[other].jobs.enqueue([spec(2)])
            assert (await claim_one(brokers[other], "w")).job.id == in_b
            assert (await claim_one(brokers[queue_name], "w")).job.id == in_a
    second = redis_cluster.owner(prefix_of(other))
    assert second != first
    assert redis_command(first, "EXISTS", QueueKeys(queue_name).job(in_a)) == 1
    assert redis_command(second, "EXISTS", QueueKeys(other).job(in_b)) == 1
    # The first primary does not hold the other queue's slot: it redirects.
    assert str(redis_command(first, "EXISTS", QueueKeys(other).job(in_b))).startswith("MOVED")
