"""The client: ``open_redis`` and the pooled ``Redis`` object."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol, TypeVar

import attrs
import trio

from flowqd.config import RedisConfig
from flowqd.errors import BrokerUnavailable, ConfigError, NotReplicated, RedisReplyError
from flowqd.redis._connection import Connection, Connector, DeadlinePassed, command_name
from flowqd.redis._pool import Pool
from flowqd.redis._pubsub import Subscription
from flowqd.redis._script import Arg, Script, ScriptCall, pack_command
from flowqd.redis._sentinel import SentinelLocator, open_sentinel_locator
from flowqd.redis._tls import build_ssl_context
from flowqd.redis._url import Target, parse_target

T = TypeVar("T")
U = TypeVar("U")


class Dedicated(Protocol):
    """A connection of the caller's own (``Redis.dedicated``): for blocking commands."""

    @property
    def client_id(self) -> int | None:
        """Redis's id of the socket now open (for ``Redis.unblock``), or None."""

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any: ...  # noqa: ASYNC109

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg] | ScriptCall],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Any]: ...

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any: ...


@attrs.frozen
class RedisStatistics:
    """A snapshot of a client's connections."""

    open_connections: int  # every open socket: pool (idle and lent out) and dedicated
    idle_connections: int  # open pool connections no task holds
    dedicated_connections: int  # open sockets of dedicated() and subscribe()
    in_use_connections: int  # pool slots held by a running command
    waiting_tasks: int  # commands waiting for a free pool slot


