"""``QueueControl`` of the embedded backend: pausing, counts, live workers."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from flowqd.jobs import JobStatus, WorkerInfo
from flowqd.queue.memory.state import FINISHED, MemoryState


@attrs.define(eq=False)
class MemoryControl:
    _state: MemoryState

    async def pause(self) -> None:
        await trio.lowlevel.checkpoint()
        self._state.paused = True

    async def resume(self) -> None:
        await trio.lowlevel.checkpoint()
        self._state.paused = False
        self._state.ring_claimers()

    async def is_paused(self) -> bool:
        await trio.lowlevel.checkpoint()
        return self._state.paused

    async def counts(self) -> dict[JobStatus, int]:
        await trio.lowlevel.checkpoint()
        state = self._state
        result = {s: len(state.finished[s]) for s in FINISHED}
        result[JobStatus.WAITING] = len(state.wait) + len(state.prioritized)
        result[JobStatus.ACTIVE] = len(state.active)
        result[JobStatus.DELAYED] = sum(
            1 for r in state.jobs.values() if r.status == JobStatus.DELAYED
        )
        return result

    async def waiting_by_priority(self) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        state = self._state
        positive = sum(1 for i in state.prioritized if state.jobs[i].priority > 0)
        return {
            "positive": positive,
            "zero": len(state.wait),
            "negative": len(state.prioritized) - positive,
        }

    async def retry_failed(self, limit: int) -> int:
        await trio.lowlevel.checkpoint()
        return self._state.retry_failed(limit)

    async def clean(self, status: JobStatus, *, older_than_s: float | None, limit: int) -> int:
        await trio.lowlevel.checkpoint()
        if status not in FINISHED:
            raise ValueError(f"only finished jobs are cleaned, not {status.value} ones")
        return self._state.clean(status, older_than_s, limit)

    async def workers(self) -> list[WorkerInfo]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        workers = self._state.workers
        for worker_id, (_, expires) in list(workers.items()):
            if expires <= now:
                del workers[worker_id]
        return sorted((info for info, _ in workers.values()), key=lambda w: w.id)

    async def statistics(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {}
