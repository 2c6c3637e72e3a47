"""The Redis Cluster client on a real cluster (three primaries, a replica each).

Where a key went is asked of the node that should hold it, with a plain client
of the test's own; slots are moved with the cluster's own commands (SETSLOT,
MIGRATE) and primaries failed over or killed, each test restoring the cluster
for the next (``healthy_cluster``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from flowqd.config import QueueConfig, RedisConfig
from flowqd.errors import BrokerUnavailable
from flowqd.jobs import JobSpec, JobStatus, Outcome, OutcomeKind
from flowqd.queue.keys import prefix_of
from flowqd.queue.redis.backend import RedisBackend
from flowqd.queue.redis.control import RedisControl
from flowqd.queue.redis.jobs import RedisJobs
from flowqd.queue.redis.work import RedisWork
from flowqd.redis import Dedicated, Redis, open_redis
from tests.queue.helpers import wait_until
from tests.redisproc import RedisCluster


@asynccontextmanager
async def open_cluster_client(cluster: RedisCluster, **settings: Any) -> AsyncIterator[Redis]:
    config = RedisConfig(cluster=True, url=cluster.url, **settings)
    async with open_redis(config, name="flowqd-test") as client:
        yield client


@asynccontextmanager
async def open_node(cluster: RedisCluster, port: int) -> AsyncIterator[Redis]:
    """A plain client on one node: to see what that node holds."""
    async with open_redis(RedisConfig(url=cluster.url_of(port)), name="test-node") as node:
        yield node


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[Redis]:
    async with open_cluster_client(redis_cluster, command_timeout_s=2.0) as c:
        yield c


def key_on(cluster: RedisCluster, port: int, base: str) -> str:
    """A key ``{base-N}:k`` whose slot the primary on ``port`` owns."""
    owners = cluster.slot_map(port)
    for n in range(10_000):
        key = f"{{{base}-{n}}}:k"
        if owners[cluster.key_slot(key)] == port:
            return key
    raise AssertionError(f"no key of {base} lands on {port}")


def keys_on_every_primary(cluster: RedisCluster, base: str) -> dict[int, str]:
    return {port: key_on(cluster, port, base) for port in cluster.primaries()}


async def blocked_clients(node: Redis) -> int:
    info = (await node.execute(b"INFO", b"clients")).decode()
    return int(info.split("blocked_clients:")[1].split()[0])


async def wait_blocked(node: Redis) -> None:
    """Until a client blocks on ``node`` (the caller's fail_after bounds it)."""

    async def blocked() -> bool:
        return await blocked_clients(node) > 0

    await wait_until(blocked)


async def test_commands_and_pipelines_reach_the_owner_of_their_slot(
    client: Redis, redis_cluster: RedisCluster, queue_name: str
) -> None:
    keys = keys_on_every_primary(redis_cluster, queue_name)
    assert len(keys) == 3
    with trio.fail_after(10):
        for port, key in keys.items():
            await client.execute(b"SET", key, f"one-{port}")
        replies = await client.pipeline(
            [(b"APPEND", key, f"+{port}") for port, key in keys.items()]
            + [(b"GET", key) for key in keys.values()]
        )
        assert replies[3:] == [f"one-{port}+{port}".encode() for port in keys]
        for port, key in keys.items():
            async with open_node(redis_cluster, port) as node:
                assert await node.execute(b"GET", key) == f"one-{port}+{port}".encode()
                slot = redis_cluster.key_slot(key)
                assert await node.execute(b"CLUSTER", b"COUNTKEYSINSLOT", slot) == 1


async def test_scripts_run_on_the_owner_of_their_first_key(
    client: Redis, redis_cluster: RedisCluster, queue_name: str
) -> None:
    keys = keys_on_every_primary(redis_cluster, queue_name)
    # Unknown to every node at first: each answers NOSCRIPT and gets it loaded.
    script = client.script(
        f"-- {queue_name}\n"
        "redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('LLEN', KEYS[1])"
    )
    with trio.fail_after(10):
        for port, key in keys.items():
            assert await client.run_script(script, [key], [port]) == 1
        replies = await client.pipeline(
            [script.call([key], [f"again-{port}"]) for port, key in keys.items()]
        )
        assert replies == [2, 2, 2]
        for port, key in keys.items():
            async with open_node(redis_cluster, port) as node:
                assert await node.execute(b"LRANGE", key, 0, -1) == [
                    str(port).encode(),
                    f"again-{port}".encode(),
                ]


async def test_a_moved_slot_is_followed(
    client: Redis, healthy_cluster: RedisCluster, queue_name: str
) -> None:
    cluster = healthy_cluster
    key, other = f"{{{queue_name}}}:a", f"{{{queue_name}}}:b"
    slot = cluster.key_slot(key)
    with trio.fail_after(20):
        await client.execute(b"SET", key, b"before")  # the client now knows the owner
        source = cluster.owner(key)
        target = next(p for p in cluster.primaries() if p != source)
        await trio.to_thread.run_sync(cluster.move_slot, slot, target)
        try:
            # The client still sends to the old owner, which answers MOVED.
            assert await client.execute(b"GET", key) == b"before"
            assert await client.pipeline([(b"SET", other, b"new"), (b"GET", key)]) == [
                b"OK",
                b"before",
            ]
            async with open_node(cluster, target) as node:
                assert await node.execute(b"MGET", key, other) == [b"before", b"new"]
        finally:
            await trio.to_thread.run_sync(cluster.move_slot, slot, source)
        assert await client.execute(b"MGET", key, other) == [b"before", b"new"]


async def test_ask_during_a_migration_reaches_the_importing_node(
    client: Redis, healthy_cluster: RedisCluster, queue_name: str
) -> None:
    cluster = healthy_cluster
    moved, stays, new = (f"{{{queue_name}}}:{name}" for name in ("moved", "stays", "new"))
    slot = cluster.key_slot(moved)
    with trio.fail_after(20):
        await client.pipeline([(b"SET", moved, b"m"), (b"SET", stays, b"s")])
        target = next(p for p in cluster.primaries() if p != cluster.owner(moved))
        source = await trio.to_thread.run_sync(cluster.begin_migration, slot, target)
        try:
            await trio.to_thread.run_sync(cluster.migrate, slot, source, target, [moved.encode()])
            # The source answers ASK for the key it no longer has, and for a new
            # one; the rest it still serves.
            assert await client.execute(b"GET", moved) == b"m"
            assert await client.pipeline(
                [(b"GET", stays), (b"GET", moved), (b"SET", new, b"n"), (b"GET", stays)]
            ) == [b"s", b"m", b"OK", b"s"]
            async with open_node(cluster, source) as node:
                assert await node.execute(b"EXISTS", stays) == 1
            await trio.to_thread.run_sync(cluster.finish_migration, slot, source, target)
            assert await client.execute(b"MGET", moved, stays, new) == [b"m", b"s", b"n"]
        finally:
            await trio.to_thread.run_sync(cluster.move_slot, slot, source)


async def test_blocking_reads_on_a_dedicated_connection_follow_their_key(
    client: Redis, redis_cluster: RedisCluster, queue_name: str
) -> None:
    keys = list(keys_on_every_primary(redis_cluster, queue_name).items())
    with trio.fail_after(10):
        async with client.dedicated() as connection:
            for port, key in keys:
                got: list[Any] = []

                async def pop(
                    connection: Dedicated = connection, key: str = key, got: list[Any] = got
                ) -> None:
                    got.append(await connection.execute(b"BZPOPMIN", key, 5, timeout=7))

                async with open_node(redis_cluster, port) as node, trio.open_nursery() as nursery:
                    nursery.start_soon(pop)
                    await wait_blocked(node)
                    await client.execute(b"ZADD", key, 1, b"m")
                assert got == [[key.encode(), b"m", b"1"]]


async def test_unblock_ends_a_blocked_read_on_its_node(
    client: Redis, redis_cluster: RedisCluster, queue_name: str
) -> None:
    # A key away from slot 0's owner: CLIENT UNBLOCK must go to the node the
    # connection is blocked on, not to any node.
    port = redis_cluster.primaries()[-1]
    key = key_on(redis_cluster, port, queue_name)
    with trio.fail_after(10):
        async with client.dedicated() as connection, open_node(redis_cluster, port) as node:
            got: list[Any] = ["not run"]
            async with trio.open_nursery() as nursery:

                async def pop() -> None:
                    got[0] = await connection.execute(b"BZPOPMIN", key, 60, timeout=65)

                nursery.start_soon(pop)
                await wait_blocked(node)
                started = trio.current_time()
                await client.unblock(connection)
            assert got == [None]
            assert trio.current_time() - started < 2
            assert await blocked_clients(node) == 0


async def test_a_subscription_and_publish_meet_on_the_channel_owner(
    client: Redis, redis_cluster: RedisCluster, queue_name: str
) -> None:
    channel = f"{prefix_of(queue_name)}ch:events"
    with trio.fail_after(10):
        async with client.subscribe(channel) as subscription:
            # PUBLISH answers how many clients of *that* node got it: 1 only if the
            # subscription is on the node the publish was routed to.
            assert await client.execute(b"PUBLISH", channel, b"hello") == 1
            async for got in subscription:
                assert got == (channel.encode(), b"hello")
                break
        async with open_node(redis_cluster, redis_cluster.owner(channel)) as node:
            assert await node.execute(b"PUBSUB", b"NUMSUB", channel) == [channel.encode(), 0]


async def test_a_dead_primary_gives_broker_unavailable_in_time_then_its_replica_serves(
    healthy_cluster: RedisCluster, queue_name: str
) -> None:
    cluster = healthy_cluster
    key = f"{{{queue_name}}}:k"
    settings = {"command_timeout_s": 1.0, "connect_timeout_s": 0.5, "wait_replicas": 1}
    async with open_cluster_client(cluster, **settings) as client:
        with trio.fail_after(30):
            # On the replica before the kill (WAIT), so the promoted replica has it.
            await client.pipeline([(b"SET", key, b"kept")], durable=True)
            dead = cluster.owner(key)
            cluster.kill(dead)
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable):
                    await client.execute(b"GET", key)
                # Within the command deadline (plus scheduling slack), never a hang.
                assert time.monotonic() - started < 1.5
            while True:
                try:
                    value = await client.execute(b"GET", key)
                    break
                except BrokerUnavailable:
                    continue
            # Served by the promoted replica (the dead node cannot answer); asking a
            # node for the slot's owner here would race the cluster's own gossip.
            assert value == b"kept"


