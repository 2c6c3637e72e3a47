"""Conversation memory on every broker kind: turns written only with a completed
outcome, bounded by turns, bytes, sessions and age, listed and cleared.

Each test is bounded by ``trio.fail_after``; memory-broker tests that involve
time run on the autojump clock (the ``clock`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from flowqd.config import Config, MemoryConfig
from flowqd.jobs import Claimed, ConversationKey, Outcome, OutcomeKind, Turn, TurnWrite
from flowqd.queue import Broker, open_broker
from flowqd.queue.turns import encode_turn
from flowqd.redis import open_redis
from tests.queue.conftest import node_of_queue
from tests.queue.helpers import claim_one, failed, spec, wait_until

MemoryBroker = Callable[..., AbstractAsyncContextManager[Broker]]
KEY = ConversationKey("f", "s1", "k1")


@pytest.fixture
def open_memory_broker(make_config: Callable[..., Config]) -> MemoryBroker:
    """``async with open_memory_broker(max_turns=3, ...)``: running, with maintenance."""

    @asynccontextmanager
    async def factory(
        *, stalled_interval_s: float = 0.1, queue: dict[str, Any] | None = None, **memory: Any
    ) -> AsyncIterator[Broker]:
        config = attrs.evolve(make_config(**(queue or {})), memory=MemoryConfig(**memory))
        async with open_broker(config) as broker, trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            await nursery.start(
                lambda task_status: broker.work.run_maintenance(
                    stalled_interval_s=stalled_interval_s, task_status=task_status
                )
            )
            yield broker
            nursery.cancel_scope.cancel()

    return factory


def turn_of(
    claimed: Claimed, question: str = "q", answer: str = "a", key: ConversationKey = KEY
) -> TurnWrite:
    return TurnWrite(key, Turn(claimed.job.id, "chat-1", question, answer, 1.5e9))


def done_with_turn(claimed: Claimed, **turn: Any) -> Outcome:
    return Outcome(
        claimed.job.id,
        claimed.token,
        OutcomeKind.COMPLETED,
        result=turn.get("answer", "a"),
        turn=turn_of(claimed, **turn),
    )


async def run_turn(broker: Broker, **turn: Any) -> str:
    """One job through claim and a completed flush with a turn; its id."""
    [job_id] = await broker.jobs.enqueue([spec()])
    claimed = await claim_one(broker)
    assert claimed.job.id == job_id
    assert await broker.work.flush([], [done_with_turn(claimed, **turn)]) == [True]
    return job_id


async def test_a_completed_outcome_appends_its_turn(open_memory_broker: MemoryBroker) -> None:
    with trio.fail_after(10):
        async with open_memory_broker() as broker:
            assert await broker.conversations.read_turns(KEY) == []
            first = await run_turn(broker, question="hi", answer="hello")
            second = await run_turn(broker, question="and?", answer="more")
            turns = await broker.conversations.read_turns(KEY)
            assert turns == [
                Turn(first, "chat-1", "hi", "hello", 1.5e9),
                Turn(second, "chat-1", "and?", "more", 1.5e9),
            ]
            assert await broker.conversations.read_turns(KEY, turns=1) == turns[1:]
            assert await broker.conversations.read_turns(KEY, turns=0) == []
            # The outcome itself is recorded as always.
            job = await broker.jobs.get_job(second)
            assert job is not None and job.result == "more"
            # Another owner's conversation of the same session is another one.
            other = ConversationKey("f", "s1", "k2")
            assert await broker.conversations.read_turns(other) == []


async def test_refused_failed_and_cancelled_outcomes_write_no_turn(
    open_memory_broker: MemoryBroker,
) -> None:
    with trio.fail_after(10):
        async with open_memory_broker() as broker:
            await broker.jobs.enqueue([spec(1), spec(2), spec(3)])
            claimed = [await claim_one(broker) for _ in range(3)]
            wrong = attrs.evolve(claimed[0], token="not-the-token")
            assert await broker.work.flush([], [done_with_turn(wrong)]) == [False]
            # A failure or a cancel carrying a turn (a worker never sends one) stores none.
            fail = attrs.evolve(failed(claimed[1], retry=False), turn=turn_of(claimed[1]))
            cancel = Outcome(
                claimed[2].job.id, claimed[2].token, OutcomeKind.CANCELLED, turn=turn_of(claimed[2])
            )
            assert await broker.work.flush([], [fail, cancel]) == [True, True]
            assert await broker.conversations.read_turns(KEY) == []
            assert await broker.conversations.sessions("f", owner="k1") == []
            # The first job's real outcome still writes its turn.
            assert await broker.work.flush([], [done_with_turn(claimed[0])]) == [True]
            [turn] = await broker.conversations.read_turns(KEY)
            assert turn.job_id == claimed[0].job.id


async def test_a_stalled_job_run_again_writes_one_turn(
    open_memory_broker: MemoryBroker, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_memory_broker(queue={"max_stalled": 1}) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            first = await claim_one(broker, "w1", lock_ttl_s=0.2)
            second = await claim_one(broker, "w2", lock_ttl_s=30)  # after the stalled check
            assert second.job.id == job_id and second.job.attempts == 2
            # Both runs finish; only the current lock's outcome (and turn) counts.
            assert await broker.work.flush([], [done_with_turn(second, answer="two")]) == [True]
            assert await broker.work.flush([], [done_with_turn(first, answer="one")]) == [False]
            turns = await broker.conversations.read_turns(KEY)
            assert [(t.job_id, t.answer) for t in turns] == [(job_id, "two")]


async def test_bounded_by_turns(open_memory_broker: MemoryBroker) -> None:
    with trio.fail_after(20):
        async with open_memory_broker(max_turns=3) as broker:
            ids = [await run_turn(broker, question=f"q{n}") for n in range(5)]
            turns = await broker.conversations.read_turns(KEY)
            assert [t.job_id for t in turns] == ids[2:]
            assert [t.question for t in turns] == ["q2", "q3", "q4"]


async def test_bounded_by_turns_and_bytes_together(open_memory_broker: MemoryBroker) -> None:
    with trio.fail_after(20):
        async with open_memory_broker(max_bytes=1024, max_turns=3) as broker:
            small = [await run_turn(broker, question=f"s{n}") for n in range(4)]
            turns = await broker.conversations.read_turns(KEY)
            assert [t.job_id for t in turns] == small[1:]  # the turn bound
            ids = [await run_turn(broker, question=f"q{n}", answer="x" * 300) for n in range(6)]
            turns = await broker.conversations.read_turns(KEY)
            sizes = [len(encode_turn(t, 10**6) or b"") for t in turns]
            # Past both 1024 bytes and 3 turns: the oldest went, the newest stay.
            assert sum(sizes) <= 1024 and len(turns) == 2, sizes
            assert [t.job_id for t in turns] == ids[-2:]
            # A turn larger than the bound alone is kept, cut to fit (answer first).
            big = await run_turn(broker, question="long?", answer="é" * 5000)
            [turn] = await broker.conversations.read_turns(KEY)
            assert turn.job_id == big and turn.question == "long?"
            assert 0 < len(turn.answer) < 5000 and set(turn.answer) == {"é"}
            # Cut by bytes: as much as fits, to within the last (two-byte) character.
            assert 1022 <= len(encode_turn(turn, 10**6) or b"") <= 1024


async def test_sessions_newest_first_and_bounded(open_memory_broker: MemoryBroker) -> None:
    with trio.fail_after(20):
        async with open_memory_broker(max_sessions=3) as broker:
            conversations = broker.conversations
            for n in range(5):
                await run_turn(broker, key=ConversationKey("f", f"s{n}", "k1"))
            await run_turn(broker, key=ConversationKey("g", "s0", "k1"))  # another flow
            listed = await conversations.sessions("f", owner="k1")
            assert [k.session for k in listed] == ["s4", "s3", "s2"]
            assert listed[0] == ConversationKey("f", "s4", "k1")
            # Forgotten beyond max_sessions, turns and all.
            assert await conversations.read_turns(ConversationKey("f", "s0", "k1")) == []
            assert await conversations.read_turns(ConversationKey("g", "s0", "k1")) != []
            # A conversation written again is the newest.
            await run_turn(broker, key=ConversationKey("f", "s2", "k1"))
            listed = await conversations.sessions("f", owner="k1")
            assert [k.session for k in listed] == ["s2", "s4", "s3"]
            # Owners: each sees its own; all_owners sees every one; limit.
            await run_turn(broker, key=ConversationKey("f", "s9", None))
            assert [k.session for k in await conversations.sessions("f", owner=None)] == ["s9"]
            mine = await conversations.sessions("f", owner="k1")
            assert [k.session for k in mine] == ["s2", "s4"]
            every = await conversations.sessions("f", owner=None, all_owners=True)
            assert every == [
                ConversationKey("f", "s9", None),
                ConversationKey("f", "s2", "k1"),
                ConversationKey("f", "s4", "k1"),
            ]
            assert await conversations.sessions("f", owner="k1", limit=1) == mine[:1]
            assert await conversations.sessions("nope", owner="k1") == []


async def test_clear(open_memory_broker: MemoryBroker) -> None:
    with trio.fail_after(10):
        async with open_memory_broker() as broker:
            conversations = broker.conversations
            await run_turn(broker)
            await run_turn(broker)
            other = ConversationKey("f", "s2", "k1")
            await run_turn(broker, key=other)
            assert await conversations.clear(KEY) == 2
            assert await conversations.read_turns(KEY) == []
            assert await conversations.sessions("f", owner="k1") == [other]
            assert await conversations.clear(KEY) == 0
            # Written again after a clear: a new conversation, counted from zero.
            await run_turn(broker, answer="again")
            assert [t.answer for t in await conversations.read_turns(KEY)] == ["again"]
            assert await conversations.read_turns(other) != []


async def test_forgotten_after_ttl(
    open_memory_broker: MemoryBroker, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_memory_broker(ttl_s=0.5) as broker:
            conversations = broker.conversations
            await run_turn(broker)
            assert len(await conversations.read_turns(KEY)) == 1

            async def gone() -> bool:
                return not await conversations.read_turns(KEY) and not await conversations.sessions(
                    "f", owner="k1"
                )

            await wait_until(gone, interval=0.05)


async def test_redis_keys_expire_and_share_the_queue_slot(
    broker_kind: str,
    request: pytest.FixtureRequest,
    open_memory_broker: MemoryBroker,
    queue_name: str,
) -> None:
    if broker_kind == "memory":
        pytest.skip("Redis keys only")
    with trio.fail_after(10):
        async with open_memory_broker(ttl_s=60) as broker:
            await run_turn(broker)
        async with open_redis(node_of_queue(broker_kind, request, queue_name), name="raw") as raw:
            prefix = "flowqd:{" + queue_name + "}:"
            keys = sorted(k.decode() for k in await raw.execute(b"KEYS", prefix + "conv*"))
            assert keys == [
                prefix + "conv-bytes:f/k1/s1",
                prefix + "conv:f/k1/s1",
                prefix + "convs:f",
            ]
            for key in keys:
                assert 0 < await raw.execute(b"PTTL", key) <= 60_000


async def test_a_turn_whose_ids_alone_exceed_max_bytes_is_not_stored(
    open_memory_broker: MemoryBroker,
) -> None:
    with trio.fail_after(10):
        async with open_memory_broker(max_bytes=1024) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            turn = TurnWrite(KEY, Turn(job_id, "c" * 2000, "q", "a", 1.5e9))
            outcome = Outcome(job_id, claimed.token, OutcomeKind.COMPLETED, result="a", turn=turn)
            assert await broker.work.flush([], [outcome]) == [True]
            job = await broker.jobs.get_job(job_id)
            assert job is not None and job.result == "a"  # the outcome stands
            assert await broker.conversations.read_turns(KEY) == []
