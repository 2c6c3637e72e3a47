"""The worker: claims jobs, runs their flows, renews locks, reports outcomes.

Everything the worker does runs in the nursery of ``Worker.run``. Jobs run in
a nursery of their own whose cancel scope gets a deadline when the worker
drains: jobs that finish within the grace report their outcome, the rest are
cancelled and put back in the queue with their attempt not counted.

Round trips are the cost that matters, so nothing here talks to the broker
per job: claims take many jobs per call, events and outcomes are buffered and
written by one flusher in one call per scheduler pass, and one renewal call
covers every held lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio

from flowqd.config import Config
from flowqd.errors import BrokerUnavailable, CredentialError, FlowqdError
from flowqd.flows import FlowStore, NodeFailed, run_flow
from flowqd.jobs import Claimed, EmittedEvent, Outcome, OutcomeKind, WorkerInfo
from flowqd.metrics import Counter, Gauge, Histogram, Registry
from flowqd.queue.base import Broker
from flowqd.redis import Backoff

log = logging.getLogger("flowqd.worker")

# A claim call blocks this long at most, so a paused queue or a shutdown is
# noticed promptly even when no job arrives.
CLAIM_BLOCK_S = 1.0
CLAIM_BATCH_MAX = 500
HEARTBEAT_S = 5.0


@attrs.define(eq=False)
class _Held:
    """A job this worker holds, from claim until its outcome is recorded."""

    claimed: Claimed
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    # Why the scope was cancelled, if it was: "cancel" (asked by a user) or
    # "lost" (the lock went to someone else; report nothing).
    stop_reason: str | None = None


@attrs.define(eq=False)
class WorkerMetrics:
    registry: Registry
    jobs: Counter = attrs.field(init=False)
    duration: Histogram = attrs.field(init=False)
    running: Gauge = attrs.field(init=False)
    renewals: Counter = attrs.field(init=False)
    flushes: Counter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        add = self.registry.add
        self.jobs = add(Counter("flowqd_worker_jobs_total", "Jobs finished by outcome."))
        self.duration = add(Histogram("flowqd_worker_job_seconds", "Job run time by outcome."))
        self.running = add(Gauge("flowqd_worker_jobs_running", "Jobs held right now."))
        self.renewals = add(Counter("flowqd_worker_lock_renewals_total",
                                    "Lock renewal calls (one per interval for all held jobs)."))
        self.flushes = add(Counter("flowqd_worker_flushes_total",
                                   "Batched writes of events and outcomes."))


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@attrs.define(eq=False)
class Worker:
    broker: Broker
    flows: FlowStore
    config: Config
    metrics: WorkerMetrics
    credential: Callable[[str], Awaitable[str]]
    id: str = attrs.Factory(make_worker_id)

    _held: dict[str, _Held] = attrs.field(init=False, factory=dict)
    _events: list[EmittedEvent] = attrs.field(init=False, factory=list)
    _outcomes: list[Outcome] = attrs.field(init=False, factory=list)
    _flush_wanted: trio.Event = attrs.field(init=False, factory=trio.Event)
    _limiter: trio.CapacityLimiter = attrs.field(init=False)
    _flushed_all: trio.Event = attrs.field(init=False, factory=trio.Event)
    _closing: bool = attrs.field(init=False, default=False)
    _draining: bool = attrs.field(init=False, default=False)
    _broker_ok: bool = attrs.field(init=False, default=True)
    _started_at: float = attrs.field(init=False, factory=time.time)

    def __attrs_post_init__(self) -> None:
        self._limiter = trio.CapacityLimiter(self.config.worker.concurrency)
        self.metrics.running.read = lambda: len(self._held)

    # ---- public ------------------------------------------------------------

    async def run(
        self, shutdown: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take and run jobs until ``shutdown`` is set, then drain and return."""
        wc = self.config.worker
        async with trio.open_nursery() as nursery:
            await nursery.start(self.broker.watch_cancels, self._on_cancel_notice)
            await nursery.start(
                partial(self.broker.run_maintenance, stalled_interval_s=wc.stalled_interval_s)
            )
            nursery.start_soon(self._run_flusher, name="flowqd.worker.flusher")
            nursery.start_soon(self._run_renewals, name="flowqd.worker.renewals")
            nursery.start_soon(self._run_heartbeats, name="flowqd.worker.heartbeats")
            async with trio.open_nursery() as jobs:
                task_status.started()
                log.info("worker %s taking jobs (concurrency %d)", self.id, wc.concurrency)
                await self._claim_until(shutdown, jobs)
                self._draining = True
                if self._held:
                    log.info("draining: %d jobs running, grace %.1fs", len(self._held),
                             wc.shutdown_grace_s)
                # Shutdown is a deadline on the jobs' scope: what has not
                # finished by then is cancelled and requeued by _run_job.
                jobs.cancel_scope.deadline = trio.current_time() + wc.shutdown_grace_s
            await self._flush_before_exit()
            nursery.cancel_scope.cancel()
        log.info("worker %s stopped", self.id)

    async def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining: shutting down, not taking jobs"
        try:
            with trio.fail_after(1.0):
                await self.broker.ping()
                paused = await self.broker.is_paused()
        except (BrokerUnavailable, trio.TooSlowError):
            return False, "broker unreachable: check Redis at redis.url / REDIS_URL"
        if paused:
            return False, "queue paused: resume it to take jobs"
        return True, "taking jobs"

    # ---- claiming ------------------------------------------------------------

    async def _claim_until(self, shutdown: trio.Event, jobs: trio.Nursery) -> None:
        async with trio.open_nursery() as claim_nursery:
            async def stop_on_shutdown() -> None:
                await shutdown.wait()
                claim_nursery.cancel_scope.cancel()

            claim_nursery.start_soon(stop_on_shutdown)
            await self._claim_loop(jobs)

    async def _claim_loop(self, jobs: trio.Nursery) -> None:
        wc = self.config.worker
        backoff = Backoff()
        while True:
            if self._limiter.available_tokens == 0:
                # Full: wait for one job to end. Tokens are taken only for
                # jobs actually claimed, so this is the only acquire that waits.
                async with self._limiter:
                    pass
            free = min(int(self._limiter.available_tokens), CLAIM_BATCH_MAX)
            try:
                claimed = await self.broker.claim(
                    self.id, free, lock_ttl_s=wc.lock_ttl_s, block_s=CLAIM_BLOCK_S
                )
            except BrokerUnavailable as exc:
                if self._broker_ok:
                    log.warning("cannot claim jobs, retrying: %s", exc)
                self._broker_ok = False
                await backoff.wait()
                continue
            if not self._broker_ok:
                log.info("broker reachable again, taking jobs")
                self._broker_ok = True
            backoff.reset()
            for item in claimed:
                held = _Held(item)
                self._held[item.job.id] = held
                self._limiter.acquire_on_behalf_of_nowait(held)
                jobs.start_soon(self._run_job, held)

    # ---- running a job -----------------------------------------------------------

    async def _run_job(self, held: _Held) -> None:
        job = held.claimed.job
        started = time.monotonic()
        outcome: Outcome | None = None
        try:
            outcome = await self._execute(held)
        except trio.Cancelled:
            # The worker's drain deadline passed: put the job back, attempt
            # not counted. Recorded without awaiting; the final flush sends it.
            if held.stop_reason != "lost":
                outcome = self._outcome(held, OutcomeKind.REQUEUE)
            raise
        finally:
            self._limiter.release_on_behalf_of(held)
            if outcome is None:  # lock lost: another worker owns the job now
                self._held.pop(job.id, None)
            else:
                self._outcomes.append(outcome)
                self._flush_wanted.set()
                self.metrics.jobs.inc(outcome=outcome.kind.value)
                self.metrics.duration.observe(time.monotonic() - started,
                                              outcome=outcome.kind.value)

    async def _execute(self, held: _Held) -> Outcome | None:
        job = held.claimed.job
        timeout = job.timeout_s or self.config.worker.job_timeout_s

        def emit(name: str, data: Any) -> None:
            self._events.append(EmittedEvent(job.id, name, data))
            self._flush_wanted.set()

        emit("started", {"attempt": job.attempts, "worker": self.id})
        try:
            flow = await self.flows.get(job.flow_id, job.flow_version)
        except FlowqdError as exc:
            return self._failed(held, f"cannot load flow {job.flow_id!r}: {exc}", retry=True)
        if flow is None:
            return self._failed(
                held,
                f"flow {job.flow_id!r} version {job.flow_version} does not exist "
                "(deleted, or registered with another queue.name)",
                retry=False,
            )
        with held.scope:
            held.scope.deadline = trio.current_time() + timeout
            try:
                result = await run_flow(flow, job_id=job.id, inputs=job.inputs, emit=emit,
                                        credential=self.credential)
            except NodeFailed as exc:
                log.warning("job %s failed in node %s: %s", job.id, exc.node_id, exc.message)
                return self._outcome(
                    held, OutcomeKind.FAILED,
                    error={"message": exc.message, "node": exc.node_id,
                           "traceback": exc.traceback},
                    nodes=exc.nodes,
                )
            except CredentialError as exc:
                return self._failed(held, str(exc), retry=False)
            except Exception as exc:
                # A bug outside any node: record it on the job, keep the worker.
                log.exception("job %s crashed outside a node", job.id)
                return self._outcome(
                    held, OutcomeKind.FAILED,
                    error={"message": f"{type(exc).__name__}: {exc}", "node": None,
                           "traceback": traceback.format_exc()},
                )
            return self._outcome(held, OutcomeKind.COMPLETED, result=result.output,
                                 nodes=result.nodes)
        # Only reached when held.scope was cancelled or its deadline passed.
        if held.stop_reason == "lost":
            log.warning("job %s: lock lost (another worker took it over); stopped", job.id)
            return None
        if held.stop_reason == "cancel":
            return self._outcome(held, OutcomeKind.CANCELLED,
                                 error={"message": "cancelled", "reason": "cancelled"})
        return self._outcome(
            held, OutcomeKind.FAILED,
            error={"message": f"job timed out after {timeout:g}s", "node": None,
                   "reason": "timeout"},
        )

    def _outcome(self, held: _Held, kind: OutcomeKind, **fields: Any) -> Outcome:
        return Outcome(job_id=held.claimed.job.id, token=held.claimed.token, kind=kind, **fields)

    def _failed(self, held: _Held, message: str, *, retry: bool) -> Outcome:
        log.warning("job %s failed: %s", held.claimed.job.id, message)
        return self._outcome(held, OutcomeKind.FAILED, error={"message": message, "node": None},
                             retry=retry)

    def _on_cancel_notice(self, job_id: str) -> None:
        self._stop(job_id, "cancel")

    def _stop(self, job_id: str, reason: str) -> None:
        held = self._held.get(job_id)
        if held is not None and held.stop_reason is None:
            held.stop_reason = reason
            held.scope.cancel()

    # ---- background loops -----------------------------------------------------------

    async def _run_flusher(self) -> None:
        # The only task that calls broker.flush, so a batch is never written
        # twice or left behind by a second writer racing this one.
        backoff = Backoff()
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            try:
                await self._flush_once()
            except BrokerUnavailable as exc:
                log.warning("cannot write job events/outcomes, will retry: %s", exc)
                self._flush_wanted.set()
                await backoff.wait()
                continue
            backoff.reset()
            if self._closing and not (self._events or self._outcomes):
                self._flushed_all.set()
                return

    async def _flush_once(self) -> None:
        events, outcomes = self._events, self._outcomes
        if not events and not outcomes:
            return
        self._events, self._outcomes = [], []
        try:
            recorded = await self.broker.flush(events, outcomes)
        except BaseException:
            # Nothing is lost: put the batch back in front of what came since.
            self._events[:0] = events
            self._outcomes[:0] = outcomes
            raise
        self.metrics.flushes.inc()
        for outcome, ok in zip(outcomes, recorded, strict=True):
            self._held.pop(outcome.job_id, None)
            if not ok:
                log.warning("outcome of job %s refused: this worker no longer holds its lock",
                            outcome.job_id)

    async def _flush_before_exit(self) -> None:
        self._closing = True
        self._flush_wanted.set()
        # Bounded: if the broker is gone, the requeued jobs come back through
        # the stalled check instead (their locks expire).
        with trio.move_on_after(self.config.redis.command_timeout_s * 2):
            await self._flushed_all.wait()
        if not self._flushed_all.is_set():
            log.error("could not record %d outcomes before exit; their jobs return to the "
                      "queue when their locks expire", len(self._outcomes))

    async def _run_renewals(self) -> None:
        wc = self.config.worker
        interval = wc.lock_ttl_s / 2
        while True:
            await trio.sleep(interval if self._broker_ok else min(interval, 1.0))
            if not self._held:
                continue
            held = {job_id: h.claimed.token for job_id, h in self._held.items()}
            try:
                lost, cancelled = await self.broker.renew(self.id, held, lock_ttl_s=wc.lock_ttl_s)
            except BrokerUnavailable as exc:
                log.warning("cannot renew %d job locks: %s", len(held), exc)
                continue
            self.metrics.renewals.inc()
            for job_id in lost:
                self._stop(job_id, "lost")
            for job_id in cancelled:
                self._stop(job_id, "cancel")

    async def _run_heartbeats(self) -> None:
        hostname = socket.gethostname()
        while True:
            info = WorkerInfo(
                id=self.id, host=hostname, pid=os.getpid(), started_at=self._started_at,
                last_seen=time.time(), jobs_held=len(self._held),
                concurrency=self.config.worker.concurrency,
                ready=self._broker_ok and not self._draining,
            )
            # An outage is reported by the claim loop; a missed beat is harmless.
            with contextlib.suppress(BrokerUnavailable):
                await self.broker.heartbeat(info, ttl_s=HEARTBEAT_S * 3)
            await trio.sleep(HEARTBEAT_S)
