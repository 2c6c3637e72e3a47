"""What each part of flowqd needs from a queue backend, one small interface per role.

Each backend (``queue/memory``, ``queue/redis``) implements every role as a
small class of its own over one shared state; ``queue.Broker`` bundles them
for the daemon, and a part of flowqd depends only on the roles it uses:

- ``WorkQueue``: the worker (claim, renew, flush, cancel notices, maintenance,
  heartbeats).
- ``JobStore``: jobs and their events, for the API (enqueue, read, cancel,
  retry, watch).
- ``QueueControl``: pause and resume, counts, live workers, figures.
- ``FlowDocuments`` and ``SealedSecrets``: the small documents main and
  workers share (flow versions, encrypted credentials).
- ``RateLimiter``: request budgets shared by every main process.
- ``Conversations``: chat memory, read by workers and the chat-message routes;
  turns are written only with a completed outcome (``Outcome.turn``).
- ``Schedules``: scheduled flows (their definitions, due times, and the
  atomic claim of a tick that every main process's scheduler races for).

Semantics every backend keeps (the contract suite in tests/queue runs them
on both backends, through these roles; the job rules themselves, delays and
messages, are ``policy.py``'s):

- At-least-once execution, exactly one recorded outcome per job: ``flush``
  refuses an outcome whose lock token is not the job's current one.
- A job claimed by a worker that stops renewing is back in ``waiting`` after
  its lock expires (found by ``run_maintenance`` of any live worker), its
  attempt counted; past ``queue.max_stalled`` stalls it fails with reason
  ``stalled``.
- Each run of a job to its end writes exactly one terminal event (``end``,
  ``error`` or ``cancelled``), together with the outcome; automatic retries
  within a run write none. A retry (``JobStore.retry``,
  ``QueueControl.retry_failed``) keeps the stream and appends ``retried``
  right after that terminal event, so every terminal event but the last is
  followed by ``retried``, and once the job has ended the stream's last
  entry is the current run's terminal event. Attempts go on counting.
- A cancelled job never runs again: a queued one is cancelled at once, a
  running one is flagged and its worker told (``watch_cancels``); ``renew``
  also reports it, so a lost notice costs at most one renewal interval.
- Every method that talks to the backend raises ``BrokerUnavailable`` when
  it cannot, within the configured command timeout; none blocks forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs
import trio

from flowqd.jobs import (
    Claimed,
    ConversationKey,
    EmittedEvent,
    Event,
    Job,
    JobSpec,
    JobStatus,
    Outcome,
    Turn,
    WorkerInfo,
)


class WorkQueue(Protocol):
    """What a worker needs: claim jobs, keep their locks, report what they did."""

    async def ping(self) -> None:
        """Return when the backend answers; raise BrokerUnavailable otherwise."""

    async def is_paused(self) -> bool:
        """Whether the queue is paused (claims return nothing while it is)."""

    async def claim(
        self, worker_id: str, max_jobs: int, *, lock_ttl_s: float, block_s: float
    ) -> list[Claimed]:
        """Claim up to ``max_jobs`` waiting jobs, waiting up to ``block_s`` for the first.

        Returns [] on timeout or while paused. Cancellation-safe: a cancelled
        claim leaves no job claimed-but-unreported (or the stalled check
        recovers it). Jobs already flagged cancelled are finished as cancelled
        instead of being returned.
        """

    async def renew(
        self, worker_id: str, held: Mapping[str, str], *, lock_ttl_s: float
    ) -> tuple[set[str], set[str]]:
        """Extend the locks of ``held`` (job id -> token) in one call.

        Returns ``(lost, cancelled)``: jobs whose lock this worker no longer
        holds (stop them, report nothing) and jobs flagged for cancellation.
        """

    async def flush(
        self, events: Sequence[EmittedEvent], outcomes: Sequence[Outcome]
    ) -> list[bool]:
        """Append ``events`` in order, then record ``outcomes``: one round trip.

        Returns, per outcome, whether it was recorded (False: the token is no
        longer the job's lock, the outcome is refused).
        """

    async def watch_cancels(
        self,
        on_cancel: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_cancel(job_id)`` for each cancel notice; runs until cancelled."""

    async def run_maintenance(
        self,
        *,
        stalled_interval_s: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stalled check (one winner per interval), delayed promotion, retention."""

    async def heartbeat(self, info: WorkerInfo, *, ttl_s: float) -> None:
        """Record a live worker; it disappears from ``workers()`` after ``ttl_s``."""


class JobStore(Protocol):
    """Jobs and their events, as producers and readers see them."""

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        """Add jobs (one round trip for the batch); return their ids in order.

        A spec whose ``job_id`` already exists with the same ``owner`` adds
        nothing and returns that id (a resend is idempotent). If any exists
        with another owner, raises JobIdTaken and adds none of ``specs``.
        """

    async def get_job(self, job_id: str) -> Job | None:
        """The job's record, or None if unknown or removed by retention."""

    async def list_jobs(self, status: JobStatus, *, offset: int = 0, limit: int = 50) -> list[Job]:
        """Jobs in one state, newest first."""

    async def cancel(self, job_id: str, *, reason: str = "cancelled") -> Job | None:
        """Cancel a job. Waiting/delayed: cancelled now, terminal event written.

        Active: flagged and its worker notified; the worker records the outcome.
        Terminal: unchanged. Returns the job as it now stands, None if unknown.
        """

    async def retry(self, job_id: str) -> Job | None:
        """Put a failed or cancelled job back in ``waiting``; other states: unchanged.

        The attempt count goes on (the next claim is attempt n+1; when every
        attempt was used, ``max_attempts`` grows to allow this one), the
        stall count starts again, the stream keeps the earlier runs' events
        and gets ``retried`` ``{"attempt": n+1}``. Returns the job as it now
        stands, None if unknown.
        """

    async def promote(self, job_id: str) -> Job | None:
        """Run a delayed job now (to ``waiting``); other states: unchanged. None if unknown."""

    async def delete_job(self, job_id: str) -> JobStatus | None:
        """Forget a job: its record and its events. Returns the status it had.

        An active job is refused (returns ``ACTIVE``, nothing changes): its
        worker holds it; cancel it first. None when unknown. Watchers of a
        deleted queued job get no terminal event (their own deadline ends them).
        """

    async def read_events(self, job_id: str, *, after: str = "0", count: int = 1000) -> list[Event]:
        """Up to ``count`` events after event id ``after`` ("0": from the start)."""

    def open_event_watch(
        self, job_id: str, *, after: str = "0"
    ) -> AbstractAsyncContextManager[AsyncIterator[list[Event]]]:
        """Watch the job's events after ``after``: ``async with`` it, then iterate batches.

        A batch is what arrived together (never empty), so a consumer can
        answer with one write per batch instead of one per event. The last
        batch ends with the terminal event. Many concurrent watchers share the
        backend's reader (no connection each); leaving the block releases the
        watch. The caller bounds the wait with its own cancel scope. A
        malformed ``after`` raises ``ValueError`` on entering. An ``after``
        past the stream's last event is taken as that event: the watch still
        ends with the terminal event when the job ends.
        """


class QueueControl(Protocol):
    """Pausing the queue and looking at it as a whole."""

    async def pause(self) -> None:
        """Stop workers from claiming new jobs (running ones go on)."""

    async def resume(self) -> None:
        """Let workers claim again."""

    async def is_paused(self) -> bool:
        """Whether the queue is paused."""

    async def counts(self) -> dict[JobStatus, int]:
        """Number of jobs per state."""

    async def waiting_by_priority(self) -> dict[str, int]:
        """Waiting jobs by the sign of their priority: ``positive``, ``zero`` and
        ``negative`` (claimed in that order), summing to ``counts()``'s waiting."""

    async def retry_failed(self, limit: int) -> int:
        """Retry (as ``JobStore.retry``) up to ``limit`` failed jobs, oldest first.

        Bounded work per call: callers loop, at most as many times as there
        were failed jobs to begin with (a retried job may fail again). Returns
        how many were retried.
        """

    async def clean(self, status: JobStatus, *, older_than_s: float | None, limit: int) -> int:
        """Forget up to ``limit`` jobs (records and events) that ended in ``status``
        (completed, failed or cancelled) at least ``older_than_s`` ago (None: any),
        oldest first. Bounded work per call: callers loop while it returns
        ``limit``. Returns how many were removed; ValueError for another status.
        """

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is recent."""

    async def statistics(self) -> dict[str, Any]:
        """Backend figures for metrics (connections held, and the like)."""


class FlowDocuments(Protocol):
    """Versioned flow documents, shared by main (writes) and workers (reads)."""

    async def put_flow(self, flow_id: str, document: bytes) -> int:
        """Store a new version of a flow; return its version number (1, 2, ...)."""

    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        """A flow's document at ``version`` (None: current), or None."""

    async def list_flows(self) -> dict[str, int]:
        """Flow id -> current version."""

    async def delete_flow(self, flow_id: str) -> bool:
        """Forget a flow's current pointer (old versions stay for queued jobs)."""


class SealedSecrets(Protocol):
    """Encrypted credentials: the backend never sees a plaintext."""

    async def put_secret(self, name: str, sealed: bytes) -> None:
        """Store an encrypted credential."""

    async def get_secret(self, name: str) -> bytes | None:
        """The sealed value, or None when no credential has that name."""

    async def list_secrets(self) -> list[str]:
        """Names of the stored credentials."""

    async def delete_secret(self, name: str) -> bool:
        """Forget a credential; False when there was none."""


class RateLimiter(Protocol):
    """Request budgets shared by every process of a queue."""

    async def rate_limit(self, name: str, *, per_minute: int, burst: int) -> float:
        """Take one request from the rate limit ``name``, shared by every process.

        A generic cell rate limit: ``per_minute`` requests a minute on average,
        up to ``burst`` at once. Returns 0.0 when the request may go ahead,
        else the seconds until it would (the request is not counted).
        """


class Conversations(Protocol):
    """Chat memory: bounded conversations, kept ``memory.ttl_s`` after their last turn.

    Turns are appended only by ``WorkQueue.flush`` with a completed outcome
    (``Outcome.turn``), so a retried, stalled or refused run never writes one
    twice. Each conversation keeps at most ``memory.max_turns`` turns and
    ``memory.max_bytes`` of turn data, dropping its oldest turns first.
    """

    async def read_turns(self, key: ConversationKey, *, turns: int | None = None) -> list[Turn]:
        """The conversation's last ``turns`` turns (None: all kept), oldest first."""

    async def sessions(
        self, flow_id: str, *, owner: str | None, all_owners: bool = False, limit: int = 1000
    ) -> list[ConversationKey]:
        """The flow's conversations of ``owner`` (every owner's with ``all_owners``),
        most recently active first, at most ``limit``."""

    async def clear(self, key: ConversationKey) -> int:
        """Forget a conversation; returns how many turns it had."""


@attrs.frozen
class ScheduleEntry:
    """A stored schedule: its definition (opaque bytes here) and its state."""

    id: str
    document: bytes
    due_ms: int | None  # next tick, unix ms; None while paused
    last_ms: int | None  # the last tick claimed, None before the first


class Schedules(Protocol):
    """Schedule definitions and due times; ``claim`` is what makes a tick fire once.

    A paused schedule has no due time, so no claim can take it. Times are
    unix milliseconds (wall clock: every process of a deployment shares them).
    """

    async def put_schedule(self, schedule_id: str, document: bytes, due_ms: int) -> bool:
        """Store a schedule. An unchanged ``document`` changes nothing (its due time
        and paused state stay: loading the same flow files again is a no-op) and
        returns False. A new one is due at ``due_ms``; a changed one starts again
        at ``due_ms`` unless paused, and stays paused if it was."""

    async def get_schedule(self, schedule_id: str) -> ScheduleEntry | None:
        """The schedule, or None when unknown."""

    async def list_schedules(self) -> list[ScheduleEntry]:
        """Every schedule, by id."""

    async def pause_schedule(self, schedule_id: str) -> bool:
        """Drop its due time (no tick fires until resumed); False when unknown."""

    async def resume_schedule(self, schedule_id: str, due_ms: int) -> bool:
        """Make a paused schedule due at ``due_ms`` (a running one keeps its own);
        False when unknown."""

    async def delete_schedule(self, schedule_id: str) -> bool:
        """Forget a schedule (jobs it fired stay); False when unknown."""

    async def due_schedules(
        self, now_ms: int, *, limit: int
    ) -> tuple[list[ScheduleEntry], int | None]:
        """Up to ``limit`` running schedules due at or before ``now_ms``, earliest first,
        and the earliest due time after those (None: nothing else is due)."""

    async def claim_ticks(self, claims: Sequence[tuple[str, int, int]]) -> list[str]:
        """For each ``(id, due_ms, next_ms)``, atomically: when the schedule's due time is
        still ``due_ms``, make it ``next_ms`` and record ``due_ms`` as its last tick.
        Returns the ids so claimed, in order: a claim another process made first (or
        a pause, a delete, a change) refuses the stale one, so each tick is claimed once."""
