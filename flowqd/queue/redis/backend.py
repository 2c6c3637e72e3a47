"""The Redis backend's shared state: client, key names, scripts, event reader.

Data model (names in ``queue/keys.py``, scripts in ``queue/lua/``, one per
transition of the job state machine):

- ``wait`` list (LPUSH new, RPOP the oldest), ``delayed`` zset by due time,
  ``active`` zset by lock deadline (ms, Redis's clock: ``TIME`` in scripts),
  ``completed``/``failed``/``cancelled`` zsets by finish time.
- ``job:<id>`` hash: the record, plus ``tok`` (the current claim's token) and
  ``stl`` (stalls). The token in the hash is what proves ownership: a flush
  or renewal is accepted while the job is active under that token, even if
  its lock deadline has just passed, until the stalled check takes the job
  back (and clears the token). So a worker that merely ran late loses
  nothing, and a job taken back can never get a second outcome.
- ``events:<id>`` stream, ``XADD MAXLEN ~``, entries of fields ``n`` (name)
  and ``d`` (orjson data), repeated: one entry holds up to
  ``codec.ENTRY_EVENTS`` events a script call appended for the job, each with
  an id of its own (``codec.decode_entries``); the last event is the one
  terminal event. Job hash and stream expire ``queue.remove_on_age_s`` after
  the job ends.
- ``conv:<flow>/<owner>/<session>`` list of encoded turns (``queue/turns.py``)
  and ``conv-bytes:...`` their byte total, ``convs:<flow>`` zset of the flow's
  conversations by last turn: written only by the flush script, with a
  completed outcome; all expire ``memory.ttl_s`` after the last turn.
- ``marker``: a one-member zset that idle workers wait on with BZPOPMIN on a
  connection of their own; enqueue, promotion, requeue and resume ring it,
  and a claim that leaves jobs waiting rings it again for the next worker.

Decisions where the contract left room:

- Events emitted for a job that is not active are dropped (never appended
  after its terminal event).
- ``queue.remove_on_count = 0`` means no limit by count (Flowise: unset).
- Watching events needs ``run()`` running (it owns the shared reader).
- A retry waits ``backoff_s * 2**(attempt-1)`` plus up to 25% jitter
  (``policy.retry_delay_s``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import trio

from flowqd.config import MemoryConfig, QueueConfig
from flowqd.queue.keys import QueueKeys
from flowqd.queue.redis.events import EventHub
from flowqd.queue.redis.scripts import QueueScripts
from flowqd.redis import Dedicated, Redis


@attrs.define(eq=False)
class BlockingConnections:
    """Connections for BZPOPMIN, kept for reuse (as many as claims ever blocked at once)."""

    _redis: Redis
    _stack: AsyncExitStack
    _idle: list[Dedicated] = attrs.Factory(list)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Dedicated]:
        if self._idle:
            connection = self._idle.pop()
        else:
            # Connects lazily; after a cancellation closed it, reconnects on next use.
            connection = await self._stack.enter_async_context(
                self._redis.dedicated(name=f"{self._redis.name}-claim")
            )
        try:
            yield connection
        finally:
            self._idle.append(connection)


@attrs.define(eq=False)
class RedisBackend:
    """What every role of one Redis-backed queue shares."""

    redis: Redis
    queue: QueueConfig
    keys: QueueKeys
    scripts: QueueScripts
    events: EventHub
    blocking: BlockingConnections
    # Added to a blocking claim's wait for its reply's deadline.
    block_margin_s: float
    memory: MemoryConfig = attrs.Factory(MemoryConfig)

    @classmethod
    def create(
        cls,
        redis: Redis,
        queue: QueueConfig,
        *,
        exit_stack: AsyncExitStack,
        block_margin_s: float,
        memory: MemoryConfig | None = None,
    ) -> RedisBackend:
        keys = QueueKeys(queue.name)
        return cls(
            redis,
            queue,
            keys,
            QueueScripts.load(redis, keys, queue),
            EventHub(redis, keys),
            BlockingConnections(redis, exit_stack),
            block_margin_s,
            memory or MemoryConfig(),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.events.run(task_status=task_status)

    async def ping(self) -> None:
        # A read of one of the queue's keys, not PING: in a Redis Cluster it
        # reaches the node that holds this queue, which is the one that matters.
        await self.redis.execute(b"EXISTS", self.keys.paused)