class Redis:
    """A pool of connections to one Redis; every call runs under a deadline.

    ``timeout=None`` means ``redis.command_timeout_s``, covering the wait for
    a free connection, connecting, and the reply. Unreachable Redis, a lost
    connection, the deadline, or Redis refusing because it is not ready
    (LOADING, BUSY, MASTERDOWN) raise BrokerUnavailable; other error replies
    raise RedisReplyError (in pipelines they are returned in the list instead).
    Replies are hiredis's: bytes, int, list, None; nothing is decoded.
    """

    def __init__(
        self, connector: Connector, pool: Pool, name: str, wait: tuple[int, float] = (0, 0.0)
    ) -> None:
        self._connector = connector
        self._pool = pool
        self._name = name
        self._timeout = connector.command_timeout
        # redis.wait_replicas and wait_timeout_s: WAIT after durable writes.
        self._wait_replicas, self._wait_timeout = wait
        self._wait = (b"WAIT", self._wait_replicas, max(1, round(self._wait_timeout * 1000)))

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Run one command on a pooled connection and return its reply."""
        # _on_pool, written out: the hottest path, spared a coroutine and a call.
        data = pack_command(args)
        pool = self._pool
        if timeout is None:
            timeout = self._timeout
        deadline = trio.current_time() + timeout
        if not pool.try_slot():
            await wait_slot(pool, deadline, timeout)
        connection: Connection | None = None
        try:
            connection = pool.take_idle()
            if connection is None:
                connection = await pool.connect(deadline)
            [reply] = await connection._request(data, 1, deadline)
        except DeadlinePassed:
            stage = "connecting" if connection is None else command_name(args)
            raise self._connector.timed_out(timeout, stage) from None
        finally:
            pool.release(connection)
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
        """Run many commands in one write and one read pass, in order.

        Error replies come back as RedisReplyError instances in the list, so
        the caller decides. Script calls that meet NOSCRIPT are loaded and
        run again (after the rest of the pipeline; a pipeline is not a
        transaction). ``durable`` writes are followed by WAIT when
        ``redis.wait_replicas`` is set: NotReplicated (with the replies) if
        too few replicas acknowledged them in ``redis.wait_timeout_s``.
        """
        if not commands:
            return []
        if durable and self._wait_replicas:
            limit = (self._timeout if timeout is None else timeout) + self._wait_timeout
            replies = await self._on_pool(
                Connection._pipeline, [*commands, self._wait], limit, "pipeline"
            )
            self._check_replicated(replies.pop(), replies)
            return replies
        return await self._on_pool(Connection._pipeline, commands, timeout, "pipeline")

    def _check_replicated(self, acknowledged: Any, replies: list[Any]) -> None:
        if acknowledged.__class__ is RedisReplyError:
            raise self._connector.error(acknowledged, "WAIT")
        if acknowledged < self._wait_replicas:
            raise NotReplicated(
                f"only {acknowledged} of {self._wait_replicas} replicas of Redis at "
                f"{self._connector.address} acknowledged a write within "
                f"{self._wait_timeout:g}s (redis.wait_replicas, redis.wait_timeout_s): it is "
                "on the primary, and lost if the primary fails before a replica copies it; "
                "check the replicas (INFO replication)",
                replies,
            )

    @property
    def name(self) -> str:
        """The client name every connection sets (CLIENT SETNAME)."""
        return self._name

    async def unblock(self, connection: Dedicated) -> None:
        """End a blocking command in flight on ``connection`` (CLIENT UNBLOCK),
        sent on the pool to the server that connection is on."""
        client_id = connection.client_id
        if client_id is not None:
            await self.execute(b"CLIENT", b"UNBLOCK", client_id)

    def script(self, source: str | bytes) -> Script:
        """A script object; cheap to keep at module or broker level and reuse."""
        return Script.from_source(source)

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        durable: bool = False,
    ) -> Any:
        """Run ``script`` by EVALSHA, loading it first if Redis does not know it.

        ``durable``: as for ``pipeline``; NotReplicated carries ``[reply]``.
        """
        if durable and self._wait_replicas:
            [reply] = await self.pipeline([script.call(keys, args)], timeout=timeout, durable=True)
            if reply.__class__ is RedisReplyError:
                raise self._connector.error(reply, "EVALSHA")
            return reply
        return await self._on_pool(Connection._script, script.call(keys, args), timeout, "script")

    @asynccontextmanager
    async def dedicated(self, *, name: str | None = None) -> AsyncIterator[Dedicated]:
        """A connection of the caller's own, outside the pool, closed on exit.

        For blocking commands (BLMOVE, BZPOPMIN, XREAD BLOCK): pass
        ``timeout=block_seconds + margin``. It connects on first use and
        again after a failure, so a loop around a blocking command just
        keeps calling it (with a Backoff after BrokerUnavailable).
        """
        self._check_open()
        connection = Connection(self._connector, name or self._name, dedicated=True)
        try:
            yield connection
        finally:
            connection.close()

    @asynccontextmanager
    async def subscribe(
        self, *channels: str | bytes, name: str | None = None, ping_interval: float = 30.0
    ) -> AsyncIterator[Subscription]:
        """Subscribe on a connection of its own; enters once Redis confirmed.

        Raises BrokerUnavailable on entry when Redis cannot be reached in the
        command deadline, and from the iterator when the connection is lost.
        """
        self._check_open()
        async with subscribe_on(
            self._connector, channels, name or self._name, ping_interval
        ) as subscription:
            yield subscription

    def statistics(self) -> RedisStatistics:
        live = self._connector.live
        dedicated = sum(1 for c in live if c.dedicated)
        pool = self._pool
        return RedisStatistics(
            open_connections=len(live),
            idle_connections=pool.idle,
            dedicated_connections=dedicated,
            in_use_connections=pool.max_connections - pool.free_slots,
            waiting_tasks=pool.waiting,
        )

    # ---- internals ------------------------------------------------------------

    async def _on_pool(
        self,
        operation: Callable[[Connection, T, float], Awaitable[U]],
        argument: T,
        limit: float | None,
        what: str,
    ) -> U:
        timeout = self._timeout if limit is None else limit
        deadline = trio.current_time() + timeout
        return await on_pool(self._pool, operation, argument, deadline, timeout, what)

    def _check_open(self) -> None:
        if self._pool.closed:
            raise trio.ClosedResourceError("this Redis client is closed (open_redis has exited)")


async def on_pool(
    pool: Pool,
    operation: Callable[[Connection, T, float], Awaitable[U]],
    argument: T,
    deadline: float,
    timeout: float,  # noqa: ASYNC109 (for the message; the deadline is what counts)
    what: str,
) -> U:
    """Run ``operation`` on a connection of ``pool`` (the slot wait, connecting
    and the operation all under ``deadline``)."""
    if not pool.try_slot():
        await wait_slot(pool, deadline, timeout)
    connection: Connection | None = None
    try:
        connection = pool.take_idle()
        if connection is None:
            connection = await pool.connect(deadline)
        return await operation(connection, argument, deadline)
    except DeadlinePassed:
        stage = "connecting" if connection is None else what
        raise pool.connector.timed_out(timeout, stage) from None
    finally:
        pool.release(connection)


async def wait_slot(pool: Pool, deadline: float, limit: float) -> None:
    with trio.move_on_at(deadline):
        await pool.wait_slot()
        return
    raise BrokerUnavailable(
        f"no free connection to Redis at {pool.connector.address} within "
        f"{limit:g}s: all {pool.max_connections} were busy; raise "
        "redis.max_connections, or look for slow or blocking commands on the pool"
    )


@asynccontextmanager
async def subscribe_on(
    connector: Connector, channels: Sequence[str | bytes], name: str, ping_interval: float
) -> AsyncIterator[Subscription]:
    """SUBSCRIBE on a new connection of ``connector``; enters once confirmed."""
    if not channels:
        raise ValueError("subscribe needs at least one channel")
    connection = Connection(connector, name, dedicated=True)
    timeout = connector.command_timeout
    deadline = trio.current_time() + timeout
    try:
        try:
            await connection.connect(deadline)
            replies = await connection._request(
                pack_command((b"SUBSCRIBE", *channels)), len(channels), deadline
            )
        except DeadlinePassed:
            raise connector.timed_out(timeout, "SUBSCRIBE") from None
        for reply in replies:
            if reply.__class__ is RedisReplyError:
                raise connector.error(reply, "SUBSCRIBE")
        yield Subscription(connection, connector, ping_interval)
    finally:
        connection.close()


@asynccontextmanager
async def open_cluster(config: RedisConfig, seed: Target, name: str) -> AsyncIterator[Redis]:
    # Imported here: the cluster client builds on this module.
    from flowqd.redis._cluster import ClusterRedis, Node

    if seed.db:
        raise ConfigError(
            [f"redis.url selects database {seed.db}, but a Redis Cluster has database 0 only"]
        )
    seeds = [seed]
    for entry in config.nodes:
        host, _, port = entry.rpartition(":")
        seeds.append(attrs.evolve(seed, host=host.strip("[]"), port=int(port)))
    ssl_context = await trio.to_thread.run_sync(build_ssl_context, config) if seed.tls else None

    def make_node(target: Target) -> Node:
        connector = Connector(
            target=target,
            ssl_context=ssl_context,
            connect_timeout=config.connect_timeout_s,
            command_timeout=config.command_timeout_s,
            keep_alive_ms=config.keep_alive_ms,
        )
        return Node(target.address, connector, Pool(connector, name, config.max_connections))

    cluster = ClusterRedis(seeds, make_node, name, (config.wait_replicas, config.wait_timeout_s))
    try:
        yield cluster
    finally:
        cluster.close()


@asynccontextmanager
async def open_redis(config: RedisConfig, *, name: str = "flowqd") -> AsyncIterator[Redis]:
    """A Redis client for ``config``; every connection is closed on exit.

    Needs no running Redis to enter: connections open on first use. Raises
    ConfigError at once for a malformed URL or unusable TLS files. ``name``
    is set on every connection (CLIENT SETNAME), which shows in CLIENT LIST.
    """
    if not name or any(ch.isspace() for ch in name):
        raise ValueError(f"the client name must be non-empty and without spaces, got {name!r}")
    target = parse_target(config)
    if config.cluster:
        async with open_cluster(config, target, name) as cluster:
            yield cluster
        return
    tls = target.tls or (bool(config.sentinels) and config.sentinel_tls)
    ssl_context = await trio.to_thread.run_sync(build_ssl_context, config) if tls else None
    async with AsyncExitStack() as stack:
        locator: SentinelLocator | None = None
        if config.sentinels:
            locator = await stack.enter_async_context(
                open_sentinel_locator(config, ssl_context, name)
            )
        connector = Connector(
            target=target,
            ssl_context=ssl_context if target.tls else None,
            connect_timeout=config.connect_timeout_s,
            command_timeout=config.command_timeout_s,
            keep_alive_ms=config.keep_alive_ms,
            locator=locator,
        )
        if locator is not None:
            locator.on_switch = connector.moved
        pool = Pool(connector, name, config.max_connections)
        try:
            yield Redis(connector, pool, name, (config.wait_replicas, config.wait_timeout_s))
        finally:
            pool.close()
            connector.close_all()
