"""Redis-only broker properties: concurrency, cancellation, shared event reader, outages."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from flowqd.config import Config, QueueConfig, RedisConfig
from flowqd.errors import BrokerUnavailable
from flowqd.jobs import (
    Claimed,
    EmittedEvent,
    Event,
    JobStatus,
    Outcome,
    OutcomeKind,
    parse_event_id,
)
from flowqd.queue import Broker, open_broker
from flowqd.queue.keys import prefix_of
from flowqd.queue.redis import events as events_module
from flowqd.redis import Redis, open_redis
from tests.queue.conftest import node_of_queue, redis_config
from tests.queue.helpers import (
    claim_one,
    done,
    failed,
    spec,
    wait_until,
    watch_events,
)
from tests.redisproc import free_port


@pytest.fixture
def config(redis_kind: str, request: pytest.FixtureRequest, queue_name: str) -> Config:
    return Config(
        role="all",
        queue=QueueConfig(broker="redis", name=queue_name, backoff_s=0.05),
        redis=redis_config(redis_kind, request),
    )


@pytest.fixture
def open_running(config: Config) -> Callable[[], AsyncIterator[Broker]]:
    @asynccontextmanager
    async def factory() -> AsyncIterator[Broker]:
        async with open_broker(config) as broker, trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            yield broker
            nursery.cancel_scope.cancel()

    return factory  # type: ignore[return-value]


@pytest.fixture
async def raw(
    redis_kind: str, request: pytest.FixtureRequest, config: Config
) -> AsyncIterator[Redis]:
    """A plain client on the server that holds the queue (a cluster node too)."""
    node = node_of_queue(redis_kind, request, config.queue.name)
    async with open_redis(node, name="test-raw") as redis:
        yield redis


async def test_concurrent_claimers_never_share_a_job(open_running: Callable[..., Any]) -> None:
    """1,000 jobs, 4 claimer tasks on 2 clients: 1,000 outcomes, none doubled."""
    total = 1000
    with trio.fail_after(30):
        async with open_running() as b1, open_running() as b2:
            ids = await b1.jobs.enqueue([spec(i) for i in range(total)])
            claimed: list[str] = []
            recorded: list[bool] = []
            finished = trio.Event()

            async def claimer(broker: Broker, name: str) -> None:
                while len(recorded) < total:
                    n = random.randint(1, 40)
                    got = await broker.work.claim(name, n, lock_ttl_s=30, block_s=0.2)
                    claimed.extend(c.job.id for c in got)
                    recorded.extend(await broker.work.flush([], [done(c, name) for c in got]))
                finished.set()

            async with trio.open_nursery() as nursery:
                for n, broker in enumerate((b1, b2, b1, b2)):
                    nursery.start_soon(claimer, broker, f"w{n}")
                await finished.wait()
                nursery.cancel_scope.cancel()
            assert sorted(claimed) == sorted(ids)
            assert recorded == [True] * total
            counts = await b1.control.counts()
            assert counts[JobStatus.COMPLETED] == total
            assert counts[JobStatus.ACTIVE] == counts[JobStatus.WAITING] == 0
            for job_id in ids[::50]:
                assert [e.name for e in await b1.jobs.read_events(job_id)] == ["end"]


async def _is_blocked(raw: Redis) -> bool:
    """Whether some client waits in a blocking command (our claim's BZPOPMIN)."""
    info = (await raw.execute(b"INFO", b"clients")).decode()
    return int(info.split("blocked_clients:")[1].split()[0]) > 0


async def test_blocked_claim_cancelled_leaves_queue_intact(
    open_running: Callable[..., Any], raw: Redis
) -> None:
    with trio.fail_after(10):
        async with open_running() as broker:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: broker.work.claim("w1", 10, lock_ttl_s=30, block_s=30))
                await wait_until(lambda: _is_blocked(raw))
                nursery.cancel_scope.cancel()
            [job_id] = await broker.jobs.enqueue([spec()])
            assert (await broker.control.counts())[JobStatus.WAITING] == 1
            claimed = await claim_one(broker)
            assert claimed.job.id == job_id and claimed.job.attempts == 1


