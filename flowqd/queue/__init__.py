"""Queue backends split by role (``roles.py``), and the factory the daemon calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from flowqd.config import Config
from flowqd.queue.base import Broker, JobIdTaken

__all__ = ["Broker", "JobIdTaken", "open_broker"]


@asynccontextmanager
async def open_broker(config: Config) -> AsyncIterator[Broker]:
    """The roles of the backend ``config.broker`` names, open for the block.

    Entering needs no Redis: connections are made on first use, and every
    call raises ``BrokerUnavailable`` while Redis cannot be reached. Run
    ``broker.run()`` in the process nursery (event delivery and the like).
    """
    if config.broker == "memory":
        from flowqd.queue.memory import memory_broker

        yield memory_broker(config.queue)
        return
    from flowqd.queue.redis import open_redis_broker

    name = f"flowqd-{config.role}"
    async with open_redis_broker(config.redis, config.queue, name=name) as broker:
        yield broker
