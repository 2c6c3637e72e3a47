"""The embedded backend: every role in process, for ``--role all`` without Redis.

Same semantics as the Redis backend, nothing durable. The job state machine
is ``state.py``; each role is a thin class over that one shared state. Data
goes through orjson on the way in, as it would through Redis, so a value the
Redis backend would reject is rejected here too, and no caller can mutate a
stored record.
"""

from __future__ import annotations

import trio

from flowqd.config import MemoryConfig, QueueConfig
from flowqd.queue.base import Broker
from flowqd.queue.memory.control import MemoryControl
from flowqd.queue.memory.conversations import ConversationStore, MemoryConversations
from flowqd.queue.memory.documents import MemoryFlowDocuments, MemorySecrets
from flowqd.queue.memory.jobs import MemoryJobs
from flowqd.queue.memory.limiter import MemoryRateLimiter
from flowqd.queue.memory.schedules import MemorySchedules
from flowqd.queue.memory.state import MemoryState
from flowqd.queue.memory.work import MemoryWork


class _InProcess:
    """Nothing to run, nothing to reach."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()


def memory_broker(queue: QueueConfig, memory: MemoryConfig | None = None) -> Broker:
    state = MemoryState(queue, conversations=ConversationStore(memory or MemoryConfig()))
    return Broker(
        work=MemoryWork(state),
        jobs=MemoryJobs(state),
        control=MemoryControl(state),
        flow_documents=MemoryFlowDocuments(),
        secrets=MemorySecrets(),
        limiter=MemoryRateLimiter(),
        conversations=MemoryConversations(state.conversations),
        schedules=MemorySchedules(),
        backend=_InProcess(),
    )
