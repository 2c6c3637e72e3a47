"""The worker: claims jobs, runs their flows, renews locks, reports outcomes.

Everything the worker does runs in the nursery of ``Worker.run``. Jobs run in
a nursery of their own whose cancel scope gets a deadline when the worker
drains: jobs that finish within the grace report their outcome, the rest are
cancelled and put back in the queue with their attempt not counted.

Round trips are the cost that matters, so nothing here talks to the broker
per job: claims take many jobs per call, events and outcomes are buffered and
written by one flusher in one call per scheduler pass, and one renewal call
covers every held lock.

A task per job costs more than a no-op job itself, so claimed jobs go to a
backlog that long-lived runner tasks take them from, one job at a time. A
runner that takes a job makes sure another runner is free for the rest of the
backlog (waking an idle one or starting one), so a job that waits (a delay, an
HTTP call) never holds up the jobs behind it, while jobs that finish without
waiting all run in one runner, one after another.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio

from flowqd.config import Config
from flowqd.errors import BrokerUnavailable, CredentialError, FlowqdError, RedisReplyError
from flowqd.executors._egress import install as install_outbound
from flowqd.flows import CompiledFlow, FlowStore, NodeFailed, run_flow
from flowqd.flows.outputs import json_problem
from flowqd.jobs import Claimed, EmittedEvent, Job, Outcome, OutcomeKind, WorkerInfo
from flowqd.metrics import Counter, Gauge, Histogram, Registry
from flowqd.queue.base import Broker
from flowqd.redis import Backoff

log = logging.getLogger("flowqd.worker")

# A claim call blocks this long at most, so a paused queue or a shutdown is
# noticed promptly even when no job arrives.
CLAIM_BLOCK_S = 1.0
CLAIM_BATCH_MAX = 500
# Events per flush script call: one call blocks Redis for everyone while it
# runs, and its arguments are held in memory until it answers.
FLUSH_EVENTS_MAX = 4096
HEARTBEAT_S = 5.0
# Runners left idle beyond this many exit (a burst of waiting jobs may have
# started thousands); a few stay for the next burst.
IDLE_RUNNERS_KEPT = 32
# A runner whose jobs never wait lets other tasks (the flusher, the claim
# loop) run after this many jobs, so claims and writes overlap with work.
RUNNER_YIELD_EVERY = 64


@attrs.define(eq=False)
class _Held:
    """A job this worker holds, from claim until its outcome is recorded."""

    claimed: Claimed
    # While the job runs: its runner's cancel scope (see _run_runner).
    scope: trio.CancelScope | None = None
    deadline: float = math.inf  # the job timeout, from when it started
    # Why the job was stopped, if it was: "cancel" (asked by a user),
    # "timeout", or "lost" (the lock went to someone else; report nothing).
    stop_reason: str | None = None

    def stopped(self) -> bool:
        return self.stop_reason is not None


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


# _attempt builds a completed Outcome positionally, in this order.
assert [a.name for a in attrs.fields(Outcome)][:6] == [
    "job_id", "token", "kind", "result", "error", "nodes"
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
    broker: Broker
    flows: FlowStore
    config: Config
    metrics: WorkerMetrics
    credential: Callable[[str], Awaitable[str]]
    id: str = attrs.Factory(make_worker_id)

    _held: dict[str, _Held] = attrs.field(init=False, factory=dict)
    _events: list[EmittedEvent] = attrs.field(init=False, factory=list)
    _outcomes: list[Outcome] = attrs.field(init=False, factory=list)
    _finished: dict[str, int] = attrs.field(init=False, factory=dict)  # jobs by outcome
    _flush_wanted: trio.Event = attrs.field(init=False, factory=trio.Event)
    # Claimed jobs no runner has taken yet, oldest first.
    _backlog: deque[_Held] = attrs.field(init=False, factory=deque)
    # Jobs claimed and not finished running: what worker.concurrency bounds.
    _busy: int = attrs.field(init=False, default=0)
    # Set when the claim loop may claim again (backlog empty, a slot free).
    _claim_gate: trio.Event = attrs.field(init=False, factory=trio.Event)
    # Runners not running a job (parked in _runner_lot, or about to look at
    # the backlog), and where idle runners wait.
    _idle_runners: int = attrs.field(init=False, default=0)
    _runner_lot: trio.lowlevel.ParkingLot = attrs.field(
        init=False, factory=trio.lowlevel.ParkingLot
    )
    _runners_stop: bool = attrs.field(init=False, default=False)
    _jobs_nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    # The earliest deadline of a running job, as far as _run_timeouts knows,
    # and the scope it sleeps in until then.
    _next_timeout: float = attrs.field(init=False, default=math.inf)
    _timeout_sleep: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    # Flows being fetched, so a burst of jobs of an uncached flow costs one
    # broker call, not one per job.
    _flow_loads: dict[tuple[str, int], trio.Event] = attrs.field(init=False, factory=dict)
    # Compiled flows by (id, version), read without an await for every job
    # (versions never change); FlowStore keeps the authoritative LRU.
    _flow_cache: dict[tuple[str, int], CompiledFlow] = attrs.field(init=False, factory=dict)
    _flushed_all: trio.Event = attrs.field(init=False, factory=trio.Event)
    # Jobs with an event or outcome the broker could not encode, and why: their
    # outcome becomes a failure saying so (see _flush_once).
    _unstorable: dict[str, str] = attrs.field(init=False, factory=dict)
    _closing: bool = attrs.field(init=False, default=False)
    _draining: bool = attrs.field(init=False, default=False)
    # Whether the claim loop's last call to the broker worked (readiness says
    # this, not a ping: Redis may answer a PING before claims work again), and
    # why not. The daemon passes False when the broker did not answer at start.
    _broker_ok: bool = attrs.field(default=True, kw_only=True)
    _claim_problem: str = attrs.field(init=False, default="")
    _started_at: float = attrs.field(init=False, factory=time.time)

    def __attrs_post_init__(self) -> None:
        self.metrics.running.read = lambda: len(self._held)

    # ---- public ------------------------------------------------------------

    async def run(
        self, shutdown: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take and run jobs until ``shutdown`` is set, then drain and return."""
        _tune_gc()
        install_outbound(self.config)  # [egress] and limits for the http and llm nodes' requests
        wc = self.config.worker
        async with trio.open_nursery() as nursery:
            await nursery.start(self.broker.watch_cancels, self._on_cancel_notice)
            await nursery.start(
                partial(self.broker.run_maintenance, stalled_interval_s=wc.stalled_interval_s)
            )
            nursery.start_soon(self._run_flusher, name="flowqd.worker.flusher")
            nursery.start_soon(self._run_renewals, name="flowqd.worker.renewals")
            nursery.start_soon(self._run_timeouts, name="flowqd.worker.timeouts")
            nursery.start_soon(self._run_heartbeats, name="flowqd.worker.heartbeats")
            async with trio.open_nursery() as jobs:
                self._jobs_nursery = jobs
                task_status.started()
                log.info("worker %s %s (concurrency %d)", self.id,
                         "taking jobs" if self._broker_ok else "waiting for the broker",
                         wc.concurrency)
                await self._claim_until(shutdown)
                self._draining = True
                if self._held:
                    log.info("draining: %d jobs running, grace %.1fs", len(self._held),
                             wc.shutdown_grace_s)
                # Runners finish the backlog, then exit.
                self._runners_stop = True
                self._runner_lot.unpark_all()
                # Shutdown is a deadline on the jobs' scope: what has not
                # finished by then is cancelled and requeued by _run_job.
                jobs.cancel_scope.deadline = trio.current_time() + wc.shutdown_grace_s
            # Claimed but never started before the grace ended: back to the queue too.
            while self._backlog:
                held = self._backlog.popleft()
                self._busy -= 1
                if held.stop_reason != "lost":
                    self._outcomes.append(self._outcome(held, OutcomeKind.REQUEUE))
                else:
                    self._held.pop(held.claimed.job.id, None)
            await self._flush_before_exit()
            nursery.cancel_scope.cancel()
        log.info("worker %s stopped", self.id)

    async def readiness(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining: shutting down, not taking jobs"
        if not self._broker_ok:
            return False, (f"broker unreachable: waiting for the broker, cannot claim jobs: "
                           f"{self._claim_problem or 'it did not answer at start'}")
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

    async def _claim_until(self, shutdown: trio.Event) -> None:
        async with trio.open_nursery() as claim_nursery:
            async def stop_on_shutdown() -> None:
                await shutdown.wait()
                claim_nursery.cancel_scope.cancel()

            claim_nursery.start_soon(stop_on_shutdown)
            await self._claim_loop()

    async def _claim_loop(self) -> None:
        wc = self.config.worker
        # Short: once Redis is back, claims (and readiness) resume within a second.
        backoff = Backoff(maximum=1.0)
        while True:
            # Claim again only once the runners have taken every job claimed
            # so far and a slot is free: jobs that finish fast are claimed as
            # fast as they finish, not thousands ahead of the runners.
            while self._backlog or self._busy >= wc.concurrency:
                self._claim_gate = trio.Event()
                await self._claim_gate.wait()
            free = min(wc.concurrency - self._busy, CLAIM_BATCH_MAX)
            try:
                # While the broker is away, a claim that works returns at once
                # (no blocking wait), so readiness turns true as soon as it does.
                claimed = await self.broker.claim(
                    self.id, free, lock_ttl_s=wc.lock_ttl_s,
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
                for item in claimed:
                    held = _Held(item)
                    self._held[item.job.id] = held
                    self._backlog.append(held)
                self._busy += len(claimed)
                self._want_runner()

    # ---- runners -------------------------------------------------------------------

    def _want_runner(self) -> None:
        """Make sure a runner will look at the backlog: wake an idle one or start one."""
        if self._idle_runners == 0:
            assert self._jobs_nursery is not None
            self._idle_runners += 1
            self._jobs_nursery.start_soon(self._run_runner, name="flowqd.worker.runner")
        elif self._runner_lot:  # else the idle one is already woken
            self._runner_lot.unpark()

    async def _run_runner(self) -> None:
        # Jobs run in the runner's cancel scope, not one of their own (entering
        # a scope per job cost more than a no-op job): stopping a running job
        # cancels its runner's scope, and the runner opens a fresh one after.
        since_yield = 0
        while True:
            with trio.CancelScope() as scope:
                while not scope.cancel_called:
                    while not self._backlog:
                        if self._runners_stop:
                            self._idle_runners -= 1
                            return
                        since_yield = 0
                        await self._runner_lot.park()
                    held = self._backlog.popleft()
                    self._idle_runners -= 1
                    if self._backlog:
                        self._want_runner()
                    elif not self._runners_stop:
                        self._claim_gate.set()
                    await self._run_job(held, scope)
                    self._idle_runners += 1
                    if self._idle_runners > IDLE_RUNNERS_KEPT and not self._backlog:
                        self._idle_runners -= 1
                        return
                    since_yield += 1
                    if since_yield >= RUNNER_YIELD_EVERY and not scope.cancel_called:
                        since_yield = 0
                        await trio.lowlevel.checkpoint()

    # ---- running a job -----------------------------------------------------------

    async def _run_job(self, held: _Held, scope: trio.CancelScope) -> None:
        job = held.claimed.job
        started = trio.current_time()
        outcome: Outcome | None = None
        try:
            if held.stop_reason is not None:  # stopped before a runner took it
                outcome = self._stopped(held)
            else:
                held.deadline = deadline = started + self._timeout_of(job)
                if deadline < self._next_timeout:
                    self._next_timeout = self._timeout_sleep.deadline = deadline
                held.scope = scope
                try:
                    outcome = await self._attempt(held)
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
            if held.stop_reason != "lost":
                outcome = self._outcome(held, OutcomeKind.REQUEUE)
            raise
        finally:
            self._busy -= 1
            if not self._backlog:
                self._claim_gate.set()
            if outcome is None:  # lock lost: another worker owns the job now
                self._held.pop(job.id, None)
                self._unstorable.pop(job.id, None)
            else:
                self._outcomes.append(outcome)
                self._flush_wanted.set()
                kind = outcome.kind.value
                # Counted here, added to the counter once per kind per flush.
                self._finished[kind] = self._finished.get(kind, 0) + 1
                self.metrics.duration.observe(trio.current_time() - started, outcome=kind)

    def _timeout_of(self, job: Job) -> float:
        return job.timeout_s or self.config.worker.job_timeout_s

    def _stopped(self, held: _Held) -> Outcome | None:
        job = held.claimed.job
        if held.stop_reason == "lost":
            log.warning("job %s: lock lost (another worker took it over); stopped", job.id)
            return None
        if held.stop_reason == "cancel":
            return self._outcome(held, OutcomeKind.CANCELLED,
                                 error={"message": "cancelled", "reason": "cancelled"})
        if held.stop_reason == "unstorable":
            return self._unstorable_outcome(job.id, held.claimed.token)
        return self._outcome(
            held, OutcomeKind.FAILED,
            error={"message": f"job timed out after {self._timeout_of(job):g}s", "node": None,
                   "reason": "timeout"},
        )

    async def _flow(self, flow_id: str, version: int) -> CompiledFlow | None:
        key = (flow_id, version)
        loading = self._flow_loads.get(key)
        if loading is not None:
            await loading.wait()  # then from the store's cache, or a call of our own
            return await self.flows.get(flow_id, version)
        self._flow_loads[key] = loading = trio.Event()
        try:
            flow = await self.flows.get(flow_id, version)
        finally:
            del self._flow_loads[key]
            loading.set()
        if flow is not None:
            if len(self._flow_cache) >= FlowStore.CACHE_SIZE:
                self._flow_cache.clear()
            self._flow_cache[key] = flow
        return flow

    async def _attempt(self, held: _Held) -> Outcome:
        job = held.claimed.job

        def emit(name: str, data: Any) -> None:
            self._events.append(EmittedEvent(job.id, name, data))
            self._flush_wanted.set()

        emit("started", {"attempt": job.attempts, "worker": self.id})
        flow = self._flow_cache.get((job.flow_id, job.flow_version))
        if flow is None:
            try:
                flow = await self._flow(job.flow_id, job.flow_version)
            except FlowqdError as exc:
                return self._failed(held, f"cannot load flow {job.flow_id!r}: {exc}", retry=True)
        if flow is None:
            return self._failed(
                held,
                f"flow {job.flow_id!r} version {job.flow_version} does not exist "
                "(deleted, or registered with another queue.name)",
                retry=False,
            )
        try:
            result = await run_flow(flow, job_id=job.id, inputs=job.inputs, emit=emit,
                                    credential=self.credential, limits=self.config.limits,
                                    encoded=True)
        except NodeFailed as exc:
            log.warning("job %s failed in node %s: %s", job.id, exc.node_id, exc.message)
            return self._outcome(
                held, OutcomeKind.FAILED,
                error={"message": exc.message, "node": exc.node_id, "traceback": exc.traceback},
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
        # Positional (job_id, token, kind, result, error, nodes): every job ends here.
        return Outcome(job.id, held.claimed.token, OutcomeKind.COMPLETED, result.output, None,
                       result.nodes)

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
            if held.scope is not None:  # running (else stopped when a runner takes it)
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
            except (BrokerUnavailable, RedisReplyError) as exc:
                # A reply error (Redis out of memory, say) may pass too: the
                # batch is kept, and the worker lives to write it.
                log.warning("cannot write job events/outcomes, will retry: %s", exc)
                self._flush_wanted.set()
                await backoff.wait()
                continue
            backoff.reset()
            if self._closing and not (self._events or self._outcomes):
                self._flushed_all.set()
                return

    async def _flush_once(self) -> None:
        if self._finished:
            finished, self._finished = self._finished, {}
            for kind, count in finished.items():
                self.metrics.jobs.inc(count, outcome=kind)
        events, outcomes = self._events, self._outcomes
        if not events and not outcomes:
            return
        if len(events) > FLUSH_EVENTS_MAX:
            # The outcomes wait for the last part: a job's terminal event
            # must follow all of its events.
            events, outcomes = events[:FLUSH_EVENTS_MAX], []
            self._events = self._events[FLUSH_EVENTS_MAX:]
            self._flush_wanted.set()
        else:
            self._events, self._outcomes = [], []
        if self._unstorable:
            outcomes = [self._unless_unstorable(outcome) for outcome in outcomes]
        try:
            recorded = await self.broker.flush(events, outcomes)
        except TypeError:
            # Data orjson cannot encode got past the runner's checks (an error
            # message with a lone surrogate, say). Both brokers encode a batch
            # before writing any of it, so nothing was written: put the batch
            # back without it, and its jobs fail at the next flush.
            kept = self._drop_unstorable(events, outcomes)
            self._events[:0] = events if kept is None else kept
            self._outcomes[:0] = outcomes
            if kept is None:
                raise  # not a plugin's data: a bug
            self._flush_wanted.set()
            return
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

    def _drop_unstorable(
        self, events: list[EmittedEvent], outcomes: list[Outcome]
    ) -> list[EmittedEvent] | None:
        """``events`` minus those that are not JSON, their jobs and those of outcomes
        that are not JSON marked unstorable; None if everything encodes."""
        found = False
        kept = []
        for event in events:
            problem = json_problem(event.data)
            if problem is None:
                kept.append(event)
            else:
                found = True
                self._mark_unstorable(event.job_id, f"its {event.name!r} event", problem)
        for outcome in outcomes:
            for what, value in (("result", outcome.result), ("error", outcome.error),
                                ("node records", outcome.nodes)):
                problem = json_problem(value)
                if problem is not None:
                    found = True
                    self._mark_unstorable(outcome.job_id, f"its {what}", problem)
                    break
        return kept if found else None

    def _mark_unstorable(self, job_id: str, what: str, problem: str) -> None:
        if job_id not in self._unstorable:
            log.error("job %s: %s cannot be stored, failing the job: %s", job_id, what, problem)
            self._unstorable[job_id] = (
                f"the job failed because {what} could not be stored: not JSON ({problem}); "
                "a plugin returned, raised or emitted data that is not JSON-compatible"
            )
        self._stop(job_id, "unstorable")  # if it still runs, it ends now

    def _unless_unstorable(self, outcome: Outcome) -> Outcome:
        why = self._unstorable.pop(outcome.job_id, None)
        if why is None or outcome.kind not in (OutcomeKind.COMPLETED, OutcomeKind.FAILED):
            return outcome
        return self._unstorable_outcome(outcome.job_id, outcome.token, why)

    def _unstorable_outcome(self, job_id: str, token: str, why: str | None = None) -> Outcome:
        message = why or self._unstorable.get(job_id) or "the job's data could not be stored"
        # Not retried: the same plugin would return the same data.
        return Outcome(job_id, token, OutcomeKind.FAILED,
                       error={"message": message, "node": None, "reason": "unstorable"},
                       retry=False)

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

    async def _run_timeouts(self) -> None:
        # One task stops jobs past their timeout: a deadline on a scope per job
        # cost more than a no-op job. It sleeps until the earliest deadline it
        # knows of; a job starting with an earlier one moves that (_execute).
        while True:
            with trio.CancelScope(deadline=self._next_timeout) as self._timeout_sleep:
                await trio.sleep_forever()
            now = trio.current_time()
            earliest = math.inf
            for job_id, held in list(self._held.items()):
                if held.scope is None:
                    continue  # not running
                if held.deadline <= now:
                    self._stop(job_id, "timeout")
                elif held.deadline < earliest:
                    earliest = held.deadline
            self._next_timeout = earliest

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
