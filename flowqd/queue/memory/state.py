"""The embedded backend's state, and every transition of the job state machine.

All state lives in one ``MemoryState`` that every role object of the backend
shares. It changes only between checkpoints (trio is single-threaded), so each
transition below is atomic like a Lua script of the Redis backend, and each
is written once: the role classes (work.py, jobs.py, ...) call them.

Time: lock deadlines, delays, heartbeats and retention use
``trio.current_time()`` (so tests can use a mock clock); job timestamps use
the wall clock. Event ids are ``"<n>-0"`` from one counter per backend, so ids
stay ordered across a job's retries, like Redis stream ids.
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import orjson
import trio

from flowqd.config import QueueConfig
from flowqd.jobs import (
    CANCELLED,
    END,
    ERROR,
    RETRIED,
    Claimed,
    Event,
    Job,
    JobSpec,
    JobStatus,
    Outcome,
    OutcomeKind,
    WorkerInfo,
)
from flowqd.queue import policy
from flowqd.queue.memory.conversations import ConversationStore

FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def copy(value: Any) -> Any:
    """``value`` through JSON, as it would go through Redis: rejected alike, never shared."""
    return orjson.loads(orjson.dumps(value))


@attrs.define(eq=False)
class JobRecord:
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
    trace: str | None = None
    priority: int = 0
    score: int = 0  # a prioritised job's place in line, kept when it comes back
    progress: Any = None

    def to_job(self) -> Job:
        return Job(
            id=self.id,
            flow_id=self.flow_id,
            flow_version=self.flow_version,
            inputs=copy(self.inputs),
            status=self.status,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            timeout_s=self.timeout_s,
            owner=self.owner,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            result=copy(self.result),
            error=copy(self.error),
            nodes=copy(self.nodes),
            worker=self.worker,
            cancel_requested=self.cancel is not None,
            trace=self.trace,
            priority=self.priority,
            progress=copy(self.progress),
        )


def _new_deque() -> deque[str]:
    return deque()


@attrs.define(eq=False)
class MemoryState:
    cfg: QueueConfig
    jobs: dict[str, JobRecord] = attrs.Factory(dict)
    wait: deque[str] = attrs.Factory(_new_deque)  # priority 0: newest left, next to claim right
    # Waiting jobs of priority > 0 and < 0: heaps of (score, id) as the Redis
    # backend's sets (policy.priority_score); an entry is live while
    # ``prioritized`` maps its id to its score, else skipped.
    high: list[tuple[int, str]] = attrs.Factory(list)
    low: list[tuple[int, str]] = attrs.Factory(list)
    prioritized: dict[str, int] = attrs.Factory(dict)
    active: dict[str, None] = attrs.Factory(dict)
    delayed: list[tuple[float, int, str]] = attrs.Factory(list)  # heap; stale entries skipped
    finished: dict[JobStatus, dict[str, float]] = attrs.Factory(lambda: {s: {} for s in FINISHED})
    events: dict[str, list[Event]] = attrs.Factory(dict)
    event_waiters: dict[str, trio.Event] = attrs.Factory(dict)
    # Idle claimers wait on ``doorbell``, maintenance on ``schedule`` (for
    # earlier deadlines); each is replaced after it is set.
    doorbell: trio.Event = attrs.Factory(trio.Event)
    schedule: trio.Event = attrs.Factory(trio.Event)
    paused: bool = False
    cancel_callbacks: list[Callable[[str], None]] = attrs.Factory(list)
    workers: dict[str, tuple[WorkerInfo, float]] = attrs.Factory(dict)
    conversations: ConversationStore = attrs.Factory(ConversationStore)
    _seq: itertools.count[int] = attrs.Factory(itertools.count)
    _event_ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    _priority_seq: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    # ---- transitions ---------------------------------------------------------

    def add(self, job_id: str, spec: JobSpec, inputs: dict[str, Any], now: float) -> None:
        """enqueue: a new job, waiting or delayed."""
        rec = JobRecord(
            id=job_id,
            flow_id=spec.flow_id,
            flow_version=spec.flow_version,
            inputs=inputs,
            status=JobStatus.WAITING,
            max_attempts=spec.max_attempts or self.cfg.max_attempts,
            timeout_s=spec.timeout_s,
            owner=spec.owner,
            created_at=time.time(),
            trace=spec.trace,
            priority=spec.priority,
        )
        self.jobs[job_id] = rec
        if spec.delay_s > 0:
            self._delay(rec, now + spec.delay_s)
        else:
            self._to_wait(rec)
            self.ring_claimers()

    def claim(self, worker_id: str, max_jobs: int, lock_ttl_s: float) -> list[Claimed]:
        """waiting -> active, each under a fresh token (a cancelled one ends instead)."""
        if self.paused:
            return []
        claimed: list[Claimed] = []
        deadline = trio.current_time() + lock_ttl_s
        while len(claimed) < max_jobs:
            job_id = self._next_waiting()
            if job_id is None:
                break
            rec = self.jobs.get(job_id)
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
            self.active[rec.id] = None
            claimed.append(Claimed(job=rec.to_job(), token=rec.token))
        return claimed

    def record(
        self, outcome: Outcome, result: Any, error: dict[str, Any] | None, nodes: list[Any]
    ) -> bool:
        """active -> an outcome's state; False (nothing changes) unless the token holds the lock."""
        rec = self.jobs.get(outcome.job_id)
        if rec is None or rec.status != JobStatus.ACTIVE or rec.token != outcome.token:
            return False
        self._release(rec)
        if nodes:
            rec.nodes = nodes
        kind = outcome.kind
        if kind == OutcomeKind.COMPLETED:
            rec.result = result
            self._terminal(rec, JobStatus.COMPLETED, END, result)
            if outcome.turn is not None:  # with the outcome, as flush.lua does
                self.conversations.append(outcome.turn)
        elif kind == OutcomeKind.FAILED:
            rec.error = error
            if outcome.retry and rec.cancel is None and rec.attempts < rec.max_attempts:
                delay = policy.retry_delay_s(self.cfg.backoff_s, rec.attempts, policy.jitter())
                self._delay(rec, trio.current_time() + delay)
            else:
                self._terminal(rec, JobStatus.FAILED, ERROR, policy.error_event_data(error))
        elif kind == OutcomeKind.CANCELLED:
            if rec.cancel is None:
                rec.cancel = policy.cancel_reason(error) or policy.DEFAULT_CANCEL_REASON
            self._finish_cancelled(rec)
        elif rec.cancel is not None:  # REQUEUE of a job cancelled meanwhile
            self._finish_cancelled(rec)
        else:  # REQUEUE (shutdown drain): next in line, the attempt not counted
            rec.attempts -= 1
            rec.status = JobStatus.WAITING
            self._to_wait(rec, again=True)
            self.ring_claimers()
        return True

    def cancel(self, rec: JobRecord, reason: str) -> None:
        """Queued: cancelled now. Active: flagged, its worker told. Ended: unchanged."""
        if rec.status in (JobStatus.WAITING, JobStatus.DELAYED):
            if rec.status == JobStatus.WAITING:
                self._from_wait(rec)
            rec.cancel = reason
            self._finish_cancelled(rec)
        elif rec.status == JobStatus.ACTIVE:
            if rec.cancel is None:
                rec.cancel = reason
            for callback in list(self.cancel_callbacks):
                callback(rec.id)

    def retry(self, rec: JobRecord) -> bool:
        """failed or cancelled -> waiting: attempts go on, the stream gets ``retried``."""
        if rec.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            return False
        self.finished[rec.status].pop(rec.id, None)
        rec.status = JobStatus.WAITING
        rec.stalls = 0
        rec.max_attempts = max(rec.max_attempts, rec.attempts + 1)
        rec.started_at = rec.finished_at = rec.result = rec.error = None
        rec.worker = rec.cancel = rec.token = rec.progress = None
        rec.nodes = []
        self.append_event(rec.id, RETRIED, {"attempt": rec.attempts + 1})
        self._to_wait(rec)
        self.ring_claimers()
        return True

    def retry_failed(self, limit: int) -> int:
        """Up to ``limit`` failed jobs, oldest first, back to waiting as ``retry`` does."""
        oldest = list(itertools.islice(self.finished[JobStatus.FAILED], limit))
        return sum(self.retry(self.jobs[job_id]) for job_id in oldest)

    def promote(self, rec: JobRecord) -> None:
        """delayed -> waiting now (its heap entry goes stale)."""
        if rec.status == JobStatus.DELAYED:
            rec.status = JobStatus.WAITING
            self._to_wait(rec)
            self.ring_claimers()

    def delete(self, rec: JobRecord) -> JobStatus:
        """Forget a job that no worker holds; an active one is left as it is."""
        status = rec.status
        if status == JobStatus.ACTIVE:
            return status
        if status == JobStatus.WAITING:
            self._from_wait(rec)
        if status in FINISHED:
            self._forget(rec.id)
        else:  # delayed: its heap entry is skipped once the record is gone
            del self.jobs[rec.id]
            self.events.pop(rec.id, None)
        return status

    def clean(self, status: JobStatus, older_than_s: float | None, limit: int) -> int:
        """Forget up to ``limit`` jobs that ended in ``status`` at least ``older_than_s`` ago."""
        finished = self.finished[status]
        cutoff = float("inf") if older_than_s is None else trio.current_time() - older_than_s
        doomed = list(
            itertools.islice(itertools.takewhile(lambda i: finished[i] <= cutoff, finished), limit)
        )
        for job_id in doomed:
            self._forget(job_id)
        return len(doomed)

    def promote_due(self, now: float) -> None:
        """delayed -> waiting, for every job whose time has come."""
        promoted = False
        while self.next_due() <= now:
            _, _, job_id = heapq.heappop(self.delayed)
            rec = self.jobs[job_id]
            rec.status = JobStatus.WAITING
            self._to_wait(rec)
            promoted = True
        if promoted:
            self.ring_claimers()

    def check_stalled(self, now: float) -> tuple[list[str], list[str], list[str]]:
        """active past its lock deadline -> waiting (a stall counted), failed past max_stalled.

        Returns the ids requeued, failed and cancelled (a cancel was waiting), to be logged.
        """
        requeued: list[str] = []
        failed: list[str] = []
        cancelled: list[str] = []
        for job_id in [i for i in self.active if self.jobs[i].lock_deadline <= now]:
            rec = self.jobs[job_id]
            self._release(rec)
            rec.stalls += 1
            if rec.cancel is not None:
                self._finish_cancelled(rec)
                cancelled.append(job_id)
            elif rec.stalls > self.cfg.max_stalled:
                rec.error = policy.stalled_error()
                self._terminal(rec, JobStatus.FAILED, ERROR, policy.error_event_data(rec.error))
                failed.append(job_id)
            else:
                rec.status = JobStatus.WAITING
                self._to_wait(rec, again=True)  # next in line: it has waited longest
                self.ring_claimers()
                requeued.append(job_id)
        return requeued, failed, cancelled

    def retain_by_age(self) -> None:
        cutoff = trio.current_time() - self.cfg.remove_on_age_s
        for finished in self.finished.values():
            for job_id, at in list(finished.items()):
                if at > cutoff:
                    break
                self._forget(job_id)

    # ---- shared steps ----------------------------------------------------------

    def append_event(self, job_id: str, name: str, data: Any) -> None:
        events = self.events.setdefault(job_id, [])
        events.append(Event(id=f"{next(self._event_ids)}-0", name=name, data=data))
        excess = len(events) - self.cfg.event_stream_max_len
        if excess > 0:
            del events[:excess]
        waiter = self.event_waiters.pop(job_id, None)
        if waiter is not None:
            waiter.set()

    def waiting_ids(self) -> list[str]:
        """Waiting jobs, last to be claimed first (as the Redis backend lists them)."""
        by_score = sorted(self.prioritized.items(), key=lambda item: item[1], reverse=True)
        low = [i for i, _ in by_score if self.jobs[i].priority < 0]
        high = [i for i, _ in by_score if self.jobs[i].priority > 0]
        return [*low, *self.wait, *high]

    def ring_claimers(self) -> None:
        self.doorbell.set()
        self.doorbell = trio.Event()

    def next_due(self) -> float:
        while self.delayed:
            due, _, job_id = self.delayed[0]
            rec = self.jobs.get(job_id)
            if rec is not None and rec.status == JobStatus.DELAYED and rec.due == due:
                return due
            heapq.heappop(self.delayed)
        return float("inf")

    def _to_wait(self, rec: JobRecord, *, again: bool = False) -> None:
        """In line to be claimed, as ``to_wait`` in common.lua: priority 0 at the
        back of the list (``again``: at its front), others by their score (``again``:
        the one they had)."""
        if not rec.priority:
            if again:
                self.wait.append(rec.id)
            else:
                self.wait.appendleft(rec.id)
            return
        if not (again and rec.score):
            rec.score = policy.priority_score(rec.priority, next(self._priority_seq))
        self.prioritized[rec.id] = rec.score
        heapq.heappush(self.high if rec.priority > 0 else self.low, (rec.score, rec.id))

    def _from_wait(self, rec: JobRecord) -> None:
        if rec.priority:
            self.prioritized.pop(rec.id, None)
        else:
            self.wait.remove(rec.id)

    def _next_waiting(self) -> str | None:
        """Out of line, the next job to claim: higher priorities, then 0, then lower."""
        if self.high:
            job_id = self._pop_live(self.high)
            if job_id is not None:
                return job_id
        if self.wait:
            return self.wait.pop()
        return self._pop_live(self.low) if self.low else None

    def _pop_live(self, heap: list[tuple[int, str]]) -> str | None:
        while heap:
            score, job_id = heapq.heappop(heap)
            if self.prioritized.get(job_id) == score:
                del self.prioritized[job_id]
                return job_id
        return None

    def _delay(self, rec: JobRecord, due: float) -> None:
        rec.status = JobStatus.DELAYED
        rec.due = due
        heapq.heappush(self.delayed, (due, next(self._seq), rec.id))
        self.schedule.set()
        self.schedule = trio.Event()

    def _release(self, rec: JobRecord) -> None:
        self.active.pop(rec.id, None)
        rec.token = None

    def _finish_cancelled(self, rec: JobRecord) -> None:
        reason = rec.cancel or policy.DEFAULT_CANCEL_REASON
        rec.error = policy.cancelled_error(reason)
        self._terminal(rec, JobStatus.CANCELLED, CANCELLED, {"reason": reason})

    def _terminal(self, rec: JobRecord, status: JobStatus, event: str, data: Any) -> None:
        rec.status = status
        rec.finished_at = time.time()
        self.append_event(rec.id, event, data)
        finished = self.finished[status]
        finished[rec.id] = trio.current_time()
        keep = self.cfg.remove_on_count
        while keep and len(finished) > keep:
            self._forget(next(iter(finished)))

    def _forget(self, job_id: str) -> None:
        rec = self.jobs.pop(job_id)
        self.finished[rec.status].pop(job_id, None)
        self.events.pop(job_id, None)
