"""The scheduler every main process runs: fire each due tick as one job.

No leader: each main reads the due schedules, works out each one's next tick
(croniter, in Python) and claims the ticks in one atomic broker call, a
compare-and-set on the stored due time (``Schedules.claim_ticks``). Only the
process whose claim moved the due time on enqueues the tick's job, under the
deterministic id ``sched:<schedule>:<tick ms>``, so even a second enqueue of
one tick would add nothing. The claim and the enqueue run shielded from
cancellation under one deadline: a shutdown never claims a tick and then
drops its job; a job the broker does not take stays pending and is sent
again on every pass until it does. A process killed between the claim and
the enqueue (one round trip, or a broker outage) loses that tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import attrs
import trio

from flowqd.backoff import Backoff
from flowqd.config import SchedulesConfig
from flowqd.errors import BrokerUnavailable, FlowValidationError
from flowqd.flows import FlowStore
from flowqd.jobs import JobSpec
from flowqd.logs import ThrottledLog
from flowqd.metrics import Counter, Registry
from flowqd.queue.base import JobIdTaken
from flowqd.queue.roles import JobStore, Schedules
from flowqd.schedules.spec import Schedule, Tick, job_id, plan_tick

log = logging.getLogger("flowqd.schedule")

BATCH = 100  # schedules claimed per broker call
MAX_SLEEP_S = 1.0  # a schedule made or resumed by another process is seen this soon
CALL_TIMEOUT_S = 5.0  # each broker exchange (a claim and its enqueue: both together)


@attrs.define(eq=False)
class Scheduler:
    schedules: Schedules
    jobs: JobStore
    flows: FlowStore
    config: SchedulesConfig
    fires: Counter
    # The other queues' job stores: a flow naming one has its jobs sent there.
    queue_jobs: Mapping[str, JobStore] = attrs.Factory(dict)
    clock: Callable[[], float] = time.time  # wall clock: schedules are shared by processes
    _warnings: ThrottledLog = attrs.Factory(lambda: ThrottledLog(log))
    # Jobs of claimed ticks not enqueued yet (the broker did not answer).
    _pending: list[tuple[JobSpec, Tick]] = attrs.Factory(list)
    # The queue each flow fired names (its document's "queue"), from the last look.
    _flow_queues: dict[str, str | None] = attrs.Factory(dict)

    @classmethod
    def create(
        cls,
        schedules: Schedules,
        jobs: JobStore,
        flows: FlowStore,
        config: SchedulesConfig,
        registry: Registry,
        queue_jobs: Mapping[str, JobStore] | None = None,
    ) -> Scheduler:
        fires = registry.add(
            Counter(
                "flowqd_schedule_ticks_total",
                "Schedule ticks this process claimed, by flow and outcome "
                "(fired, skipped: missed and dropped, failed: no job could be made).",
            )
        )
        return cls(schedules, jobs, flows, config, fires, dict(queue_jobs or {}))

    async def run(
        self,
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Fire due ticks until ``shutdown`` is set; waits out broker outages."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fire_forever, name="flowqd.scheduler")
            task_status.started()
            await shutdown.wait()
            nursery.cancel_scope.cancel()  # a claim under way finishes first (shielded)
        if self._pending:
            log.error(
                "stopping with ticks claimed whose jobs the broker never took: %s; "
                "those ticks fire nothing",
                [spec.job_id for spec, _ in self._pending],
            )

    async def _fire_forever(self) -> None:
        backoff = Backoff(initial=0.5, maximum=MAX_SLEEP_S * 5)
        while True:
            try:
                wait_s = await self.fire_due()
            except (BrokerUnavailable, trio.TooSlowError) as exc:
                self._warnings.warning(
                    "broker",
                    "scheduler cannot reach the broker: %s; ticks fire once it is back",
                    exc or "no answer in time",
                )
                await backoff.wait()
                continue
            backoff.reset()
            await trio.sleep(min(MAX_SLEEP_S, wait_s))

    async def fire_due(self) -> float:
        """Claim and fire every tick due now; the seconds until another may be due."""
        with trio.fail_after(CALL_TIMEOUT_S):
            await self._enqueue_pending()  # ticks claimed before the broker went away
        now_ms = int(self.clock() * 1000)
        with trio.fail_after(CALL_TIMEOUT_S):
            entries, later_ms = await self.schedules.due_schedules(now_ms, limit=BATCH)
        ticks: list[Tick] = []
        for entry in entries:
            assert entry.due_ms is not None
            try:
                schedule = Schedule.from_document(entry.document)
            except (ValueError, TypeError) as exc:
                self._warnings.warning(
                    f"bad:{entry.id}", "schedule %s is unreadable (%s): delete it", entry.id, exc
                )
                continue
            grace_ms = round(self.config.grace_s * 1000)
            ticks.append(plan_tick(schedule, entry.due_ms, now_ms, grace_ms=grace_ms))
        if ticks:
            versions = await self._versions(ticks)
            await self._claim_and_fire(ticks, versions)
        if len(entries) == BATCH:
            return 0.0
        # The claimed (or lost) ones are next due at their next tick at the latest.
        upcoming = [t.next_ms for t in ticks] + ([] if later_ms is None else [later_ms])
        return max(0.0, (min(upcoming) - now_ms) / 1000) if upcoming else MAX_SLEEP_S

    async def _versions(self, ticks: list[Tick]) -> dict[str, int | None]:
        """The current version of each flow to fire (None: unknown or no longer valid)."""
        versions: dict[str, int | None] = {}
        for tick in ticks:
            flow = tick.schedule.flow
            if tick.fire_ms is None or flow in versions:
                continue
            try:
                with trio.fail_after(CALL_TIMEOUT_S):
                    compiled = await self.flows.get(flow)
                versions[flow] = None if compiled is None else compiled.version
                self._flow_queues[flow] = None if compiled is None else compiled.queue
            except FlowValidationError:
                versions[flow] = None
        return versions

    async def _claim_and_fire(self, ticks: list[Tick], versions: dict[str, int | None]) -> None:
        claims = [(t.schedule.id, t.due_ms, t.next_ms) for t in ticks]
        # Shielded: a tick claimed is a tick enqueued (or kept pending), whatever
        # cancels us meanwhile.
        with trio.CancelScope(shield=True), trio.fail_after(CALL_TIMEOUT_S):
            won = set(await self.schedules.claim_ticks(claims))
            for tick in ticks:
                if tick.schedule.id not in won:
                    continue  # another main claimed it first, or it changed meanwhile
                outcome = self._judge(tick, versions.get(tick.schedule.flow))
                if outcome != "fired":
                    self.fires.inc(flow=tick.schedule.flow, outcome=outcome)
                    continue
                assert tick.fire_ms is not None
                version = versions[tick.schedule.flow]
                assert version is not None
                spec = JobSpec(
                    flow_id=tick.schedule.flow,
                    flow_version=version,
                    inputs=tick.schedule.inputs,
                    job_id=job_id(tick.schedule.id, tick.fire_ms),
                    owner=tick.schedule.owner,
                )
                self._pending.append((spec, tick))
            await self._enqueue_pending()

    async def _enqueue_pending(self) -> None:
        """Enqueue the jobs of the ticks claimed so far. While the broker does not
        answer they stay pending, retried before anything else on each pass: each
        job's id is its tick's, so enqueueing one again adds nothing."""
        if not self._pending:
            return
        # One queue at a time (a flow's jobs go to its queue's store).
        store = self._store(self._pending[0][0].flow_id)
        pending = [p for p in self._pending if self._store(p[0].flow_id) is store]
        rest = [p for p in self._pending if self._store(p[0].flow_id) is not store]
        try:
            await store.enqueue([spec for spec, _ in pending])
        except JobIdTaken as exc:
            taken = set(exc.positions)
            log.error(
                "schedule jobs %s refused: their ids belong to jobs of another API key "
                "(made with POST /api/v1/jobs?); those ticks fire nothing",
                [pending[n][0].job_id for n in sorted(taken)],
            )
            self._pending = [p for n, p in enumerate(pending) if n not in taken] + rest
            return await self._enqueue_pending()
        self._pending = rest
        for spec, tick in pending:
            self.fires.inc(flow=spec.flow_id, outcome="fired")
            log.info(
                "schedule %s fired job %s (flow %s)%s",
                tick.schedule.id,
                spec.job_id,
                spec.flow_id,
                ", for every tick missed before it" if tick.several else "",
                extra={
                    "schedule": tick.schedule.id,
                    "flow": spec.flow_id,
                    "job_id": spec.job_id,
                    "tick": tick.fire_ms,
                },
            )
        if rest:
            await self._enqueue_pending()

    def _store(self, flow: str) -> JobStore:
        queue = self._flow_queues.get(flow)
        return self.jobs if queue is None else self.queue_jobs.get(queue, self.jobs)

    def _judge(self, tick: Tick, version: int | None) -> str:
        schedule = tick.schedule
        if tick.fire_ms is None:
            log.info(
                "schedule %s: tick %d missed by more than schedules.grace_s, skipped",
                schedule.id,
                tick.due_ms,
                extra={"schedule": schedule.id, "flow": schedule.flow, "tick": tick.due_ms},
            )
            return "skipped"
        if version is None:
            log.warning(
                "schedule %s: flow %s is not registered (or no longer valid), tick %d "
                "fired no job; register the flow or delete the schedule",
                schedule.id,
                schedule.flow,
                tick.fire_ms,
                extra={"schedule": schedule.id, "flow": schedule.flow, "tick": tick.fire_ms},
            )
            return "failed"
        return "fired"
