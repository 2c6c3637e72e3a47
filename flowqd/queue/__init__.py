"""Queue backends split by role (``roles.py``), and the factory the daemon calls."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from flowqd.config import Config
from flowqd.queue.base import Broker, Brokers, JobIdTaken

__all__ = ["Broker", "Brokers", "JobIdTaken", "client_name", "open_broker", "open_brokers"]

# Redis refuses client names with spaces or other characters outside printable ASCII.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@asynccontextmanager
async def open_broker(config: Config) -> AsyncIterator[Broker]:
    """The roles of the backend ``config.broker`` names, open for the block.

    Entering needs no Redis: connections are made on first use, and every
    call raises ``BrokerUnavailable`` while Redis cannot be reached. Run
    ``broker.run()`` in the process nursery (event delivery and the like).
    """
    if config.broker == "memory":
        from flowqd.queue.memory import memory_broker

        yield memory_broker(config.queue, config.memory)
        return
    from flowqd.queue.redis import open_redis_broker

    name = client_name(config.role)
    async with open_redis_broker(
        config.redis, config.queue, name=name, memory=config.memory
    ) as broker:
        yield broker


@asynccontextmanager
async def open_brokers(config: Config, names: Sequence[str] = ()) -> AsyncIterator[Brokers]:
    """A broker per queue of ``names`` (default: every configured queue), as
    ``open_broker``; the default queue's is always there, first: it also holds
    what the queues share (flows, credentials, rate limits). On Redis they
    share one client, so more queues cost no more connections for commands."""
    wanted = [config.queue.name, *(n for n in names or config.queue_names)]
    queues = [config.queue_config(n) for n in dict.fromkeys(wanted)]
    if config.broker == "memory":
        from flowqd.queue.memory import memory_broker

        yield Brokers({q.name: memory_broker(q, config.memory) for q in queues})
        return
    from flowqd.queue.redis import open_redis_brokers

    name = client_name(config.role)
    async with open_redis_brokers(config.redis, queues, name=name, memory=config.memory) as brokers:
        yield Brokers({q.name: b for q, b in zip(queues, brokers, strict=True)})


def client_name(role: str, host: str | None = None, pid: int | None = None) -> str:
    """``flowqd-ROLE-HOST-PID``: the name every Redis connection of this process
    sets (CLIENT SETNAME), so CLIENT LIST tells an operator whose it is.

    Characters Redis refuses (spaces and the like) become ``_``, and a long
    host name is cut at 63 characters (one DNS label's worth).
    """
    host = _NAME_UNSAFE.sub("_", socket.gethostname() if host is None else host)[:63]
    return f"flowqd-{role}-{host or 'unknown'}-{os.getpid() if pid is None else pid}"