async def test_several_queues_spread_over_the_primaries_through_one_client(
    client: Redis, redis_cluster: RedisCluster, queue_name: str
) -> None:
    # Queue names whose hash tags land on two different primaries.
    names: dict[int, str] = {}
    for n in range(10_000):
        name = f"{queue_name}-{n}"
        names.setdefault(redis_cluster.owner(prefix_of(name)), name)
        if len(names) == 2:
            break
    with trio.fail_after(20):
        for port, name in names.items():
            async with AsyncExitStack() as stack:
                backend = RedisBackend.create(
                    client, QueueConfig(name=name), exit_stack=stack, block_margin_s=2.0
                )
                jobs, work = RedisJobs(backend), RedisWork(backend)
                [job_id] = await jobs.enqueue([JobSpec(flow_id="f", flow_version=1)])
                [claimed] = await work.claim("w1", 1, lock_ttl_s=30, block_s=1)
                outcome = Outcome(job_id, claimed.token, OutcomeKind.COMPLETED, result=port)
                assert await work.flush([], [outcome]) == [True]
                assert (await RedisControl(backend).counts())[JobStatus.COMPLETED] == 1
            async with open_node(redis_cluster, port) as node:
                keys = await node.execute(b"KEYS", f"{prefix_of(name)}*")
                assert len(keys) >= 3
        for port, name in names.items():
            other = next(p for p in names if p != port)
            async with open_node(redis_cluster, other) as node:
                assert await node.execute(b"KEYS", f"{prefix_of(name)}*") == []
