"""Redis Cluster: each command goes to the primary that owns its key's slot.

The slot map comes from ``CLUSTER SLOTS`` on any node that answers (the seeds
first time, then every node known). A ``MOVED`` reply updates the slot at
once and refreshes the whole map before the next command; ``ASK`` sends
``ASKING`` and the command to the importing node for that one command;
``TRYAGAIN`` and ``CLUSTERDOWN`` are retried after a short pause, all within
the command's deadline. Only the commands that were redirected are sent
again: the others in a pipeline ran and must not run twice. A redirected
command did not run, so sending it again is safe.

flowqd keeps every key of one queue under one hash tag, so a script or a
pipeline never spans slots; one that did would still work, split by node, but
without the atomicity a script gives.
"""

from __future__ import annotations

import binascii
import contextlib
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from flowqd.errors import BrokerUnavailable, RedisReplyError
from flowqd.redis._client import Dedicated, Redis, RedisStatistics, on_pool, subscribe_on
from flowqd.redis._connection import Connection, Connector, DeadlinePassed, command_name
from flowqd.redis._pool import Pool
from flowqd.redis._pubsub import Subscription
from flowqd.redis._script import Arg, Script, ScriptCall
from flowqd.redis._url import Target

SLOTS = 16384
# Redirections one command may follow before giving up (a slot bouncing
# between nodes means the cluster is being reconfigured: say so).
MAX_REDIRECTS = 16
# A map refreshed this recently is not refreshed again for a lost connection
# (a MOVED always refreshes): a dead node must not cause a storm of CLUSTER SLOTS.
REFRESH_EVERY_S = 0.25
_ASKING = (b"ASKING",)
# Commands without a key (or, for SCAN, of one node only): sent to any primary.
_KEYLESS = frozenset(
    {
        b"PING",
        b"CLIENT",
        b"INFO",
        b"SCRIPT",
        b"TIME",
        b"ROLE",
        b"WAIT",
        b"CLUSTER",
        b"ECHO",
        b"SCAN",
    }
)


def key_slot(key: Arg) -> int:
    """The slot of ``key``: CRC16 (XMODEM) of its hash tag, or of the whole key."""
    data = key if isinstance(key, bytes) else str(key).encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


def command_key(command: Sequence[Arg] | ScriptCall) -> Arg | None:
    """The first key of a command (the one that routes it), or None."""
    if isinstance(command, ScriptCall):
        return command.first_key
    name = command[0]
    name = (name if isinstance(name, bytes) else str(name).encode()).upper()
    if name in _KEYLESS or len(command) < 2:
        return None
    if name in (b"EVALSHA", b"EVAL", b"FCALL"):
        return command[3] if int(command[2]) > 0 else None
    if name in (b"XREAD", b"XREADGROUP"):
        upper = [a.upper() if isinstance(a, bytes) else a for a in command]
        return command[upper.index(b"STREAMS") + 1]
    return command[1]


def _redirect(reply: Any) -> tuple[str, str] | None:
    """``(kind, rest)`` for a MOVED, ASK, TRYAGAIN or CLUSTERDOWN reply."""
    if reply.__class__ is not RedisReplyError:
        return None
    kind, _, rest = str(reply).partition(" ")
    if kind in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"):
        return kind, rest
    return None


@attrs.define(eq=False)
class Node:
    """One primary: its address, how to connect, and its pool."""

    address: str
    connector: Connector
    pool: Pool


Runner = Callable[[Node, list[Any], float], Awaitable[list[Any]]]


