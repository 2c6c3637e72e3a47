"""The broker contract: what the API and the worker need from a queue backend.

Two implementations keep it: the Redis broker (``queue/redis_broker.py``) and
the embedded in-process broker (``queue/memory.py``). One contract test suite
runs against both. Semantics (both brokers):

- At-least-once execution, exactly one recorded outcome per job: ``flush``
  refuses an outcome whose lock token is not the job's current one.
- A job claimed by a worker that stops renewing is back in ``waiting`` after
  its lock expires (found by ``run_maintenance`` of any live worker), its
  attempt counted; past ``queue.max_stalled`` stalls it fails with reason
  ``stalled``.
- Every job's event stream ends with exactly one terminal event (``end``,
  ``error`` or ``cancelled``), written together with the outcome.
- A cancelled job never runs again: a queued one is cancelled at once, a
  running one is flagged and its worker told (``watch_cancels``); ``renew``
  also reports it, so a lost notice costs at most one renewal interval.
- Every method that talks to the backend raises ``BrokerUnavailable`` when
  it cannot, within the configured command timeout; none blocks forever.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from flowqd.jobs import (
    Claimed,
    EmittedEvent,
    Event,
    Job,
    JobSpec,
    JobStatus,
    Outcome,
    WorkerInfo,
)
from flowqd.queue.roles import (
    FlowDocuments,
    JobStore,
    QueueControl,
    RateLimiter,
    SealedSecrets,
    WorkQueue,
)


class JobIdTaken(Exception):
    """``enqueue``: a spec's ``job_id`` names an existing job of another owner.

    Nothing of the call was added (the Redis broker checks and adds in one
    script per ``ENQUEUE_CHUNK`` specs). ``positions`` index the refused specs.
    """

    def __init__(self, positions: list[int]) -> None:
        super().__init__(f"job ids taken by another owner at positions {positions}")
        self.positions = positions


class Broker(abc.ABC):
    # ---- roles (see queue/roles.py): what each part of flowqd depends on ----

    @property
    def work(self) -> WorkQueue:
        return self

    @property
    def jobs(self) -> JobStore:
        return self

    @property
    def control(self) -> QueueControl:
        return self

    @property
    def flow_documents(self) -> FlowDocuments:
        return self

    @property
    def secrets(self) -> SealedSecrets:
        return self

    @property
    def limiter(self) -> RateLimiter:
        return self

    # ---- lifecycle -------------------------------------------------------

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work every process needs (event reader, subscriptions).

        Runs until cancelled; calls ``task_status.started()`` once usable.
        Survives backend outages by reconnecting with backoff.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise BrokerUnavailable otherwise."""

    # ---- producers -------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        """Add jobs (one round trip for the batch); return their ids in order.

        A spec whose ``job_id`` already exists with the same ``owner`` adds
        nothing and returns that id (a resend is idempotent). If any exists
        with another owner, raises JobIdTaken and adds none of ``specs``.
        """

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job | None:
        """The job's record, or None if unknown or removed by retention."""

    @abc.abstractmethod
    async def list_jobs(
        self, status: JobStatus, *, offset: int = 0, limit: int = 50
    ) -> list[Job]:
        """Jobs in one state, newest first."""

    @abc.abstractmethod
    async def cancel(self, job_id: str, *, reason: str = "cancelled") -> Job | None:
        """Cancel a job. Waiting/delayed: cancelled now, terminal event written.

        Active: flagged and its worker notified; the worker records the outcome.
        Terminal: unchanged. Returns the job as it now stands, None if unknown.
        """

    @abc.abstractmethod
    async def retry(self, job_id: str) -> Job | None:
        """Put a failed or cancelled job back in ``waiting`` with a fresh stream."""

    @abc.abstractmethod
    async def read_events(self, job_id: str, *, after: str = "0", count: int = 1000) -> list[Event]:
        """Up to ``count`` events after event id ``after`` ("0": from the start)."""

    @abc.abstractmethod
    def watch_event_batches(self, job_id: str, *, after: str = "0"
                            ) -> AsyncIterator[list[Event]]:
        """Yield the job's events after ``after`` in batches as they arrive.

        A batch is what arrived together (never empty), so a consumer can
        answer with one write per batch instead of one per event. The last
        batch ends with the terminal event. Many concurrent watchers share the
        broker's reader (no connection each). The caller bounds the wait with
        its own cancel scope. A malformed ``after`` raises ``ValueError`` at
        the call, not at the first iteration. An ``after`` past the stream's
        last event is taken as that event: the watch still ends with the
        terminal event when the job ends.
        """

    @asynccontextmanager
    async def open_event_watch(
        self, job_id: str, *, after: str = "0"
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        """``watch_event_batches`` as a block that releases the watch on leaving."""
        batches = self.watch_event_batches(job_id, after=after)
        try:
            yield batches
        finally:
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                await aclose()

    def watch_events(self, job_id: str, *, after: str = "0") -> AsyncIterator[Event]:
        """``watch_event_batches`` one event at a time."""
        return _one_at_a_time(self.watch_event_batches(job_id, after=after))

    # ---- queue control and introspection ---------------------------------

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop workers from claiming new jobs (running ones go on)."""

    @abc.abstractmethod
    async def resume(self) -> None: ...

    @abc.abstractmethod
    async def is_paused(self) -> bool: ...

    @abc.abstractmethod
    async def counts(self) -> dict[JobStatus, int]:
        """Number of jobs per state."""

    @abc.abstractmethod
    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is recent."""

    # ---- workers ---------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self, worker_id: str, max_jobs: int, *, lock_ttl_s: float, block_s: float
    ) -> list[Claimed]:
        """Claim up to ``max_jobs`` waiting jobs, waiting up to ``block_s`` for the first.

        Returns [] on timeout or while paused. Cancellation-safe: a cancelled
        claim leaves no job claimed-but-unreported (or the stalled check
        recovers it). Jobs already flagged cancelled are finished as cancelled
        instead of being returned.
        """

    @abc.abstractmethod
    async def renew(
        self, worker_id: str, held: Mapping[str, str], *, lock_ttl_s: float
    ) -> tuple[set[str], set[str]]:
        """Extend the locks of ``held`` (job id -> token) in one call.

        Returns ``(lost, cancelled)``: jobs whose lock this worker no longer
        holds (stop them, report nothing) and jobs flagged for cancellation.
        """

    @abc.abstractmethod
    async def flush(
        self, events: Sequence[EmittedEvent], outcomes: Sequence[Outcome]
    ) -> list[bool]:
        """Append ``events`` in order, then record ``outcomes``: one round trip.

        Returns, per outcome, whether it was recorded (False: the token is no
        longer the job's lock, the outcome is refused).
        """

    @abc.abstractmethod
    async def watch_cancels(
        self,
        on_cancel: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_cancel(job_id)`` for each cancel notice; runs until cancelled."""

    @abc.abstractmethod
    async def run_maintenance(
        self,
        *,
        stalled_interval_s: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stalled check (one winner per interval), delayed promotion, retention."""

    @abc.abstractmethod
    async def heartbeat(self, info: WorkerInfo, *, ttl_s: float) -> None:
        """Record a live worker; it disappears from ``workers()`` after ``ttl_s``."""

    # ---- flows and credentials (small documents shared by main and workers) ----

    @abc.abstractmethod
    async def put_flow(self, flow_id: str, document: bytes) -> int:
        """Store a new version of a flow; return its version number (1, 2, ...)."""

    @abc.abstractmethod
    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        """A flow's document at ``version`` (None: current), or None."""

    @abc.abstractmethod
    async def list_flows(self) -> dict[str, int]:
        """Flow id -> current version."""

    @abc.abstractmethod
    async def delete_flow(self, flow_id: str) -> bool:
        """Forget a flow's current pointer (old versions stay for queued jobs)."""

    @abc.abstractmethod
    async def put_secret(self, name: str, sealed: bytes) -> None:
        """Store an encrypted credential (the broker never sees plaintext)."""

    @abc.abstractmethod
    async def get_secret(self, name: str) -> bytes | None: ...

    @abc.abstractmethod
    async def list_secrets(self) -> list[str]: ...

    @abc.abstractmethod
    async def delete_secret(self, name: str) -> bool: ...

    # ---- small shared state -------------------------------------------------

    @abc.abstractmethod
    async def rate_limit(self, name: str, *, per_minute: int, burst: int) -> float:
        """Take one request from the rate limit ``name``, shared by every process.

        A generic cell rate limit: ``per_minute`` requests a minute on average,
        up to ``burst`` at once. Returns 0.0 when the request may go ahead,
        else the seconds until it would (the request is not counted).
        """

    async def statistics(self) -> dict[str, Any]:
        """Backend figures for metrics (connections held, and the like)."""
        return {}


async def _one_at_a_time(batches: AsyncIterator[list[Event]]) -> AsyncIterator[Event]:
    try:
        async for batch in batches:
            for event in batch:
                yield event
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