async def test_cancelled_claims_lose_nothing(open_running: Callable[..., Any]) -> None:
    """Claims cancelled at random moments: every job still runs once, attempt uncounted."""
    rounds = 150
    with trio.fail_after(30):
        async with open_running() as broker:
            ids = await broker.jobs.enqueue([spec(i) for i in range(rounds)])
            outcomes = Counter[str]()
            for _ in range(rounds):
                got: list[Claimed] = []
                with trio.move_on_after(random.random() * 0.002):
                    got = await broker.work.claim("w1", 2, lock_ttl_s=30, block_s=0)
                counts = await broker.control.counts()
                assert counts[JobStatus.ACTIVE] == len(got)
                for c in got:
                    assert c.job.attempts == 1
                    outcomes[c.job.id] += 1
                await broker.work.flush([], [done(c) for c in got])
            while True:
                got = await broker.work.claim("w1", 50, lock_ttl_s=30, block_s=0)
                if not got:
                    break
                assert all(c.job.attempts == 1 for c in got)
                outcomes.update(c.job.id for c in got)
                await broker.work.flush([], [done(c) for c in got])
            assert outcomes == Counter({job_id: 1 for job_id in ids})


async def test_idle_claim_wakes_on_enqueue(open_running: Callable[..., Any], raw: Redis) -> None:
    with trio.fail_after(5):  # far below block_s: woken by the doorbell, not a timeout
        async with open_running() as broker:
            got: list[Claimed] = []
            async with trio.open_nursery() as nursery:

                async def claimer() -> None:
                    got.extend(await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=60))

                nursery.start_soon(claimer)
                await wait_until(lambda: _is_blocked(raw))
                [job_id] = await broker.jobs.enqueue([spec()])
            assert [c.job.id for c in got] == [job_id]


async def test_no_subscription_without_watchers(open_running: Callable[..., Any]) -> None:
    # A worker writes events but never watches: it does not receive the
    # doorbell of every flush in the cluster.
    with trio.fail_after(20):
        async with open_running() as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            await broker.work.flush([EmittedEvent(job_id, "t", 1)], [done(claimed)])
            stats = await broker.control.statistics()
            assert stats["dedicated_connections"] == 0
            assert stats["event_rings"] == 0


async def test_many_watchers_share_one_subscription(open_running: Callable[..., Any]) -> None:
    with trio.fail_after(20):
        async with open_running() as broker:
            ids = await broker.jobs.enqueue([spec(i) for i in range(300)])
            claimed = await broker.work.claim("w1", 300, lock_ttl_s=30, block_s=1)
            received: dict[str, list[str]] = {}
            async with trio.open_nursery() as nursery:
                for job_id in ids:

                    async def watcher(job_id: str = job_id) -> None:
                        received[job_id] = [e.name async for e in watch_events(broker.jobs, job_id)]

                    nursery.start_soon(watcher)
                await broker.work.flush([EmittedEvent(j, "t", 1) for j in ids], [])

                async def subscribed() -> bool:
                    stats = await broker.control.statistics()
                    # The doorbell subscription, opened for the first watcher.
                    return bool(stats["dedicated_connections"] == 1)

                await wait_until(subscribed)
                await broker.work.flush([], [done(c) for c in claimed])
            assert received == {j: ["t", "end"] for j in ids}


