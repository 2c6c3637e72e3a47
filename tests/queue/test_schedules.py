"""The ``Schedules`` role on every broker kind, and the claim that fires a tick once."""

from __future__ import annotations

import pytest
import trio

from flowqd.queue import Broker
from tests.queue.conftest import BrokerFactory


async def test_put_get_list_pause_resume_delete(broker: Broker) -> None:
    s = broker.schedules
    with trio.fail_after(10):
        assert await s.get_schedule("a") is None
        assert await s.put_schedule("b", b'{"v":1}', 2_000)
        assert await s.put_schedule("a", b'{"v":1}', 1_000)
        listed = await s.list_schedules()
        assert [(e.id, e.document, e.due_ms, e.last_ms) for e in listed] == [
            ("a", b'{"v":1}', 1_000, None),
            ("b", b'{"v":1}', 2_000, None),
        ]
        assert await s.pause_schedule("a")
        entry = await s.get_schedule("a")
        assert entry is not None and entry.due_ms is None
        # Resuming a paused one sets its due time; resuming a running one keeps its own.
        assert await s.resume_schedule("a", 5_000)
        assert await s.resume_schedule("a", 9_000)
        entry = await s.get_schedule("a")
        assert entry is not None and entry.due_ms == 5_000
        assert await s.delete_schedule("a")
        assert await s.get_schedule("a") is None
        assert not await s.delete_schedule("a")
        assert not await s.pause_schedule("a")
        assert not await s.resume_schedule("a", 1)
        assert [e.id for e in await s.list_schedules()] == ["b"]


async def test_an_unchanged_put_keeps_due_time_and_pause(broker: Broker) -> None:
    s = broker.schedules
    with trio.fail_after(10):
        assert await s.put_schedule("a", b"v1", 1_000)
        assert not await s.put_schedule("a", b"v1", 7_000)
        entry = await s.get_schedule("a")
        assert entry is not None and entry.due_ms == 1_000
        await s.pause_schedule("a")
        assert not await s.put_schedule("a", b"v1", 7_000)
        # A changed definition replaces it, and a paused one stays paused.
        assert await s.put_schedule("a", b"v2", 8_000)
        entry = await s.get_schedule("a")
        assert entry is not None and (entry.document, entry.due_ms) == (b"v2", None)
        await s.resume_schedule("a", 9_000)
        assert await s.put_schedule("a", b"v3", 10_000)
        entry = await s.get_schedule("a")
        assert entry is not None and (entry.document, entry.due_ms) == (b"v3", 10_000)


async def test_due_schedules_earliest_first_with_the_next_due_time(broker: Broker) -> None:
    s = broker.schedules
    with trio.fail_after(10):
        for sid, due in (("c", 3_000), ("a", 1_000), ("b", 2_000), ("d", 9_000), ("p", 500)):
            await s.put_schedule(sid, sid.encode(), due)
        await s.pause_schedule("p")
        due, later = await s.due_schedules(2_500, limit=10)
        assert [(e.id, e.document, e.due_ms) for e in due] == [
            ("a", b"a", 1_000),
            ("b", b"b", 2_000),
        ]
        assert later == 3_000
        due, _ = await s.due_schedules(9_000, limit=2)
        assert [e.id for e in due] == ["a", "b"]
        assert await s.due_schedules(100, limit=10) == ([], 1_000)
        await s.delete_schedule("d")
        assert (await s.due_schedules(5_000, limit=10))[1] is None


async def test_claim_moves_the_due_time_once_and_refuses_a_stale_one(broker: Broker) -> None:
    s = broker.schedules
    with trio.fail_after(10):
        await s.put_schedule("a", b"a", 1_000)
        await s.put_schedule("b", b"b", 1_000)
        assert await s.claim_ticks([("a", 1_000, 2_000), ("b", 1_000, 2_000)]) == ["a", "b"]
        # A second process read the same due times: both claims are refused.
        assert await s.claim_ticks([("a", 1_000, 2_000), ("b", 1_000, 2_000)]) == []
        entry = await s.get_schedule("a")
        assert entry is not None and (entry.due_ms, entry.last_ms) == (2_000, 1_000)
        # Paused or deleted since it was read: refused too.
        await s.pause_schedule("a")
        await s.delete_schedule("b")
        assert await s.claim_ticks([("a", 2_000, 3_000), ("b", 2_000, 3_000)]) == []
        assert await s.claim_ticks([]) == []


@pytest.mark.parametrize("racers", [2, 5])
async def test_racing_claims_win_each_tick_once(
    open_test_broker: BrokerFactory, broker_kind: str, racers: int
) -> None:
    """Several brokers (each its own client, like separate main processes; one shared
    state for the embedded broker) claim the same ticks at once: each is won once."""
    wins: list[tuple[int, str]] = []

    async def race(broker: Broker) -> None:
        for tick in range(30):
            for sid in await broker.schedules.claim_ticks([("s", tick, tick + 1)]):
                wins.append((tick, sid))
            await trio.lowlevel.checkpoint()

    with trio.fail_after(20):
        async with open_test_broker() as first, trio.open_nursery() as holders:
            await first.schedules.put_schedule("s", b"s", 0)
            brokers = [first]
            for _ in range(racers - 1):
                brokers.append(
                    first
                    if broker_kind == "memory"
                    else await holders.start(_hold, open_test_broker)
                )
            async with trio.open_nursery() as races:
                for broker in brokers:
                    races.start_soon(race, broker)
            entry = await first.schedules.get_schedule("s")
            assert entry is not None and (entry.due_ms, entry.last_ms) == (30, 29)
            holders.cancel_scope.cancel()
    assert sorted(wins) == [(t, "s") for t in range(30)]


async def _hold(open_test_broker: BrokerFactory, *, task_status: trio.TaskStatus[Broker]) -> None:
    async with open_test_broker() as broker:
        task_status.started(broker)
        await trio.sleep_forever()
