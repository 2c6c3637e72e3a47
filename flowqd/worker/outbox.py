"""Events and outcomes waiting to be written, and the one task that writes them.

Nothing here talks to the backend per job: jobs add what they emit and how
they ended, and the flusher writes all of it in one ``flush`` call per
scheduler pass (at most ``FLUSH_EVENTS_MAX`` events a call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from flowqd.backoff import Backoff
from flowqd.errors import BrokerUnavailable, RedisReplyError
from flowqd.flows.outputs import json_problem
from flowqd.jobs import EmittedEvent, Outcome, OutcomeKind
from flowqd.queue.roles import WorkQueue
from flowqd.worker.held import Held, StopReason
from flowqd.worker.metrics import WorkerMetrics

log = logging.getLogger("flowqd.worker")

# Events per flush script call: one call blocks Redis for everyone while it
# runs, and its arguments are held in memory until it answers.
FLUSH_EVENTS_MAX = 4096


@attrs.define(eq=False)
class Outbox:
    """What the worker's jobs emitted and how they ended, until the backend has it.

    Jobs append to ``events`` and call ``add`` for outcomes; ``run`` is the
    flusher. Data the backend cannot encode (not JSON, past the runner's
    checks) fails only its job: see ``_flush_once``.
    """

    work: WorkQueue
    metrics: WorkerMetrics
    # The worker's held jobs: a job is released once its outcome is written.
    held: dict[str, Held]
    # Stops a job that is still running (its data cannot be stored).
    stop: Callable[[str, StopReason], None]
    events: list[EmittedEvent] = attrs.field(init=False, factory=list)
    outcomes: list[Outcome] = attrs.field(init=False, factory=list)
    # Set when there is something to write; the flusher replaces it.
    wanted: trio.Event = attrs.field(init=False, factory=trio.Event)
    _finished: dict[OutcomeKind, int] = attrs.field(init=False, factory=dict)  # jobs by outcome
    # Jobs with an event or outcome the backend could not encode, and why:
    # their outcome becomes a failure saying so.
    _unstorable: dict[str, str] = attrs.field(init=False, factory=dict)
    _closing: bool = attrs.field(init=False, default=False)
    _flushed_all: trio.Event = attrs.field(init=False, factory=trio.Event)

    def add(self, outcome: Outcome, seconds: float) -> None:
        """A job's outcome after ``seconds`` of running, to be written after its events."""
        self.outcomes.append(outcome)
        self.wanted.set()
        # The member, not its .value (an enum property): a StrEnum is its value.
        kind = outcome.kind
        # Counted here, added to the counter once per kind per flush.
        self._finished[kind] = self._finished.get(kind, 0) + 1
        self.metrics.job_ended(kind, seconds)

    def forget(self, job_id: str) -> None:
        """The job's lock went to another worker: nothing of it is to be reported."""
        self._unstorable.pop(job_id, None)

    async def run(self) -> None:
        """The flusher: write what is waiting, until ``close`` and everything written."""
        # The only task that calls work.flush, so a batch is never written
        # twice or left behind by a second writer racing this one.
        backoff = Backoff()
        while True:
            await self.wanted.wait()
            self.wanted = trio.Event()
            try:
                await self._flush_once()
            except (BrokerUnavailable, RedisReplyError) as exc:
                # A reply error (Redis out of memory, say) may pass too: the
                # batch is kept, and the worker lives to write it.
                log.warning("cannot write job events/outcomes, will retry: %s", exc)
                self.wanted.set()
                await backoff.wait()
                continue
            backoff.reset()
            if self._closing and not (self.events or self.outcomes):
                self._flushed_all.set()
                return

    async def close(self, timeout_s: float) -> None:
        """Write everything still waiting, for ``timeout_s`` at most; then ``run`` returns."""
        self._closing = True
        self.wanted.set()
        # Bounded: if the broker is gone, the requeued jobs come back through
        # the stalled check instead (their locks expire).
        with trio.move_on_after(timeout_s):
            await self._flushed_all.wait()
        if not self._flushed_all.is_set():
            log.error(
                "could not record %d outcomes before exit; their jobs return to the "
                "queue when their locks expire",
                len(self.outcomes),
            )

    async def _flush_once(self) -> None:
        if self._finished:
            finished, self._finished = self._finished, {}
            for kind, count in finished.items():
                self.metrics.jobs.inc(count, outcome=kind.value)
        events, outcomes = self.events, self.outcomes
        if not events and not outcomes:
            return
        if len(events) > FLUSH_EVENTS_MAX:
            # The outcomes wait for the last part: a job's terminal event
            # must follow all of its events.
            events, outcomes = events[:FLUSH_EVENTS_MAX], []
            self.events = self.events[FLUSH_EVENTS_MAX:]
            self.wanted.set()
        else:
            self.events, self.outcomes = [], []
        if self._unstorable:
            outcomes = [self._unless_unstorable(outcome) for outcome in outcomes]
        try:
            recorded = await self.work.flush(events, outcomes)
        except TypeError:
            # Data orjson cannot encode got past the runner's checks (an error
            # message with a lone surrogate, say). Both brokers encode a batch
            # before writing any of it, so nothing was written: put the batch
            # back without it, and its jobs fail at the next flush.
            kept = self._drop_unstorable(events, outcomes)
            self.events[:0] = events if kept is None else kept
            self.outcomes[:0] = outcomes
            if kept is None:
                raise  # not a plugin's data: a bug
            self.wanted.set()
            return
        except BaseException:
            # Nothing is lost: put the batch back in front of what came since.
            self.events[:0] = events
            self.outcomes[:0] = outcomes
            raise
        self.metrics.flushes.inc()
        for outcome, ok in zip(outcomes, recorded, strict=True):
            self.held.pop(outcome.job_id, None)
            if not ok:
                log.warning(
                    "outcome of job %s refused: this worker no longer holds its lock",
                    outcome.job_id,
                )

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
            for what, value in (
                ("result", outcome.result),
                ("error", outcome.error),
                ("node records", outcome.nodes),
            ):
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
        self.stop(job_id, StopReason.UNSTORABLE)  # if it still runs, it ends now

    def _unless_unstorable(self, outcome: Outcome) -> Outcome:
        why = self._unstorable.pop(outcome.job_id, None)
        if why is None or outcome.kind not in (OutcomeKind.COMPLETED, OutcomeKind.FAILED):
            return outcome
        return self.unstorable_outcome(outcome.job_id, outcome.token, why)

    def unstorable_outcome(self, job_id: str, token: str, why: str | None = None) -> Outcome:
        """The failure of a job whose data could not be stored, saying why."""
        message = why or self._unstorable.get(job_id) or "the job's data could not be stored"
        # Not retried: the same plugin would return the same data.
        return Outcome(
            job_id,
            token,
            OutcomeKind.FAILED,
            error={"message": message, "node": None, "reason": "unstorable"},
            retry=False,
        )
