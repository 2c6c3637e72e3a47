"""The Redis broker's blocked claim: BZPOPMIN and the claim script in one write.

A claim that finds the queue empty waits on the doorbell with the claim
script queued right behind it on the same connection. These tests pin down
what that must never lose: a job the queued claim took while its caller was
being cancelled goes back to ``waiting``, attempt not counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from flowqd.config import Config, QueueConfig
from flowqd.jobs import Claimed, JobStatus
from flowqd.queue import Broker, open_broker
from flowqd.queue.keys import QueueKeys
from flowqd.redis import Redis, open_redis
from tests.queue.conftest import node_of_queue, redis_config
from tests.queue.helpers import claim_one, spec, wait_until


@pytest.fixture
def config(redis_kind: str, request: pytest.FixtureRequest, queue_name: str) -> Config:
    return Config(
        role="all",
        queue=QueueConfig(broker="redis", name=queue_name),
        redis=redis_config(redis_kind, request),
    )


@pytest.fixture
async def broker(config: Config) -> AsyncIterator[Broker]:
    async with open_broker(config) as broker:
        yield broker


@pytest.fixture
async def raw(
    redis_kind: str, request: pytest.FixtureRequest, config: Config
) -> AsyncIterator[Redis]:
    """A plain client on the server that holds the queue (a cluster node too)."""
    node = node_of_queue(redis_kind, request, config.queue.name)
    async with open_redis(node, name="test-raw") as redis:
        yield redis


async def _blocked_clients(raw: Redis) -> int:
    info = (await raw.execute(b"INFO", b"clients")).decode()
    return int(info.split("blocked_clients:")[1].split()[0])


async def _slip_into_wait(raw: Redis, keys: QueueKeys, job_id: str) -> None:
    """Move a delayed job to ``wait`` without ringing the doorbell."""
    await raw.pipeline(
        [
            (b"ZREM", keys.delayed, job_id),
            (b"HSET", keys.job(job_id), b"st", b"waiting"),
            (b"LPUSH", keys.wait, job_id),
        ]
    )


async def test_cancelled_blocked_claim_puts_back_what_its_queued_claim_took(
    broker: Broker, raw: Redis, config: Config
) -> None:
    keys = QueueKeys(config.queue.name)
    with trio.fail_after(10):
        # An empty claim first: the next one waits on the doorbell.
        assert await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=0) == []
        [job_id] = await broker.jobs.enqueue([spec(delay_s=3600)])
        got: list[Claimed] = []
        cancelled = False
        async with trio.open_nursery() as nursery:

            async def claimer() -> None:
                nonlocal cancelled
                try:
                    got.extend(await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=60))
                except trio.Cancelled:
                    cancelled = True
                    raise

            nursery.start_soon(claimer)
            await wait_until(lambda: _blocked_clients(raw))
            # Waiting, but no ring: only the claim queued behind the wait
            # (run when the cancellation unblocks it) can take this job.
            await _slip_into_wait(raw, keys, job_id)
            nursery.cancel_scope.cancel()
        assert cancelled and got == []
        assert await _blocked_clients(raw) == 0
        job = await broker.jobs.get_job(job_id)
        # The queued claim did take it (its worker is recorded), and it was
        # put back: waiting, attempt not counted.
        assert job is not None and job.worker == "w1"
        assert job.status == JobStatus.WAITING and job.attempts == 0
        claimed = await claim_one(broker)
        assert claimed.job.id == job_id and claimed.job.attempts == 1


async def test_blocked_claim_takes_the_job_in_the_same_round_trip(
    broker: Broker, raw: Redis
) -> None:
    with trio.fail_after(10):
        assert await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=0) == []
        got: list[Claimed] = []
        async with trio.open_nursery() as nursery:

            async def claimer() -> None:
                got.extend(await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=60))

            nursery.start_soon(claimer)
            await wait_until(lambda: _blocked_clients(raw))
            [job_id] = await broker.jobs.enqueue([spec()])
        assert [c.job.id for c in got] == [job_id]
        # The ring ended the wait and the claim queued behind it on the same
        # connection took the job: no further command was sent for it.
        assert await _last_command_of(raw, "-claim") == "evalsha"
        assert (await broker.control.counts())[JobStatus.ACTIVE] == 1


async def _last_command_of(raw: Redis, name_end: str) -> str:
    clients = (await raw.execute(b"CLIENT", b"LIST")).decode().splitlines()
    [line] = [c for c in clients if f"{name_end} " in c.split(" name=", 1)[1]]
    return line.split(" cmd=")[1].split()[0]