class ClusterRedis(Redis):
    """``Redis`` for a Redis Cluster: the same calls, routed by slot."""

    def __init__(
        self,
        seeds: list[Target],
        make_node: Callable[[Target], Node],
        name: str,
        wait: tuple[int, float],
    ) -> None:
        self._seeds = seeds
        self._make_node = make_node
        self._nodes: dict[str, Node] = {}
        self._slots: list[Node | None] = [None] * SLOTS
        self._refreshed_at = -math.inf
        self._refreshing: trio.Event | None = None
        self._stale = True
        first = self._node(seeds[0].host, seeds[0].port)
        super().__init__(first.connector, first.pool, name, wait)

    # ---- the Redis interface ---------------------------------------------------

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        limit = self._timeout if timeout is None else timeout
        [reply] = await self._routed([args], self._pooled, limit, command_name(args))
        if reply.__class__ is RedisReplyError:
            raise self._connector.error(reply, command_name(args))
        return reply

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg] | ScriptCall],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        durable: bool = False,
    ) -> list[Any]:
        if not commands:
            return []
        limit = self._timeout if timeout is None else timeout
        if durable and self._wait_replicas:
            limit += self._wait_timeout
        wait = durable and bool(self._wait_replicas)
        return await self._routed(list(commands), self._pooled, limit, "pipeline", wait=wait)

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        durable: bool = False,
    ) -> Any:
        [reply] = await self.pipeline([script.call(keys, args)], timeout=timeout, durable=durable)
        if reply.__class__ is RedisReplyError:
            raise self._connector.error(reply, "EVALSHA")
        return reply

    async def unblock(self, connection: Dedicated) -> None:
        node = getattr(connection, "node", None)
        client_id = connection.client_id
        if node is None or client_id is None:
            return
        deadline = trio.current_time() + self._timeout
        command = [(b"CLIENT", b"UNBLOCK", client_id)]
        await self._pooled(node, command, deadline)

    @asynccontextmanager
    async def dedicated(self, *, name: str | None = None) -> AsyncIterator[Dedicated]:
        self._check_open()
        connection = ClusterConnection(self, name or self._name)
        try:
            yield connection
        finally:
            connection.close()

    @asynccontextmanager
    async def subscribe(
        self, *channels: str | bytes, name: str | None = None, ping_interval: float = 30.0
    ) -> AsyncIterator[Subscription]:
        # Classic pub/sub reaches every node of a cluster; the channel's slot
        # owner is chosen so that one queue's traffic stays on its own node.
        self._check_open()
        if not channels:
            raise ValueError("subscribe needs at least one channel")
        deadline = trio.current_time() + self._timeout
        if self._stale:
            await self._refresh_stale(deadline)
        node = await self._owner(key_slot(channels[0]), deadline)
        async with subscribe_on(
            node.connector, channels, name or self._name, ping_interval
        ) as subscription:
            yield subscription

    def statistics(self) -> RedisStatistics:
        nodes = list(self._nodes.values())
        live = [c for node in nodes for c in node.connector.live]
        return RedisStatistics(
            open_connections=len(live),
            idle_connections=sum(n.pool.idle for n in nodes),
            dedicated_connections=sum(1 for c in live if c.dedicated),
            in_use_connections=sum(n.pool.max_connections - n.pool.free_slots for n in nodes),
            waiting_tasks=sum(n.pool.waiting for n in nodes),
        )

    def close(self) -> None:
        for node in self._nodes.values():
            node.pool.close()
            node.connector.close_all()

    # ---- routing ------------------------------------------------------------

    async def _routed(
        self,
        commands: list[Any],
        run: Runner,
        timeout: float,  # noqa: ASYNC109 (for the message; the deadline is what counts)
        what: str,
        *,
        wait: bool = False,
    ) -> list[Any]:
        """Replies to ``commands``, each run on its slot's owner, in order."""
        deadline = trio.current_time() + timeout
        try:
            if self._stale:
                await self._refresh_stale(deadline)
            groups: dict[int, list[int]] = {}
            for index, command in enumerate(commands):
                key = command_key(command)
                slot = -1 if key is None else key_slot(key)
                groups.setdefault(slot, []).append(index)
            replies: list[Any] = [None] * len(commands)
            acknowledged: list[int] = []
            for slot, indices in groups.items():
                node = self._any() if slot < 0 else self._slots[slot]
                if node is None:
                    node = await self._owner(slot, deadline)
                acks = await self._follow(node, commands, indices, replies, run, deadline, wait)
                acknowledged += acks
        except DeadlinePassed:
            raise self._connector.timed_out(timeout, what) from None
        if wait:
            self._check_replicated(min(acknowledged), replies)
        return replies

    async def _follow(
        self,
        node: Node,
        commands: list[Any],
        indices: list[int],
        replies: list[Any],
        run: Runner,
        deadline: float,
        wait: bool,
    ) -> list[int]:
        """Run ``commands[indices]`` on ``node``, following redirections; the
        replicas that acknowledged each batch (with ``wait``)."""
        pending = [(node, i, False) for i in indices]
        acks: list[int] = []
        pause = 0.01
        for _ in range(MAX_REDIRECTS):
            by_node: dict[str, list[tuple[int, bool]]] = {}
            targets: dict[str, Node] = {}
            for target, index, asking in pending:
                by_node.setdefault(target.address, []).append((index, asking))
                targets[target.address] = target
            pending = []
            retry_later = False
            for address, items in by_node.items():
                batch: list[Any] = []
                for index, asking in items:
                    if asking:
                        batch.append(_ASKING)
                    batch.append(commands[index])
                if wait:
                    batch.append(self._wait)
                got = await self._send(targets[address], batch, run, deadline)
                if wait:
                    ack = got.pop()
                    if ack.__class__ is RedisReplyError:
                        raise self._connector.error(ack, "WAIT")
                    acks.append(ack)
                answers = iter(got)
                for index, asking in items:
                    if asking:
                        next(answers)  # ASKING's OK
                    reply = next(answers)
                    replies[index] = reply
                    redirect = _redirect(reply)
                    if redirect is None:
                        continue
                    kind, rest = redirect
                    if kind in ("MOVED", "ASK"):
                        slot_text, _, address_text = rest.partition(" ")
                        host, _, port = address_text.rpartition(":")
                        moved_to = self._node(host, int(port))
                        if kind == "MOVED":
                            self._slots[int(slot_text)] = moved_to
                            self._stale = True
                        pending.append((moved_to, index, kind == "ASK"))
                    else:  # TRYAGAIN, CLUSTERDOWN: the same node, after a pause
                        pending.append((targets[address], index, False))
                        retry_later = True
            if not pending:
                return acks
            if retry_later:
                if trio.current_time() + pause >= deadline:
                    raise DeadlinePassed
                await trio.sleep(pause)
                pause = min(pause * 2, 0.5)
        # The last redirect replies stay in ``replies``: the caller raises them.
        return acks

    async def _send(self, node: Node, batch: list[Any], run: Runner, deadline: float) -> list[Any]:
        try:
            return await run(node, batch, deadline)
        except BrokerUnavailable:
            # The node may have failed over: read the map again before the next call.
            self._stale = True
            raise

    async def _pooled(self, node: Node, batch: list[Any], deadline: float) -> list[Any]:
        timeout = max(0.0, deadline - trio.current_time())
        return await on_pool(node.pool, Connection._pipeline, batch, deadline, timeout, "pipeline")

    async def _owner(self, slot: int, deadline: float) -> Node:
        if slot < 0:
            return self._any()
        node = self._slots[slot]
        if node is None:
            await self._refresh(deadline, force=True)
            node = self._slots[slot]
        if node is None:
            raise BrokerUnavailable(
                f"no primary of the Redis Cluster serves slot {slot} (CLUSTER SLOTS); the "
                "cluster is incomplete: check `redis-cli --cluster check`"
            )
        return node

    def _any(self) -> Node:
        for node in self._slots:
            if node is not None:
                return node
        return next(iter(self._nodes.values()))

    def _node(self, host: str, port: int) -> Node:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        node = self._nodes.get(address)
        if node is None:
            node = self._make_node(attrs.evolve(self._seeds[0], host=host, port=port))
            self._nodes[address] = node
        return node

    async def _refresh_stale(self, deadline: float) -> None:
        """Refresh a map that may be out of date; with a map to fall back on, in
        half the time left (a node that does not answer must not eat the
        command's whole deadline), and a failure leaves the old map in use."""
        if all(node is None for node in self._slots):
            await self._refresh(deadline)
            return
        half = trio.current_time() + (deadline - trio.current_time()) / 2
        with contextlib.suppress(BrokerUnavailable):
            await self._refresh(half)

    async def _refresh(self, deadline: float, *, force: bool = False) -> None:
        """Read the slot map from the first node that answers (one refresh at a time)."""
        if self._refreshing is not None:
            with trio.move_on_at(deadline):
                await self._refreshing.wait()
            return
        if not force and trio.current_time() - self._refreshed_at < REFRESH_EVERY_S:
            return
        self._refreshing = trio.Event()
        try:
            await self._read_map(deadline)
        finally:
            self._refreshing.set()
            self._refreshing = None

    async def _read_map(self, deadline: float) -> None:
        known = [n for n in self._nodes.values() if n in self._slots]
        seeds = [self._node(t.host, t.port) for t in self._seeds]
        random.shuffle(known)
        failures: list[str] = []
        for node in dict.fromkeys([*known, *seeds]):
            try:
                [reply] = await self._pooled(node, [(b"CLUSTER", b"SLOTS")], deadline)
            except BrokerUnavailable as exc:
                failures.append(f"{node.address}: {exc}")
                continue
            if reply.__class__ is RedisReplyError:
                failures.append(f"{node.address}: {reply}")
                continue
            self._apply(reply, node)
            return
        raise BrokerUnavailable(
            "no node of the Redis Cluster answered CLUSTER SLOTS ("
            + "; ".join(failures)
            + "); check redis.url and redis.nodes, and that the nodes run with "
            "cluster-enabled yes"
        )

    def _apply(self, reply: list[Any], asked: Node) -> None:
        slots: list[Node | None] = [None] * SLOTS
        for start, end, primary, *_replicas in reply:
            host = primary[0].decode() if primary[0] else asked.connector.target.host
            node = self._node(host, int(primary[1]))
            slots[start : end + 1] = [node] * (end - start + 1)
        self._slots = slots
        self._refreshed_at = trio.current_time()
        self._stale = False


