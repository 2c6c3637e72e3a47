"""The worker: claims jobs, runs their flows, renews locks, reports outcomes."""

from __future__ import annotations

import contextlib
import gc
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

from flowqd import tracing
from flowqd.backoff import Backoff
from flowqd.config import Config
from flowqd.errors import BrokerUnavailable, CredentialError, FlowqdError
from flowqd.executors._egress import install as install_outbound
from flowqd.flows import FlowStore, NodeFailed, run_flow
from flowqd.flows.runner import bounded_traceback
from flowqd.jobs import EmittedEvent, Job, Outcome, OutcomeKind, WorkerInfo
from flowqd.logs import SharedFields
from flowqd.queue.roles import Conversations, WorkQueue
from flowqd.worker import memory, transitions
from flowqd.worker.held import Held, StopReason
from flowqd.worker.metrics import WorkerMetrics
from flowqd.worker.outbox import Outbox
from flowqd.worker.runners import RunnerPool
from flowqd.worker.timeouts import Timeouts

log = logging.getLogger("flowqd.worker")

# A claim call blocks this long at most, so a paused queue or a shutdown is
# noticed promptly even when no job arrives.
CLAIM_BLOCK_S = 1.0
CLAIM_BATCH_MAX = 500
HEARTBEAT_S = 5.0

# _attempt builds a completed Outcome positionally, in this order.
assert [a.name for a in attrs.fields(Outcome)][:6] == [
    "job_id",
    "token",
    "kind",
    "result",
    "error",
    "nodes",
]

