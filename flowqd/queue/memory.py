"""The embedded broker: the Broker contract in process, for ``--role all`` without Redis.

Same semantics as the Redis broker, nothing durable. All state lives in this
object and changes only between checkpoints (trio is single-threaded), so
every operation is atomic like a Lua script. Time: lock deadlines, delays,
heartbeats and retention use ``trio.current_time()`` (so tests can use a mock
clock); job timestamps use the wall clock. Data goes through orjson on the
way in, as it would through Redis, so a value the Redis broker would reject
is rejected here too, and no caller can mutate a stored record.

Event ids are ``"<n>-0"`` from one counter per broker, so ids stay ordered
across a job's retries, like Redis stream ids.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs
import orjson
import trio

from flowqd.config import QueueConfig
from flowqd.jobs import (
    CANCELLED,
    END,
    ERROR,
    Claimed,
    EmittedEvent,
    Event,
    Job,
    JobSpec,
    JobStatus,
    Outcome,
    OutcomeKind,
    WorkerInfo,
    new_job_id,
    through_terminal,
)
from flowqd.queue import policy
from flowqd.queue.base import Broker, JobIdTaken

_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
# How often retention by age runs (besides the stalled check interval).
_RETENTION_INTERVAL_S = 5.0


def _copy(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


@attrs.define(eq=False)
class _Rec:
    id: str
    flow_id: str
    flow_version: int
    inputs: dict[str, Any]
    status: JobStatus
    max_attempts: int
    timeout_s: float | None
    owner: str | None
    created_at: float
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    nodes: list[dict[str, Any]] = attrs.Factory(list)
    worker: str | None = None
    cancel: str | None = None  # the cancel reason once requested
    token: str | None = None
    lock_deadline: float = 0.0
    stalls: int = 0
    due: float = 0.0

    def to_job(self) -> Job:
        return Job(
            id=self.id,
            flow_id=self.flow_id,
            flow_version=self.flow_version,
            inputs=_copy(self.inputs),
            status=self.status,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            timeout_s=self.timeout_s,
            owner=self.owner,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            result=_copy(self.result),
            error=_copy(self.error),
            nodes=_copy(self.nodes),
            worker=self.worker,
            cancel_requested=self.cancel is not None,
        )


def _event_key(event: Event) -> tuple[int, int]:
    return policy.parse_event_id(event.id)


class MemoryBroker(Broker):
    """In-process broker. Create it, run ``run()`` like any broker's."""

    def __init__(self, queue: QueueConfig) -> None:
        self._cfg = queue
        self._jobs: dict[str, _Rec] = {}
        self._wait: deque[str] = deque()  # newest left, next to claim right
        self._active: dict[str, None] = {}
        self._delayed: list[tuple[float, int, str]] = []  # heap; stale entries skipped
        self._seq = itertools.count()
        self._finished: dict[JobStatus, dict[str, float]] = {s: {} for s in _FINISHED}
        self._events: dict[str, list[Event]] = {}
        self._event_ids = itertools.count(1)
        self._event_waiters: dict[str, trio.Event] = {}
        self._ring = trio.Event()  # idle claimers wait on it; replaced after each ring
        self._schedule = trio.Event()  # maintenance waits on it for earlier deadlines
        self._paused = False
        self._cancel_callbacks: list[Callable[[str], None]] = []
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}
        self._flows: dict[str, int] = {}
        self._flow_seq: dict[str, int] = {}
        self._flow_docs: dict[tuple[str, int], bytes] = {}
        self._secrets: dict[str, bytes] = {}
        self._rates: dict[str, float] = {}  # rate limit name -> theoretical arrival time

    # ---- lifecycle -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    # ---- producers -------------------------------------------------------

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        await trio.lowlevel.checkpoint()
        prepared = [(spec, _copy(spec.inputs)) for spec in specs]  # may raise before any change
        taken = [n for n, spec in enumerate(specs) if spec.job_id in self._jobs
                 and self._jobs[spec.job_id].owner != spec.owner]
        if taken:
            raise JobIdTaken(taken)
        ids: list[str] = []
        now = trio.current_time()
        for spec, inputs in prepared:
            job_id = spec.job_id or new_job_id()
            ids.append(job_id)
            if job_id in self._jobs:
                continue
            rec = _Rec(
                id=job_id,
                flow_id=spec.flow_id,
                flow_version=spec.flow_version,
                inputs=inputs,
                status=JobStatus.WAITING,
                max_attempts=spec.max_attempts or self._cfg.max_attempts,
                timeout_s=spec.timeout_s,
                owner=spec.owner,
                created_at=time.time(),
            )
            self._jobs[job_id] = rec
            if spec.delay_s > 0:
                self._delay(rec, now + spec.delay_s)
            else:
                self._wait.appendleft(job_id)
                self._ring_claimers()
        return ids

    async def get_job(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        rec = self._jobs.get(job_id)
        return rec.to_job() if rec else None

    async def list_jobs(self, status: JobStatus, *, offset: int = 0, limit: int = 50) -> list[Job]:
        await trio.lowlevel.checkpoint()
        ids: list[str]
        if status == JobStatus.WAITING:
            ids = list(self._wait)
        elif status == JobStatus.ACTIVE:
            ids = list(reversed(self._active))
        elif status == JobStatus.DELAYED:
            recs = [r for r in self._jobs.values() if r.status == JobStatus.DELAYED]
            ids = [r.id for r in sorted(recs, key=lambda r: r.due, reverse=True)]
        else:
            ids = list(reversed(self._finished[status]))
        return [self._jobs[i].to_job() for i in ids[offset : offset + limit] if i in self._jobs]

    async def cancel(self, job_id: str, *, reason: str = "cancelled") -> Job | None:
        await trio.lowlevel.checkpoint()
        rec = self._jobs.get(job_id)
        if rec is None:
            return None
        reason = reason or "cancelled"
        if rec.status in (JobStatus.WAITING, JobStatus.DELAYED):
            if rec.status == JobStatus.WAITING:
                self._wait.remove(job_id)
            rec.cancel = reason
            self._finish_cancelled(rec)
        elif rec.status == JobStatus.ACTIVE:
            if rec.cancel is None:
                rec.cancel = reason
            for callback in list(self._cancel_callbacks):
                callback(job_id)
        return rec.to_job()

    async def retry(self, job_id: str) -> Job | None:
        await trio.lowlevel.checkpoint()
        rec = self._jobs.get(job_id)
        if rec is None:
            return None
        if rec.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            self._finished[rec.status].pop(job_id, None)
            self._events.pop(job_id, None)
            rec.status = JobStatus.WAITING
            rec.attempts = rec.stalls = 0
            rec.started_at = rec.finished_at = rec.result = rec.error = None
            rec.worker = rec.cancel = rec.token = None
            rec.nodes = []
            self._wait.appendleft(job_id)
            self._ring_claimers()
        return rec.to_job()

    async def read_events(self, job_id: str, *, after: str = "0", count: int = 1000) -> list[Event]:
        await trio.lowlevel.checkpoint()
        events = self._events.get(job_id, [])
        start = bisect.bisect_right(events, policy.parse_event_id(after), key=_event_key)
        return events[start : start + count]

    def watch_event_batches(self, job_id: str, *, after: str = "0"
                            ) -> AsyncIterator[list[Event]]:
        return self._watch(job_id, policy.parse_event_id(after))

    async def _watch(self, job_id: str, cursor: tuple[int, int]) -> AsyncIterator[list[Event]]:
        events = self._events.get(job_id, [])
        cursor = policy.resume_point(cursor, _event_key(events[-1]) if events else None)
        while True:
            events = self._events.get(job_id, [])
            start = bisect.bisect_right(events, cursor, key=_event_key)
            if start == len(events):
                waiter = self._event_waiters.get(job_id)
                if waiter is None:
                    waiter = self._event_waiters[job_id] = trio.Event()
                await waiter.wait()
                continue
            batch, ended = through_terminal(events[start:])
            cursor = _event_key(batch[-1])
            yield batch
            if ended:
                return
            await trio.lowlevel.checkpoint()

    # ---- queue control and introspection ---------------------------------

    async def pause(self) -> None:
        await trio.lowlevel.checkpoint()
        self._paused = True

    async def resume(self) -> None:
        await trio.lowlevel.checkpoint()
        self._paused = False
        self._ring_claimers()

    async def is_paused(self) -> bool:
        await trio.lowlevel.checkpoint()
        return self._paused

    async def counts(self) -> dict[JobStatus, int]:
        await trio.lowlevel.checkpoint()
        result = {s: len(self._finished[s]) for s in _FINISHED}
        result[JobStatus.WAITING] = len(self._wait)
        result[JobStatus.ACTIVE] = len(self._active)
        result[JobStatus.DELAYED] = sum(
            1 for r in self._jobs.values() if r.status == JobStatus.DELAYED
        )
        return result

    async def workers(self) -> list[WorkerInfo]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        for worker_id, (_, expires) in list(self._workers.items()):
            if expires <= now:
                del self._workers[worker_id]
        return sorted((info for info, _ in self._workers.values()), key=lambda w: w.id)

    # ---- workers ---------------------------------------------------------

    async def claim(
        self, worker_id: str, max_jobs: int, *, lock_ttl_s: float, block_s: float
    ) -> list[Claimed]:
        await trio.lowlevel.checkpoint()
        claimed = self._claim_now(worker_id, max_jobs, lock_ttl_s)
        if claimed or block_s <= 0:
            return claimed
        ring = self._ring
        with trio.move_on_after(block_s):
            await ring.wait()
        # Nothing awaits between claiming and returning: cancellation cannot lose jobs.
        return self._claim_now(worker_id, max_jobs, lock_ttl_s)

    async def renew(
        self, worker_id: str, held: Mapping[str, str], *, lock_ttl_s: float
    ) -> tuple[set[str], set[str]]:
        await trio.lowlevel.checkpoint()
        deadline = trio.current_time() + lock_ttl_s
        lost: set[str] = set()
        cancelled: set[str] = set()
        for job_id, token in held.items():
            rec = self._jobs.get(job_id)
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
        # Encode everything first: unserialisable data raises before any change.
        copied_events = [(e.job_id, e.name, _copy(e.data)) for e in events]
        copied = [(o, _copy(o.result), _copy(o.error), _copy(o.nodes)) for o in outcomes]
        for job_id, name, data in copied_events:
            rec = self._jobs.get(job_id)
            # Never after the terminal event; a zombie's events for a re-claimed
            # job are accepted (at-least-once), its outcome is not.
            if rec is not None and rec.status == JobStatus.ACTIVE:
                self._append_event(job_id, name, data)
        return [self._record(*item) for item in copied]

    async def watch_cancels(
        self,
        on_cancel: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._cancel_callbacks.append(on_cancel)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._cancel_callbacks.remove(on_cancel)

    async def run_maintenance(
        self,
        *,
        stalled_interval_s: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        now = trio.current_time()
        next_stalled = now + stalled_interval_s
        next_retention = now + _RETENTION_INTERVAL_S
        while True:
            now = trio.current_time()
            self._promote_due(now)
            if now >= next_stalled:
                self._check_stalled(now)
                next_stalled = now + stalled_interval_s
            if now >= next_retention:
                self._retain_by_age()
                next_retention = now + _RETENTION_INTERVAL_S
            wake_at = min(next_stalled, next_retention, self._next_due())
            schedule = self._schedule
            with trio.move_on_at(wake_at):
                await schedule.wait()

    async def heartbeat(self, info: WorkerInfo, *, ttl_s: float) -> None:
        await trio.lowlevel.checkpoint()
        self._workers[info.id] = (info, trio.current_time() + ttl_s)

    # ---- flows and credentials ---------------------------------------------

    async def put_flow(self, flow_id: str, document: bytes) -> int:
        await trio.lowlevel.checkpoint()
        current = self._flows.get(flow_id)
        if current is not None and self._flow_docs[(flow_id, current)] == document:
            return current
        version = self._flow_seq.get(flow_id, 0) + 1
        self._flow_seq[flow_id] = version
        self._flow_docs[(flow_id, version)] = bytes(document)
        self._flows[flow_id] = version
        return version

    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        await trio.lowlevel.checkpoint()
        if version is None:
            version = self._flows.get(flow_id)
            if version is None:
                return None
        document = self._flow_docs.get((flow_id, version))
        return None if document is None else (version, document)

    async def list_flows(self) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return dict(self._flows)

    async def delete_flow(self, flow_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._flows.pop(flow_id, None) is not None

    async def put_secret(self, name: str, sealed: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._secrets[name] = bytes(sealed)

    async def get_secret(self, name: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._secrets.get(name)

    async def list_secrets(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self._secrets)

    async def delete_secret(self, name: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._secrets.pop(name, None) is not None

    async def rate_limit(self, name: str, *, per_minute: int, burst: int) -> float:
        # The same cell rate algorithm as rate_limit.lua, on trio's clock.
        await trio.lowlevel.checkpoint()
        now, interval = trio.current_time(), 60.0 / per_minute
        tat = max(self._rates.get(name, now), now)
        allowed_at = tat - interval * (burst - 1)
        if now < allowed_at:
            return allowed_at - now
        self._rates[name] = tat + interval
        return 0.0

    # ---- internals -----------------------------------------------------------

    def _ring_claimers(self) -> None:
        self._ring.set()
        self._ring = trio.Event()

    def _wake_maintenance(self) -> None:
        self._schedule.set()
        self._schedule = trio.Event()

    def _delay(self, rec: _Rec, due: float) -> None:
        rec.status = JobStatus.DELAYED
        rec.due = due
        heapq.heappush(self._delayed, (due, next(self._seq), rec.id))
        self._wake_maintenance()

    def _next_due(self) -> float:
        while self._delayed:
            due, _, job_id = self._delayed[0]
            rec = self._jobs.get(job_id)
            if rec is not None and rec.status == JobStatus.DELAYED and rec.due == due:
                return due
            heapq.heappop(self._delayed)
        return float("inf")

    def _promote_due(self, now: float) -> None:
        promoted = False
        while self._next_due() <= now:
            _, _, job_id = heapq.heappop(self._delayed)
            self._jobs[job_id].status = JobStatus.WAITING
            self._wait.appendleft(job_id)
            promoted = True
        if promoted:
            self._ring_claimers()

    def _claim_now(self, worker_id: str, max_jobs: int, lock_ttl_s: float) -> list[Claimed]:
        if self._paused:
            return []
        claimed: list[Claimed] = []
        deadline = trio.current_time() + lock_ttl_s
        while self._wait and len(claimed) < max_jobs:
            rec = self._jobs.get(self._wait.pop())
            if rec is None or rec.status != JobStatus.WAITING:
                continue
            if rec.cancel is not None:
                self._finish_cancelled(rec)
                continue
            rec.status = JobStatus.ACTIVE
            rec.attempts += 1
            rec.started_at = time.time()
            rec.worker = worker_id
            rec.token = uuid.uuid4().hex
            rec.lock_deadline = deadline
            self._active[rec.id] = None
            claimed.append(Claimed(job=rec.to_job(), token=rec.token))
        return claimed

    def _record(
        self, outcome: Outcome, result: Any, error: dict[str, Any] | None, nodes: list[Any]
    ) -> bool:
        rec = self._jobs.get(outcome.job_id)
        if rec is None or rec.status != JobStatus.ACTIVE or rec.token != outcome.token:
            return False
        self._release(rec)
        if nodes:
            rec.nodes = nodes
        kind = outcome.kind
        if kind == OutcomeKind.COMPLETED:
            rec.result = result
            self._terminal(rec, JobStatus.COMPLETED, END, result)
        elif kind == OutcomeKind.FAILED:
            rec.error = error
            if outcome.retry and rec.cancel is None and rec.attempts < rec.max_attempts:
                delay = policy.retry_delay_s(self._cfg.backoff_s, rec.attempts, random.random())
                self._delay(rec, trio.current_time() + delay)
            else:
                self._terminal(rec, JobStatus.FAILED, ERROR, policy.error_event_data(error))
        elif kind == OutcomeKind.CANCELLED:
            if rec.cancel is None:
                rec.cancel = policy.cancel_reason(error) or "cancelled"
            self._finish_cancelled(rec)
        elif rec.cancel is not None:  # REQUEUE of a job cancelled meanwhile
            self._finish_cancelled(rec)
        else:
            rec.attempts -= 1
            rec.status = JobStatus.WAITING
            self._wait.append(rec.id)
            self._ring_claimers()
        return True

    def _release(self, rec: _Rec) -> None:
        self._active.pop(rec.id, None)
        rec.token = None

    def _check_stalled(self, now: float) -> None:
        for job_id in [i for i in self._active if self._jobs[i].lock_deadline <= now]:
            rec = self._jobs[job_id]
            self._release(rec)
            rec.stalls += 1
            if rec.cancel is not None:
                self._finish_cancelled(rec)
            elif rec.stalls > self._cfg.max_stalled:
                rec.error = policy.stalled_error()
                self._terminal(rec, JobStatus.FAILED, ERROR, policy.error_event_data(rec.error))
            else:
                rec.status = JobStatus.WAITING
                self._wait.append(job_id)  # next in line: it has waited longest
                self._ring_claimers()

    def _finish_cancelled(self, rec: _Rec) -> None:
        reason = rec.cancel or "cancelled"
        rec.error = policy.cancelled_error(reason)
        self._terminal(rec, JobStatus.CANCELLED, CANCELLED, {"reason": reason})

    def _terminal(self, rec: _Rec, status: JobStatus, event: str, data: Any) -> None:
        rec.status = status
        rec.finished_at = time.time()
        self._append_event(rec.id, event, data)
        finished = self._finished[status]
        finished[rec.id] = trio.current_time()
        keep = self._cfg.remove_on_count
        while keep and len(finished) > keep:
            self._forget(next(iter(finished)))

    def _forget(self, job_id: str) -> None:
        rec = self._jobs.pop(job_id)
        self._finished[rec.status].pop(job_id, None)
        self._events.pop(job_id, None)

    def _retain_by_age(self) -> None:
        cutoff = trio.current_time() - self._cfg.remove_on_age_s
        for finished in self._finished.values():
            for job_id, at in list(finished.items()):
                if at > cutoff:
                    break
                self._forget(job_id)

    def _append_event(self, job_id: str, name: str, data: Any) -> None:
        events = self._events.setdefault(job_id, [])
        events.append(Event(id=f"{next(self._event_ids)}-0", name=name, data=data))
        excess = len(events) - self._cfg.event_stream_max_len
        if excess > 0:
            del events[:excess]
        waiter = self._event_waiters.pop(job_id, None)
        if waiter is not None:
            waiter.set()
