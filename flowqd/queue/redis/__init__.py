"""The Redis backend: every role on Redis, every state change one Lua script.

``backend.py`` holds what the roles share (client, key names, scripts, the
event reader) and describes the data model; each role is a small class of
its own (``work.py``, ``jobs.py``, ``control.py``, ``documents.py``,
``limiter.py``, ``conversations.py``). Only this package talks to ``flowqd.redis``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from flowqd.config import MemoryConfig, QueueConfig, RedisConfig
from flowqd.queue.base import Broker
from flowqd.queue.redis.backend import RedisBackend
from flowqd.queue.redis.control import RedisControl
from flowqd.queue.redis.conversations import RedisConversations
from flowqd.queue.redis.documents import RedisFlowDocuments, RedisSecrets
from flowqd.queue.redis.jobs import RedisJobs
from flowqd.queue.redis.limiter import RedisRateLimiter
from flowqd.queue.redis.schedules import RedisSchedules
from flowqd.queue.redis.work import RedisWork
from flowqd.redis import open_redis


@asynccontextmanager
async def open_redis_broker(
    redis_config: RedisConfig,
    queue: QueueConfig,
    *,
    name: str = "flowqd",
    memory: MemoryConfig | None = None,
) -> AsyncIterator[Broker]:
    """A broker on Redis with its own client; needs no running Redis to enter."""
    async with open_redis_brokers(redis_config, [queue], name=name, memory=memory) as brokers:
        yield brokers[0]


@asynccontextmanager
async def open_redis_brokers(
    redis_config: RedisConfig,
    queues: Sequence[QueueConfig],
    *,
    name: str = "flowqd",
    memory: MemoryConfig | None = None,
) -> AsyncIterator[list[Broker]]:
    """One broker per queue, all on one client (one connection pool, one Cluster map)."""
    async with open_redis(redis_config, name=name) as redis, AsyncExitStack() as stack:
        yield [
            _broker(
                RedisBackend.create(
                    redis,
                    queue,
                    exit_stack=stack,
                    block_margin_s=redis_config.command_timeout_s,
                    memory=memory,
                )
            )
            for queue in queues
        ]


def _broker(backend: RedisBackend) -> Broker:
    return Broker(
        work=RedisWork(backend),
        jobs=RedisJobs(backend),
        control=RedisControl(backend),
        flow_documents=RedisFlowDocuments(backend),
        secrets=RedisSecrets(backend),
        limiter=RedisRateLimiter(backend),
        conversations=RedisConversations(backend),
        schedules=RedisSchedules(backend),
        backend=backend,
    )