_gc_tuned = False


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the job path (once per process).

    Jobs live from claim to flush, long enough for their objects to reach the
    oldest generation, and every full collection then walked everything
    imported at start-up too: a fifth of the worker's CPU on no-op jobs. So the
    start-up heap is frozen (never walked again) and young collections run
    every 10,000 allocations instead of 700, by which time most job objects
    are gone. Job objects rarely form cycles; reference counting frees them.
    """
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(10_000, gen1, gen2)


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@attrs.define(eq=False)
class Worker:
    """Claims jobs from ``work`` and runs them until shutdown, then drains.

    ``credential`` opens a named credential for the nodes that ask for one.
    """

    work: WorkQueue
    flows: FlowStore
    config: Config
    metrics: WorkerMetrics
    credential: Callable[[str], Awaitable[str]]
    id: str = attrs.Factory(make_worker_id)
    # Read for ctx.history (jobs with a session); turns go with the outcomes.
    conversations: Conversations | None = attrs.field(default=None, kw_only=True)

    # Jobs by id, from claim until their outcome is written (the outbox
    # releases them) or their lock is lost.
    _held: dict[str, Held] = attrs.field(init=False, factory=dict)
    _outbox: Outbox = attrs.field(init=False)
    _timeouts: Timeouts = attrs.field(init=False)
    _draining: bool = attrs.field(init=False, default=False)
    # Whether the claim loop's last call to the broker worked (readiness says
    # this, not a ping: Redis may answer a PING before claims work again), and
    # why not. The daemon passes False when the broker did not answer at start.
    _broker_ok: bool = attrs.field(default=True, kw_only=True)
    _claim_problem: str = attrs.field(init=False, default="")
    _started_at: float = attrs.field(init=False, factory=time.time)
    # The queue and worker fields of its job lines (transitions.py).
    _line_fields: SharedFields = attrs.field(init=False)
    # The trio run's clock, set by run(): trio.current_time() is two more calls
    # to it, and a job reads it twice.
    _clock: trio.abc.Clock = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._line_fields = transitions.shared_fields(self.id, self.config.queue.name)
        self._outbox = Outbox(self.work, self.metrics, self._held, self._stop)
        self._timeouts = Timeouts(self._held, self._stop)
        self.metrics.running.read = lambda: len(self._held)

    # ---- public ------------------------------------------------------------

    @property
    def queue(self) -> str:
        """The queue this worker takes jobs from (one pool of its process, see pools.py)."""
        return self.config.queue.name

    @property
    def jobs_held(self) -> int:
        return len(self._held)

    async def run(
        self, shutdown: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take and run jobs until ``shutdown`` is set, then drain and return."""
        _tune_gc()
        self._clock = trio.lowlevel.current_clock()
        install_outbound(self.config)  # [egress] and limits for the http and llm nodes' requests
        wc = self.config.worker
        async with trio.open_nursery() as nursery:
            await nursery.start(self.work.watch_cancels, self._on_cancel_notice)
            await nursery.start(
                partial(self.work.run_maintenance, stalled_interval_s=wc.stalled_interval_s)
            )
            nursery.start_soon(self._outbox.run, name="flowqd.worker.flusher")
            nursery.start_soon(self._run_renewals, name="flowqd.worker.renewals")
            nursery.start_soon(self._timeouts.run, name="flowqd.worker.timeouts")
            nursery.start_soon(self._run_heartbeats, name="flowqd.worker.heartbeats")
            async with trio.open_nursery() as jobs:
                pool = RunnerPool(jobs, self._run_job, wc.concurrency)
                task_status.started()
                log.info(
                    "worker %s %s (concurrency %d)",
                    self.id,
                    "taking jobs" if self._broker_ok else "waiting for the broker",
                    wc.concurrency,
                )
                await self._claim_until(shutdown, pool)
                self._draining = True
                if self._held:
                    log.info(
                        "draining: %d jobs running, grace %.1fs",
                        len(self._held),
                        wc.shutdown_grace_s,
                    )
                pool.stop()
                # Shutdown is a deadline on the jobs' scope: what has not
                # finished by then is cancelled and requeued by _run_job.
                jobs.cancel_scope.deadline = trio.current_time() + wc.shutdown_grace_s
            # Claimed but never started before the grace ended: back to the queue too.
            for held in pool.take_backlog():
                if held.stop_reason is not StopReason.LOST:
                    requeue = held.outcome(OutcomeKind.REQUEUE)
                    self._outbox.outcomes.append(requeue)
                    self._log_ended(held.claimed.job, requeue, 0.0)
                else:
                    self._held.pop(held.claimed.job.id, None)
            await self._outbox.close(self.config.redis.command_timeout_s * 2)
            nursery.cancel_scope.cancel()
        log.info("worker %s stopped", self.id)

    async def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining: shutting down, not taking jobs"
        if not self._broker_ok:
            return False, (
                f"broker unreachable: waiting for the broker, cannot claim jobs: "
                f"{self._claim_problem or 'it did not answer at start'}"
            )
        try:
            with trio.fail_after(1.0):
                await self.work.ping()
                paused = await self.work.is_paused()
        except (BrokerUnavailable, trio.TooSlowError):
            return False, "broker unreachable: check Redis at redis.url / REDIS_URL"
        if paused:
            return False, "queue paused: resume it to take jobs"
        return True, "taking jobs"

    # ---- claiming ------------------------------------------------------------

    async def _claim_until(self, shutdown: trio.Event, pool: RunnerPool) -> None:
        async with trio.open_nursery() as claim_nursery:

            async def stop_on_shutdown() -> None:
                await shutdown.wait()
                claim_nursery.cancel_scope.cancel()

            claim_nursery.start_soon(stop_on_shutdown)
            await self._claim_loop(pool)

    async def _claim_loop(self, pool: RunnerPool) -> None:
        wc = self.config.worker
        # Short: once Redis is back, claims (and readiness) resume within a second.
        backoff = Backoff(maximum=1.0)
        while True:
            free = min(await pool.wait_for_room(), CLAIM_BATCH_MAX)
            try:
                # While the broker is away, a claim that works returns at once
                # (no blocking wait), so readiness turns true as soon as it does.
                claimed = await self.work.claim(
                    self.id,
                    free,
                    lock_ttl_s=wc.lock_ttl_s,
                    block_s=CLAIM_BLOCK_S if self._broker_ok else 0,
                )
            except BrokerUnavailable as exc:
                if self._broker_ok:
                    log.warning("waiting for the broker, cannot claim jobs: %s", exc)
                self._broker_ok = False
                self._claim_problem = str(exc)
                await backoff.wait()
                continue
            if not self._broker_ok:
                log.info("broker reachable again, taking jobs")
                self._broker_ok = True
            backoff.reset()
            if claimed:
                transitions.claimed(claimed, self._line_fields)
                for item in claimed:
                    held = Held(item)
                    self._held[item.job.id] = held
                    pool.backlog.append(held)
                pool.claimed(len(claimed))

    # ---- running a job -----------------------------------------------------------

    async def _run_job(self, held: Held, scope: trio.CancelScope) -> None:
        job = held.claimed.job
        clock = self._clock
        started = clock.current_time()
        outcome: Outcome | None = None
        traced = tracing.current
        span = None if traced is None else traced.start_job(job, self.id, self.config.queue.name)
        try:
            if held.stop_reason is not None:  # stopped before a runner took it
                outcome = self._stopped(held)
            else:
                held.deadline = deadline = started + self._timeout_of(job)
                if deadline < self._timeouts.earliest:
                    self._timeouts.wake_at(deadline)
                held.scope = scope
                try:
                    outcome = await self._attempt(held, span)
                except trio.Cancelled:
                    if not held.stopped():
                        raise  # not this job's stop: the worker's drain deadline
                    # Swallowed: the runner's scope stays cancelled, and the
                    # runner leaves it before running anything else.
                    outcome = self._stopped(held)
                finally:
                    held.scope = None
        except trio.Cancelled:
            # The worker's drain deadline passed: put the job back, attempt
            # not counted. Recorded without awaiting; the final flush sends it.
            if held.stop_reason is not StopReason.LOST:
                outcome = held.outcome(OutcomeKind.REQUEUE)
            raise
        finally:
            if span is not None:
                tracing.end_job(span, outcome)
            if outcome is None:  # lock lost: another worker owns the job now
                self._held.pop(job.id, None)
                self._outbox.forget(job.id)
            else:
                seconds = clock.current_time() - started
                self._outbox.add(outcome, seconds)
                self._log_ended(job, outcome, seconds)

    def _log_ended(self, job: Job, outcome: Outcome, seconds: float) -> None:
        transitions.ended(job, outcome, seconds, self._line_fields, self.config.queue.backoff_s)

    def _timeout_of(self, job: Job) -> float:
        return job.timeout_s or self.config.worker.job_timeout_s

    def _stopped(self, held: Held) -> Outcome | None:
        job, reason = held.claimed.job, held.stop_reason
        if reason is StopReason.LOST:
            log.warning(
                "job %s: lock lost (another worker took it over); stopped",
                job.id,
                extra={"job_id": job.id, "flow": job.flow_id, "worker": self.id},
            )
            return None
        if reason is StopReason.CANCEL:
            return held.outcome(
                OutcomeKind.CANCELLED, error={"message": "cancelled", "reason": "cancelled"}
            )
        if reason is StopReason.UNSTORABLE:
            return self._outbox.unstorable_outcome(job.id, held.claimed.token)
        return held.outcome(
            OutcomeKind.FAILED,
            error={
                "message": f"job timed out after {self._timeout_of(job):g}s",
                "node": None,
                "reason": "timeout",
            },
        )

    async def _attempt(self, held: Held, span: tracing.Span | None = None) -> Outcome:
        job = held.claimed.job
        outbox = self._outbox

        def emit(name: str, data: Any) -> None:
            outbox.events.append(EmittedEvent(job.id, name, data))
            outbox.wanted.set()

        emit("started", {"attempt": job.attempts, "worker": self.id})
        flow = self.flows.cached(job.flow_id, job.flow_version)
        if flow is None:
            try:
                flow = await self.flows.get(job.flow_id, job.flow_version)
            except FlowqdError as exc:
                return _failed(held, f"cannot load flow {job.flow_id!r}: {exc}", retry=True)
        if flow is None:
            return _failed(
                held,
                f"flow {job.flow_id!r} version {job.flow_version} does not exist "
                "(deleted, or registered with another queue.name)",
                retry=False,
            )
        conversation = memory.conversation_of(job) if self.config.memory.enabled else None
        history = None
        if conversation is not None and self.conversations is not None:
            history = memory.history_reader(self.conversations, conversation)
        try:
            result = await run_flow(
                flow,
                job_id=job.id,
                inputs=job.inputs,
                emit=emit,
                credential=self.credential,
                limits=self.config.limits,
                encoded=True,
                trace=span,
                history=history,
            )
        except NodeFailed as exc:  # logged by _log_ended with the retry, if any
            return held.outcome(
                OutcomeKind.FAILED,
                error={"message": exc.message, "node": exc.node_id, "traceback": exc.traceback},
                nodes=exc.nodes,
            )
        except CredentialError as exc:
            return _failed(held, str(exc), retry=False)
        except Exception as exc:
            # A bug outside any node: record it on the job, keep the worker.
            log.exception(
                "job %s crashed outside a node",
                job.id,
                extra={"job_id": job.id, "flow": job.flow_id, "attempt": job.attempts},
            )
            return held.outcome(
                OutcomeKind.FAILED,
                error={
                    "message": f"{type(exc).__name__}: {exc}",
                    "node": None,
                    "traceback": bounded_traceback(traceback.format_exc()),
                },
            )
        # Positional (job_id, token, kind, result, error, nodes): every job ends here.
        if conversation is None:
            return Outcome(
                job.id, held.claimed.token, OutcomeKind.COMPLETED, result.output, None, result.nodes
            )
        # Its turn is written with the outcome, if the outcome is (flush).
        return Outcome(
            job.id,
            held.claimed.token,
            OutcomeKind.COMPLETED,
            result.output,
            None,
            result.nodes,
            turn=memory.turn_of(job, conversation, result.output),
        )

    def _on_cancel_notice(self, job_id: str) -> None:
        self._stop(job_id, StopReason.CANCEL)

    def _stop(self, job_id: str, reason: StopReason) -> None:
        held = self._held.get(job_id)
        if held is not None and held.stop_reason is None:
            held.stop_reason = reason
            if held.scope is not None:  # running (else stopped when a runner takes it)
                held.scope.cancel()

    # ---- background loops -----------------------------------------------------------

    async def _run_renewals(self) -> None:
        wc = self.config.worker
        interval = wc.lock_ttl_s / 2
        while True:
            await trio.sleep(interval if self._broker_ok else min(interval, 1.0))
            if not self._held:
                continue
            held = {job_id: h.claimed.token for job_id, h in self._held.items()}
            try:
                lost, cancelled = await self.work.renew(self.id, held, lock_ttl_s=wc.lock_ttl_s)
            except BrokerUnavailable as exc:
                log.warning("cannot renew %d job locks: %s", len(held), exc)
                continue
            self.metrics.renewals.inc()
            for job_id in lost:
                self._stop(job_id, StopReason.LOST)
            for job_id in cancelled:
                self._stop(job_id, StopReason.CANCEL)

    async def _run_heartbeats(self) -> None:
        hostname = socket.gethostname()
        while True:
            info = WorkerInfo(
                id=self.id,
                host=hostname,
                pid=os.getpid(),
                started_at=self._started_at,
                last_seen=time.time(),
                jobs_held=len(self._held),
                concurrency=self.config.worker.concurrency,
                ready=self._broker_ok and not self._draining,
            )
            # An outage is reported by the claim loop; a missed beat is harmless.
            with contextlib.suppress(BrokerUnavailable):
                await self.work.heartbeat(info, ttl_s=HEARTBEAT_S * 3)
            await trio.sleep(HEARTBEAT_S)


def _failed(held: Held, message: str, *, retry: bool) -> Outcome:
    # Logged by Worker._log_ended, with the retry if any.
    return held.outcome(OutcomeKind.FAILED, error={"message": message, "node": None}, retry=retry)
