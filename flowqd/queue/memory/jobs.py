"""``JobStore`` of the embedded backend: jobs and their events."""

from __future__ import annotations

import bisect
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing

import attrs
import trio

from flowqd.jobs import Event, Job, JobSpec, JobStatus, new_job_id, parse_event_id, through_terminal
from flowqd.queue import policy
from flowqd.queue.base import JobIdTaken
from flowqd.queue.memory.state import MemoryState, copy


def _event_key(event: Event) -> tuple[int, int]:
    return parse_event_id(event.id)


@attrs.define(eq=False)
class MemoryJobs:
    _state: MemoryState

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        await trio.lowlevel.checkpoint()
        state = self._state
        prepared = [(spec, copy(spec.inputs)) for spec in specs]  # may raise before any change
        taken = [
            n
            for n, spec in enumerate(specs)
            if spec.job_id in state.jobs and state.jobs[spec.job_id].owner != spec.owner
        ]
        if taken:
            raise JobIdTaken(taken)
        ids: list[str] = []
        now = trio.current_time()
        for spec, inputs in prepared:
            job_id = spec.job_id or new_job_id()
            ids.append(job_id)
            if job_id not in state.jobs:
                state.add(job_id, spec, inputs, now)
        return ids

    async def get_job(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        rec = self._state.jobs.get(job_id)
        return rec.to_job() if rec else None

    async def list_jobs(self, status: JobStatus, *, offset: int = 0, limit: int = 50) -> list[Job]:
        await trio.lowlevel.checkpoint()
        state = self._state
        ids: list[str]
        if status == JobStatus.WAITING:
            ids = state.waiting_ids()
        elif status == JobStatus.ACTIVE:
            ids = list(reversed(state.active))
        elif status == JobStatus.DELAYED:
            recs = [r for r in state.jobs.values() if r.status == JobStatus.DELAYED]
            ids = [r.id for r in sorted(recs, key=lambda r: r.due, reverse=True)]
        else:
            ids = list(reversed(state.finished[status]))
        return [state.jobs[i].to_job() for i in ids[offset : offset + limit] if i in state.jobs]

    async def cancel(self, job_id: str, *, reason: str = "cancelled") -> Job | None:
        await trio.lowlevel.checkpoint()
        rec = self._state.jobs.get(job_id)
        if rec is None:
            return None
        self._state.cancel(rec, reason or policy.DEFAULT_CANCEL_REASON)
        return rec.to_job()

    async def retry(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        rec = self._state.jobs.get(job_id)
        if rec is None:
            return None
        self._state.retry(rec)
        return rec.to_job()

    async def promote(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        rec = self._state.jobs.get(job_id)
        if rec is None:
            return None
        self._state.promote(rec)
        return rec.to_job()

    async def delete_job(self, job_id: str) -> JobStatus | None:
        await trio.lowlevel.checkpoint()
        rec = self._state.jobs.get(job_id)
        return None if rec is None else self._state.delete(rec)

    async def read_events(self, job_id: str, *, after: str = "0", count: int = 1000) -> list[Event]:
        await trio.lowlevel.checkpoint()
        events = self._state.events.get(job_id, [])
        start = bisect.bisect_right(events, parse_event_id(after), key=_event_key)
        return events[start : start + count]

    def open_event_watch(
        self, job_id: str, *, after: str = "0"
    ) -> AbstractAsyncContextManager[AsyncIterator[list[Event]]]:
        # Parsed now: a bad id is the caller's ValueError at the call.
        return aclosing(self._watch(job_id, parse_event_id(after)))

    async def _watch(
        self, job_id: str, cursor: tuple[int, int]
    ) -> AsyncGenerator[list[Event], None]:
        state = self._state
        events = state.events.get(job_id, [])
        cursor = policy.resume_point(cursor, _event_key(events[-1]) if events else None)
        while True:
            events = state.events.get(job_id, [])
            start = bisect.bisect_right(events, cursor, key=_event_key)
            if start == len(events):
                waiter = state.event_waiters.get(job_id)
                if waiter is None:
                    waiter = state.event_waiters[job_id] = trio.Event()
                await waiter.wait()
                continue
            batch, ended = through_terminal(events[start:])
            cursor = _event_key(batch[-1])
            yield batch
            if ended:
                return
            await trio.lowlevel.checkpoint()
