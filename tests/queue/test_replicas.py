"""redis.wait_replicas: enqueues and flushes wait for replicas (WAIT).

On a primary with one replica of its own, and on the session Redis Cluster
(each primary there has one replica).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio

from flowqd.config import Config, QueueConfig, RedisConfig
from flowqd.errors import NotReplicated
from flowqd.jobs import JobStatus
from flowqd.queue import open_broker
from flowqd.redis import open_redis
from tests.queue.conftest import node_of_queue, redis_config
from tests.queue.helpers import claim_one, done, spec, wait_until
from tests.redisproc import RedisServer


@pytest.fixture(scope="module")
def replicated() -> Iterator[RedisServer]:
    """A primary with one replica that has caught up."""
    primary = RedisServer()
    primary.start()
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    try:

        async def linked() -> None:
            async with open_redis(RedisConfig(url=replica.url)) as redis:

                async def up() -> bool:
                    info = await redis.execute(b"INFO", b"replication")
                    return b"master_link_status:up" in info

                with trio.fail_after(10):
                    await wait_until(up)

        trio.run(linked)
        yield primary
    finally:
        replica.close()
        primary.close()


@pytest.fixture(params=["replicated", "cluster"])
def primary_config(request: pytest.FixtureRequest) -> RedisConfig:
    if request.param == "cluster":
        return redis_config("cluster", request)
    return RedisConfig(url=request.getfixturevalue("replicated").url)


def make_config(redis: RedisConfig, queue: str, replicas: int) -> Config:
    return Config(
        role="all",
        queue=QueueConfig(broker="redis", name=queue),
        redis=RedisConfig(
            url=redis.url, cluster=redis.cluster, wait_replicas=replicas, wait_timeout_s=0.2
        ),
    )


async def wait_calls(request: pytest.FixtureRequest, redis: RedisConfig, queue: str) -> int:
    """WAIT commands the server holding ``queue`` has run so far."""
    kind = "cluster" if redis.cluster else "plain"
    server = node_of_queue("cluster", request, queue) if kind == "cluster" else redis
    async with open_redis(RedisConfig(url=server.url)) as plain:
        stats = (await plain.execute(b"INFO", b"commandstats")).decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_wait:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def test_enqueue_and_flush_wait_for_the_replica(
    primary_config: RedisConfig, queue_name: str, request: pytest.FixtureRequest
) -> None:
    before = await wait_calls(request, primary_config, queue_name)
    async with open_broker(make_config(primary_config, queue_name, 1)) as broker:
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        assert await broker.work.flush([], [done(claimed, "ok")]) == [True]
        job = await broker.jobs.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETED
    # One WAIT after the enqueue, one after the flush, each acknowledged.
    assert await wait_calls(request, primary_config, queue_name) - before == 2


async def test_an_enqueue_too_few_replicas_acknowledge_names_its_job(
    primary_config: RedisConfig, queue_name: str
) -> None:
    # Two replicas asked for, one exists: WAIT answers 1 after wait_timeout_s.
    async with open_broker(make_config(primary_config, queue_name, 2)) as broker:
        with pytest.raises(NotReplicated) as raised:
            await broker.jobs.enqueue([spec()])
        message = str(raised.value)
        assert "only 1 of 2 replicas" in message
        assert "redis.wait_replicas" in message
        [job_id] = [w for w in message.split() if len(w) == 32 and w.isalnum()]
        # The job is on the primary and runs: the message told its id.
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.status is JobStatus.WAITING


async def test_a_flush_too_few_replicas_acknowledge_stands_and_is_logged(
    primary_config: RedisConfig, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_broker(make_config(primary_config, queue_name, 0)) as broker:
        [job_id] = await broker.jobs.enqueue([spec()])
    caplog.set_level(logging.WARNING, logger="flowqd.queue.redis.work")
    async with open_broker(make_config(primary_config, queue_name, 2)) as broker:
        claimed = await claim_one(broker)
        assert await broker.work.flush([], [done(claimed, "ok")]) == [True]
        job = await broker.jobs.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETED
    assert any("only 1 of 2 replicas" in r.getMessage() for r in caplog.records)


async def test_without_wait_replicas_no_wait_is_sent(
    primary_config: RedisConfig, queue_name: str, request: pytest.FixtureRequest
) -> None:
    before = await wait_calls(request, primary_config, queue_name)
    async with open_broker(make_config(primary_config, queue_name, 0)) as broker:
        await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        await broker.work.flush([], [done(claimed, "ok")])
    assert await wait_calls(request, primary_config, queue_name) == before