async def test_a_job_ended_with_all_its_events_in_one_flush_rings_its_watchers(
    open_running: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the doorbell may wake the reader: no re-read once a second.
    monkeypatch.setattr(events_module, "SAFETY_INTERVAL_S", 3600.0)
    with trio.fail_after(10):
        async with open_running() as broker:
            ids = await broker.jobs.enqueue([spec(0), spec(1)])
            claimed = await broker.work.claim("w1", 2, lock_ttl_s=30, block_s=1)
            seen: dict[str, list[str]] = {job_id: [] for job_id in ids}
            first = trio.Event()
            async with trio.open_nursery() as nursery:
                for job_id in ids:

                    async def watcher(job_id: str = job_id) -> None:
                        async for event in watch_events(broker.jobs, job_id):
                            seen[job_id].append(event.name)
                            first.set()

                    nursery.start_soon(watcher)
                # Once the first job's event arrives, the reader has read both
                # jobs (in that pass or before) and waits for a ring.
                while not first.is_set():
                    await broker.work.flush([EmittedEvent(ids[0], "token", 0)], [])
                    with trio.move_on_after(0.05):
                        await first.wait()
                assert seen[ids[1]] == []
                # The second has had no event: all of them come with its end.
                emitted = [EmittedEvent(ids[1], name, 1) for name in ("a", "b")]
                end = [done(c) for c in claimed]
                await broker.work.flush(emitted, end)
            assert seen[ids[1]] == ["a", "b", "end"]


async def test_watchers_joining_while_events_flow_miss_nothing(
    open_running: Callable[..., Any],
) -> None:
    # Watchers of the same jobs join between writes, each reading its
    # replay while the shared reader feeds the others: a read that started
    # past a newcomer's cursor must not be handed to it (it would skip the
    # entries in between). Every watcher gets every event once, in order.
    rounds, per_round = 12, 3
    with trio.fail_after(30):
        async with open_running() as broker:
            ids = await broker.jobs.enqueue([spec(i) for i in range(20)])
            claimed = await broker.work.claim("w1", 20, lock_ttl_s=30, block_s=1)
            results: list[list[object]] = []
            async with trio.open_nursery() as nursery:

                async def watcher(job_id: str) -> None:
                    results.append([e.data async for e in watch_events(broker.jobs, job_id)])

                for i in range(rounds):
                    for job_id in ids:
                        for _ in range(per_round):
                            nursery.start_soon(watcher, job_id)
                    await broker.work.flush([EmittedEvent(j, "t", i) for j in ids], [])
                await broker.work.flush([], [done(c, "end") for c in claimed])
            assert len(results) == rounds * per_round * len(ids)
            assert [data for data in results if data != [*range(rounds), "end"]] == []


async def test_slow_watcher_does_not_stall_others(open_running: Callable[..., Any]) -> None:
    with trio.fail_after(20):
        async with open_running() as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            release = trio.Event()
            slow: list[Event] = []
            fast: list[Event] = []
            async with trio.open_nursery() as nursery:

                async def slow_watcher() -> None:
                    async for event in watch_events(broker.jobs, job_id):
                        slow.append(event)
                        if len(slow) == 3:
                            await release.wait()

                async def fast_watcher() -> None:
                    fast.extend([e async for e in watch_events(broker.jobs, job_id)])
                    release.set()

                nursery.start_soon(slow_watcher)
                for start in range(0, 2000, 100):
                    await broker.work.flush(
                        [EmittedEvent(job_id, "t", i) for i in range(start, start + 100)], []
                    )
                nursery.start_soon(fast_watcher)
                await broker.work.flush([], [done(claimed)])
            expected = await broker.jobs.read_events(job_id, count=5000)
            assert len(expected) == 2001
            assert fast == expected and slow == expected


async def test_events_survive_lost_subscription(
    open_running: Callable[..., Any], raw: Redis
) -> None:
    with trio.fail_after(20):
        async with open_running() as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            seen: list[object] = []
            async with trio.open_nursery() as nursery:

                async def watcher() -> None:
                    seen.extend([e.data async for e in watch_events(broker.jobs, job_id)])

                nursery.start_soon(watcher)
                await broker.work.flush([EmittedEvent(job_id, "t", 0)], [])
                await raw.execute(b"CLIENT", b"KILL", b"TYPE", b"pubsub")
                for i in range(1, 4):
                    await broker.work.flush([EmittedEvent(job_id, "t", i)], [])
                await broker.work.flush([], [done(claimed, "r")])
            assert seen == [0, 1, 2, 3, "r"]


async def test_unreachable_redis(queue_name: str) -> None:
    config = Config(
        role="all",
        queue=QueueConfig(broker="redis", name=queue_name),
        redis=RedisConfig(
            url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=0.5, command_timeout_s=0.5
        ),
    )
    with trio.fail_after(10):
        async with open_broker(config) as broker:  # entering needs no Redis
            with pytest.raises(BrokerUnavailable):
                await broker.jobs.enqueue([spec()])
            with pytest.raises(BrokerUnavailable):
                await broker.work.claim("w1", 1, lock_ttl_s=1, block_s=0.1)
            with pytest.raises(BrokerUnavailable):
                await broker.ping()


async def test_every_key_has_the_queue_hash_tag(
    open_running: Callable[..., Any], raw: Redis, queue_name: str
) -> None:
    with trio.fail_after(10):
        async with open_running() as broker:
            ids = await broker.jobs.enqueue([spec(i) for i in range(3)])
            await broker.jobs.enqueue([spec(delay_s=30)])
            await broker.flow_documents.put_flow("f", b"{}")
            await broker.secrets.put_secret("s", b"x")
            await broker.control.pause()
            c = await claim_one_unpaused(broker)
            await broker.work.flush([EmittedEvent(c.job.id, "t", 1)], [done(c)])
            await broker.jobs.cancel(ids[1])
            keys = await raw.execute(b"KEYS", f"*{queue_name}*")
            assert len(keys) >= 10
            assert all(k.decode().startswith(prefix_of(queue_name)) for k in keys)


async def claim_one_unpaused(broker: Broker) -> Claimed:
    await broker.control.resume()
    return await claim_one(broker)


async def test_job_record_is_small(
    open_running: Callable[..., Any], raw: Redis, queue_name: str
) -> None:
    """Jobs reference their flow by id and version; no graph is copied into them."""
    with trio.fail_after(10):
        async with open_running() as broker:
            await broker.flow_documents.put_flow("f", b'{"nodes": "' + b"x" * 5000 + b'"}')
            [job_id] = await broker.jobs.enqueue([spec()])
            job_key = prefix_of(queue_name) + "job:" + job_id
            fields = await raw.execute(b"HGETALL", job_key)
            assert sum(len(v) for v in fields) < 300


async def test_locks_hold_the_active_jobs_in_hashed_keys(
    open_running: Callable[..., Any], raw: Redis, queue_name: str
) -> None:
    """K_LOCKS holds each active job's token and nothing else but keys.KEEPER,
    which keeps it and K_ACTIVE in Redis's hashed encoding even with a few
    jobs; counts and listings do not see the keeper."""
    from flowqd.queue.keys import KEEPER, KEEPER_FIELD, QueueKeys

    keys = QueueKeys(queue_name)
    with trio.fail_after(10):
        async with open_running() as broker:
            ids = await broker.jobs.enqueue([spec(i) for i in range(4)])
            claimed = await broker.work.claim("w1", 4, lock_ttl_s=30, block_s=0)
            assert await raw.execute(b"OBJECT", b"ENCODING", keys.active) == b"skiplist"
            assert await raw.execute(b"OBJECT", b"ENCODING", keys.locks) == b"hashtable"
            locks = await raw.execute(b"HGETALL", keys.locks)
            assert dict(zip(locks[0::2], locks[1::2], strict=True)) == {
                KEEPER_FIELD.encode(): KEEPER.encode(),
                **{c.job.id.encode(): c.token.encode() for c in claimed},
            }
            assert (await broker.control.counts())[JobStatus.ACTIVE] == 4
            listed = await broker.jobs.list_jobs(JobStatus.ACTIVE, limit=10)
            assert sorted(j.id for j in listed) == sorted(ids)
            # Each way out of active takes the lock: completed, failed, put back.
            requeue = Outcome(claimed[2].job.id, claimed[2].token, OutcomeKind.REQUEUE)
            outcomes = [done(claimed[0]), failed(claimed[1]), requeue]
            assert await broker.work.flush([], outcomes) == [True] * 3
            assert sorted(await raw.execute(b"HKEYS", keys.locks)) == sorted(
                [KEEPER_FIELD.encode(), claimed[3].job.id.encode()]
            )
            assert (await broker.control.counts())[JobStatus.ACTIVE] == 1
            listed = await broker.jobs.list_jobs(JobStatus.ACTIVE, limit=10)
            assert [j.id for j in listed] == [claimed[3].job.id]


async def test_jobs_ended_together_keep_their_order_in_exact_scores(
    open_running: Callable[..., Any], raw: Redis, queue_name: str
) -> None:
    """The scripts write a finished set's scores as text (common.lua's
    finish_score): jobs ended in one call, more of them than its table of
    fractions holds, and in the next call, get scores 1/1024 ms apart, exact,
    in the order they ended; the finish clock keeps the last one."""
    from flowqd.queue.redis.codec import FINISH_STEPS_TEXT

    n = FINISH_STEPS_TEXT + 6
    with trio.fail_after(20):
        async with open_running() as broker:
            ids = await broker.jobs.enqueue([spec(i) for i in range(n + 3)])
            claimed = await broker.work.claim("w1", n + 3, lock_ttl_s=30, block_s=0)
            assert [c.job.id for c in claimed] == ids
            # The clock ahead of Redis's, as after a flush in the same ms.
            prefix = prefix_of(queue_name)
            now_ms = int((await raw.execute(b"TIME"))[0]) * 1000
            await raw.execute(b"SET", prefix + "finish-clock", str(now_ms + 60_000))
            assert await broker.work.flush([], [done(c) for c in claimed[:n]]) == [True] * n
            assert await broker.work.flush([], [done(c) for c in claimed[n:]]) == [True] * 3
            reply = await raw.execute(b"ZRANGE", prefix + "completed", 0, -1, b"WITHSCORES")
            members = [m.decode() for m in reply[0::2]]
            scores = [float(s) for s in reply[1::2]]
            assert members == ids
            base = now_ms + 60_000
            assert scores == [base + (k + 1) / 1024 for k in range(n + 3)]
            assert float(await raw.execute(b"GET", prefix + "finish-clock")) == scores[-1]
            listed = await broker.jobs.list_jobs(JobStatus.COMPLETED, limit=n + 3)
            assert [j.id for j in listed] == ids[::-1]


async def test_finished_jobs_go_by_age_at_the_next_finish(config: Config, raw: Redis) -> None:
    """Removal by age has no TTL per record or stream: every flush that ends jobs
    forgets those past ``remove_on_age_s`` (the stalled check, 30 s away here,
    does it when no flush runs), with their streams."""
    aging = attrs.evolve(config, queue=attrs.evolve(config.queue, remove_on_age_s=0.2))
    prefix = prefix_of(config.queue.name)
    with trio.fail_after(10):
        async with open_broker(aging) as broker, trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            # One with a stream (events before its end), one without.
            old = await broker.jobs.enqueue([spec(), spec()])
            first, second = await claim_one(broker), await claim_one(broker)
            await broker.work.flush([EmittedEvent(first.job.id, "t", 1)], [])
            await broker.work.flush([], [done(first), failed(second, retry=False)])
            for job_id in old:
                assert await raw.execute(b"PTTL", f"{prefix}job:{job_id}") == -1
            assert await raw.execute(b"PTTL", f"{prefix}events:{old[0]}") == -1
            await trio.sleep(0.3)  # the age itself, not a wait for something to happen
            for job_id in old:
                assert await broker.jobs.get_job(job_id) is not None
            [fresh] = await broker.jobs.enqueue([spec()])
            await broker.work.flush([], [done(await claim_one(broker))])
            for job_id in old:
                assert await broker.jobs.get_job(job_id) is None
                assert await broker.jobs.read_events(job_id) == []
            assert await raw.execute(b"EXISTS", f"{prefix}events:{old[0]}") == 0
            assert [j.id for j in await broker.jobs.list_jobs(JobStatus.COMPLETED)] == [fresh]
            assert await broker.jobs.list_jobs(JobStatus.FAILED) == []
            nursery.cancel_scope.cancel()


async def test_a_flush_writes_one_entry_per_job(
    open_running: Callable[..., Any], config: Config, raw: Redis
) -> None:
    """Its events, the terminal one too, in one stream entry; the last event has its id.
    A job whose every event comes in the flush that ends it has that entry in
    its record instead of a stream."""
    with trio.fail_after(10):
        async with open_running() as broker:
            prefix = prefix_of(config.queue.name)
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            await broker.work.flush([EmittedEvent(job_id, "started", 1)], [])
            emitted = [EmittedEvent(job_id, name, 1) for name in ("a", "b")]
            await broker.work.flush(emitted, [done(claimed, "r")])
            key = f"{prefix}events:{job_id}"
            [_, [entry_id, _]] = await raw.execute(b"XRANGE", key, b"-", b"+")
            events = await broker.jobs.read_events(job_id)
            assert [e.name for e in events] == ["started", "a", "b", "end"]
            assert events[-1].id == entry_id.decode()

            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            emitted = [EmittedEvent(job_id, name, 1) for name in ("started", "a", "b")]
            await broker.work.flush(emitted, [done(claimed, "r")])
            assert await raw.execute(b"EXISTS", f"{prefix}events:{job_id}") == 0
            packed = await raw.execute(b"HGET", f"{prefix}job:{job_id}", b"evs")
            events = await broker.jobs.read_events(job_id)
            assert [e.name for e in events] == ["started", "a", "b", "end"]
            assert packed.startswith(events[-1].id.encode() + b"\0")


async def test_events_held_in_the_record_replay_resume_and_survive_a_retry(
    open_running: Callable[..., Any], config: Config, raw: Redis
) -> None:
    """A job ended in the flush that brought all its events keeps them in its record:
    read whole or from any id, watched late, and, once retried, moved to the stream
    under the same ids, ahead of ``retried``."""
    odd = {"text": "h\u00e9 ; 12:3 \n", "n": [1, 2]}
    with trio.fail_after(10):
        async with open_running() as broker:
            prefix = prefix_of(config.queue.name)
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            emitted = [EmittedEvent(job_id, name, odd) for name in ("started", "a", "b")]
            await broker.work.flush(emitted, [failed(claimed, retry=False)])
            assert await raw.execute(b"EXISTS", f"{prefix}events:{job_id}") == 0
            events = await broker.jobs.read_events(job_id)
            assert [(e.name, e.data) for e in events[:3]] == [
                (n, odd) for n in ("started", "a", "b")
            ]
            assert [e.name for e in events] == ["started", "a", "b", "error"]
            for n, event in enumerate(events):
                assert await broker.jobs.read_events(job_id, after=event.id) == events[n + 1 :]
            # Past the end a watch waits for a retry: up to the end only.
            for n, event in enumerate(events[:-1]):
                assert [e async for e in watch_events(broker.jobs, job_id, after=event.id)] == (
                    events[n + 1 :]
                )
            assert [e async for e in watch_events(broker.jobs, job_id)] == events

            await broker.jobs.retry(job_id)
            assert await raw.execute(b"HGET", f"{prefix}job:{job_id}", b"evs") is None
            moved = await broker.jobs.read_events(job_id)
            assert moved[:4] == events and moved[4].name == "retried"
            assert await raw.execute(b"XLEN", f"{prefix}events:{job_id}") == 2
            claimed = await claim_one(broker)
            await broker.work.flush([EmittedEvent(job_id, "started", 2)], [done(claimed, "r")])
            final = await broker.jobs.read_events(job_id)
            assert [e.name for e in final] == [
                "started",
                "a",
                "b",
                "error",
                "retried",
                "started",
                "end",
            ]
            assert [e.id for e in final] == sorted({e.id for e in final}, key=parse_event_id)
            for n, event in enumerate(final):
                assert await broker.jobs.read_events(job_id, after=event.id) == final[n + 1 :]

            # A name with a NUL byte cannot be packed: the job gets a stream.
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            await broker.work.flush([EmittedEvent(job_id, "a\0b", odd)], [done(claimed, "r")])
            assert await raw.execute(b"EXISTS", f"{prefix}events:{job_id}") == 1
            events = await broker.jobs.read_events(job_id)
            assert [(e.name, e.data) for e in events] == [("a\0b", odd), ("end", "r")]


async def test_an_entry_of_several_events_goes_past_a_later_stream_top(
    open_running: Callable[..., Any], config: Config, raw: Redis
) -> None:
    """A stream already written in a later millisecond than the script's clock (a
    flush earlier in the same one, or a clock gone back): the entry still leaves
    room below its id for its other events, and every id still resumes."""
    with trio.fail_after(10):
        async with open_running() as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            await broker.work.flush([EmittedEvent(job_id, "token", 0)], [])
            key = f"{prefix_of(config.queue.name)}events:{job_id}"
            [[first_id, _]] = await raw.execute(b"XRANGE", key, b"-", b"+")
            ms = int(first_id.split(b"-")[0]) + 3_600_000
            await raw.execute(b"XADD", key, f"{ms}-0", b"n", b"token", b"d", b"1")
            await broker.work.flush([EmittedEvent(job_id, "token", i) for i in range(2, 5)], [])
            await broker.work.flush([EmittedEvent(job_id, "token", 5)], [done(claimed, "r")])
            events = await broker.jobs.read_events(job_id)
            assert [e.data for e in events] == [0, 1, 2, 3, 4, 5, "r"]
            assert [e.id for e in events[1:]] == [f"{ms}-{seq}" for seq in range(6)]
            for n, event in enumerate(events):
                assert await broker.jobs.read_events(job_id, after=event.id) == events[n + 1 :]