class ClusterConnection:
    """A connection of one's own in a cluster: on the node of its last command's slot.

    It follows the slot: if the owner changes, the old socket is closed and
    one to the new owner opened. ``client_id`` and ``node`` are those of the
    current socket (for ``ClusterRedis.unblock``).
    """

    def __init__(self, cluster: ClusterRedis, name: str) -> None:
        self._cluster = cluster
        self._name = name
        self._connection: Connection | None = None
        self.node: Node | None = None

    @property
    def client_id(self) -> int | None:
        return None if self._connection is None else self._connection.client_id

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        [reply] = await self.pipeline([args], timeout=timeout)
        if reply.__class__ is RedisReplyError:
            raise self._cluster._connector.error(reply, command_name(args))
        return reply

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg] | ScriptCall],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Any]:
        if not commands:
            return []
        limit = self._cluster._timeout if timeout is None else timeout
        return await self._cluster._routed(list(commands), self._run, limit, "pipeline")

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        [reply] = await self.pipeline([script.call(keys, args)], timeout=timeout)
        if reply.__class__ is RedisReplyError:
            raise self._cluster._connector.error(reply, "EVALSHA")
        return reply

    async def _run(self, node: Node, batch: list[Any], deadline: float) -> list[Any]:
        connection = self._connection
        if connection is None or self.node is not node:
            if connection is not None:
                connection.close()
            connection = self._connection = Connection(node.connector, self._name, dedicated=True)
            self.node = node
        if not connection.usable():
            await connection.connect(deadline)
        return await connection._pipeline(batch, deadline)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
