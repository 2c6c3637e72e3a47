"""The scheduler on every broker kind, with a controlled wall clock: several schedulers
(as several main processes run) fire each tick as exactly one job."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import pytest
import trio

from flowqd.config import PluginsConfig, SchedulesConfig
from flowqd.errors import BrokerUnavailable
from flowqd.flows import FlowStore
from flowqd.jobs import JobSpec, JobStatus
from flowqd.metrics import Registry
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import Broker
from flowqd.queue.roles import JobStore
from flowqd.schedules import Schedule, Scheduler, job_id
from tests.queue.conftest import BrokerFactory

ECHO = {"id": "echo", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}
T0 = 1_800_000_000_000  # ms


@attrs.define
class FakeClock:
    ms: int = T0

    def __call__(self) -> float:
        return self.ms / 1000


async def flow_store(broker: Broker) -> FlowStore:
    store = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
    await store.put(ECHO)
    return store


def scheduler(broker: Broker, flows: FlowStore, clock: FakeClock, **config: float) -> Scheduler:
    made = Scheduler.create(
        broker.schedules, broker.jobs, flows, SchedulesConfig(**config), Registry()
    )
    made.clock = clock
    return made


async def put(broker: Broker, schedule: Schedule, due_ms: int) -> None:
    assert await broker.schedules.put_schedule(schedule.id, schedule.document(), due_ms)


async def waiting_ids(broker: Broker) -> list[str]:
    return sorted(j.id for j in await broker.jobs.list_jobs(JobStatus.WAITING, limit=1000))


async def test_two_schedulers_fire_each_tick_once(
    open_test_broker: BrokerFactory, broker_kind: str
) -> None:
    clock = FakeClock()
    every = Schedule(id="tick", flow="echo", interval_s=1, inputs={"q": 1}, owner="ops")
    with trio.fail_after(30):
        async with open_test_broker() as a, open_test_broker() as b_own:
            b = a if broker_kind == "memory" else b_own  # the embedded broker is one process's
            flows_a, flows_b = await flow_store(a), await flow_store(b)
            await put(a, every, T0 + 1000)
            one, two = scheduler(a, flows_a, clock), scheduler(b, flows_b, clock)
            assert await one.fire_due() == 1.0  # nothing due yet: sleep until the tick
            for n in range(1, 21):
                clock.ms = T0 + n * 1000
                # Both see the tick due; they race for it.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(one.fire_due)
                    nursery.start_soon(two.fire_due)
            ids = await waiting_ids(a)
            assert ids == sorted(job_id("tick", T0 + n * 1000) for n in range(1, 21))
            job = await a.jobs.get_job(ids[0])
            assert job is not None and job.inputs == {"q": 1} and job.owner == "ops"
            assert job.flow_id == "echo" and job.flow_version == 1
            fired = sum(
                v
                for s in (one, two)
                for k, v in s.fires.values.items()
                if ("outcome", "fired") in k
            )
            assert fired == 20


async def test_after_an_outage_once_fires_one_job_and_skip_none(
    open_test_broker: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="flowqd.schedule")
    with trio.fail_after(30):
        async with open_test_broker() as broker:
            flows = await flow_store(broker)
            await put(broker, Schedule(id="once", flow="echo", interval_s=60), T0)
            await put(broker, Schedule(id="skip", flow="echo", interval_s=60, missed="skip"), T0)
            clock.ms = T0 + 10 * 60_000 + 5_000  # ten minutes down, back 5 s after a tick
            s = scheduler(broker, flows, clock, grace_s=1)
            assert await s.fire_due() == pytest.approx(55.0)
            assert await waiting_ids(broker) == [job_id("once", T0 + 10 * 60_000)]
            for sid in ("once", "skip"):
                entry = await broker.schedules.get_schedule(sid)
                assert entry is not None and entry.due_ms == T0 + 11 * 60_000
            # Within the grace the skip schedule fires its tick.
            clock.ms = T0 + 11 * 60_000 + 500
            await s.fire_due()
            assert job_id("skip", T0 + 11 * 60_000) in await waiting_ids(broker)
    fired = [r for r in caplog.records if getattr(r, "job_id", None)]
    assert fired[0].schedule == "once" and fired[0].tick == T0 + 10 * 60_000  # type: ignore[attr-defined]
    assert "for every tick missed before it" in fired[0].getMessage()
    assert any("skipped" in r.getMessage() and r.schedule == "skip" for r in caplog.records)  # type: ignore[attr-defined]


async def test_paused_and_flowless_schedules_fire_no_job(
    open_test_broker: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with trio.fail_after(30):
        async with open_test_broker() as broker:
            flows = await flow_store(broker)
            await put(broker, Schedule(id="p", flow="echo", interval_s=5), T0)
            await put(broker, Schedule(id="gone", flow="nope", interval_s=5), T0)
            await broker.schedules.pause_schedule("p")
            clock.ms = T0 + 100
            s = scheduler(broker, flows, clock)
            await s.fire_due()
            assert await waiting_ids(broker) == []
            entry = await broker.schedules.get_schedule("gone")
            assert entry is not None and entry.due_ms == T0 + 5000  # consumed, not retried
    assert any(
        r.levelno == logging.WARNING and "flow nope is not registered" in r.getMessage()
        for r in caplog.records
    )


async def test_a_shutdown_stops_the_scheduler_promptly(open_test_broker: BrokerFactory) -> None:
    with trio.fail_after(10):
        async with open_test_broker() as broker:
            s = scheduler(broker, await flow_store(broker), FakeClock())
            shutdown = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(s.run, shutdown)
                shutdown.set()


@attrs.define
class UnreachableJobs:
    """The broker's JobStore, unreachable for enqueues while ``down`` (an outage that
    starts right after a claim: the moment a tick could be lost)."""

    jobs: JobStore
    down: bool = True

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise BrokerUnavailable("Redis at 127.0.0.1:1 did not answer (test outage)")
        return await self.jobs.enqueue(specs)


async def test_a_claimed_tick_is_enqueued_once_the_broker_answers(
    open_test_broker: BrokerFactory,
) -> None:
    clock = FakeClock()
    with trio.fail_after(30):
        async with open_test_broker() as broker:
            flows = await flow_store(broker)
            await put(broker, Schedule(id="s", flow="echo", interval_s=1), T0)
            outage = UnreachableJobs(broker.jobs)
            s = scheduler(broker, flows, clock)
            s.jobs = outage
            with pytest.raises(BrokerUnavailable):
                await s.fire_due()
            entry = await broker.schedules.get_schedule("s")
            assert entry is not None and entry.due_ms == T0 + 1000  # claimed: no one else fires it
            assert await waiting_ids(broker) == []
            outage.down = False
            clock.ms = T0 + 500  # nothing new due: the pending job goes first
            await s.fire_due()
            assert await waiting_ids(broker) == [job_id("s", T0)]


async def test_a_tick_of_a_flow_on_another_queue_is_enqueued_there(
    open_test_broker: BrokerFactory, queue_name: str
) -> None:
    clock = FakeClock()
    every = Schedule(id="bulk-tick", flow="bulk-echo", interval_s=1)
    with trio.fail_after(30):
        async with (
            open_test_broker() as default,
            open_test_broker(name=f"{queue_name}-bulk") as bulk,
        ):
            flows = await flow_store(default)
            await flows.put({**ECHO, "id": "bulk-echo", "queue": "bulk"})
            await put(default, every, T0 + 1000)
            made = Scheduler.create(
                default.schedules,
                default.jobs,
                flows,
                SchedulesConfig(),
                Registry(),
                {"bulk": bulk.jobs},
            )
            made.clock = clock
            clock.ms = T0 + 1000
            await made.fire_due()
            assert await waiting_ids(default) == []
            assert await waiting_ids(bulk) == [job_id("bulk-tick", T0 + 1000)]
