"""``WorkQueue`` of the embedded backend: what a worker needs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs
import trio

from flowqd.jobs import PROGRESS, Claimed, EmittedEvent, JobStatus, Outcome, WorkerInfo
from flowqd.logs import log_stalled
from flowqd.queue.memory.state import MemoryState, copy

# How often retention by age runs (besides the stalled check interval).
RETENTION_INTERVAL_S = 5.0


@attrs.define(eq=False)
class MemoryWork:
    _state: MemoryState

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def is_paused(self) -> bool:
        await trio.lowlevel.checkpoint()
        return self._state.paused

    async def claim(
        self, worker_id: str, max_jobs: int, *, lock_ttl_s: float, block_s: float
    ) -> list[Claimed]:
        await trio.lowlevel.checkpoint()
        state = self._state
        claimed = state.claim(worker_id, max_jobs, lock_ttl_s)
        if claimed or block_s <= 0:
            return claimed
        doorbell = state.doorbell
        with trio.move_on_after(block_s):
            await doorbell.wait()
        # Nothing awaits between claiming and returning: cancellation cannot lose jobs.
        return state.claim(worker_id, max_jobs, lock_ttl_s)

    async def renew(
        self, worker_id: str, held: Mapping[str, str], *, lock_ttl_s: float
    ) -> tuple[set[str], set[str]]:
        await trio.lowlevel.checkpoint()
        deadline = trio.current_time() + lock_ttl_s
        lost: set[str] = set()
        cancelled: set[str] = set()
        for job_id, token in held.items():
            rec = self._state.jobs.get(job_id)
            if rec is None or rec.status != JobStatus.ACTIVE or rec.token != token:
                lost.add(job_id)
                continue
            rec.lock_deadline = deadline
            if rec.cancel is not None:
                cancelled.add(job_id)
        return lost, cancelled

    async def flush(
        self, events: Sequence[EmittedEvent], outcomes: Sequence[Outcome]
    ) -> list[bool]:
        await trio.lowlevel.checkpoint()
        state = self._state
        # Encode everything first: unserialisable data raises before any change.
        copied_events = [(e.job_id, e.name, copy(e.data)) for e in events]
        copied = [(o, copy(o.result), copy(o.error), copy(o.nodes)) for o in outcomes]
        for job_id, name, data in copied_events:
            rec = state.jobs.get(job_id)
            # Never after the terminal event; a zombie's events for a re-claimed
            # job are accepted (at-least-once), its outcome is not.
            if rec is not None and rec.status == JobStatus.ACTIVE:
                state.append_event(job_id, name, data)
                if name == PROGRESS:
                    rec.progress = data
        return [state.record(*item) for item in copied]

    async def watch_cancels(
        self,
        on_cancel: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        callbacks = self._state.cancel_callbacks
        callbacks.append(on_cancel)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            callbacks.remove(on_cancel)

    async def run_maintenance(
        self,
        *,
        stalled_interval_s: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        state = self._state
        task_status.started()
        now = trio.current_time()
        next_stalled = now + stalled_interval_s
        next_retention = now + RETENTION_INTERVAL_S
        while True:
            now = trio.current_time()
            state.promote_due(now)
            if now >= next_stalled:
                log_stalled(state.cfg.name, *state.check_stalled(now))
                next_stalled = now + stalled_interval_s
            if now >= next_retention:
                state.retain_by_age()
                next_retention = now + RETENTION_INTERVAL_S
            wake_at = min(next_stalled, next_retention, state.next_due())
            schedule = state.schedule
            with trio.move_on_at(wake_at):
                await schedule.wait()

    async def heartbeat(self, info: WorkerInfo, *, ttl_s: float) -> None:
        await trio.lowlevel.checkpoint()
        self._state.workers[info.id] = (info, trio.current_time() + ttl_s)
