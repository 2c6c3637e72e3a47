"""Redis Sentinel: find the primary of ``redis.sentinel_master`` and follow it.

The sentinels are Redis servers speaking RESP, so each gets a ``Connector``
of its own (its address, the sentinel login, TLS if ``sentinel_tls``) and is
asked with the client's ordinary connections. The data nodes' login stays
the client's. As in ioredis, a sentinel that failed is asked after the
others the next time, and the one that answered is asked first.

Three things send the client to the sentinels again: a ``+switch-master``
notice (it also drops every connection to the old primary), and, through the
``Locator`` seam of ``_connection.py``, a READONLY reply, a connection that
reached a non-primary (ROLE), and a lost connection or timeout.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from flowqd.backoff import Backoff
from flowqd.config import RedisConfig
from flowqd.errors import BrokerUnavailable, ConfigError, FlowqdError, RedisReplyError
from flowqd.logs import ThrottledLog
from flowqd.redis._connection import Connection, Connector, DeadlinePassed
from flowqd.redis._pubsub import Subscription
from flowqd.redis._script import pack_command
from flowqd.redis._url import Target

_log = logging.getLogger(__name__)
_throttled = ThrottledLog(_log)

_CHANNEL = b"+switch-master"
_SUBSCRIBE = pack_command((b"SUBSCRIBE", _CHANNEL))
# Of a connect deadline, what the sentinels may use: the rest is for reaching
# the primary they name, so a slow sentinel still ends in our own message.
_SENTINEL_SHARE = 0.8
# What the sentinels' replies mean, for the message that lists them.
_REPLY_CODE = re.compile(r"\b(WRONGPASS|NOAUTH|NOPERM|ERR)\b.*")
_CHECK = (
    "check redis.sentinels (host:port of the sentinels, 26379 by default, not the data "
    "nodes) and redis.sentinel_master (the name in their `sentinel monitor NAME ...` line)"
)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.define(eq=False)
class _Sentinel:
    """One sentinel: where it is, and the connection that asks it."""

    address: str
    connector: Connector
    connection: Connection

    async def master_address(self, master: str, deadline: float) -> tuple[str, int] | None:
        """``SENTINEL get-master-addr-by-name``: the primary, or None if unknown here."""
        timeout = max(0.0, deadline - trio.current_time())
        reply = await self.connection.execute(
            b"SENTINEL", b"get-master-addr-by-name", master, timeout=timeout
        )
        if reply is None:
            return None
        host, port = reply
        return bytes(host).decode(), int(port)


def _said(sentinel: _Sentinel, exc: BaseException) -> str:
    """What a sentinel's failure means, in the sentinel's terms (the client's
    own messages name the data nodes' settings)."""
    text = str(exc)
    reply = _REPLY_CODE.search(text)
    code = reply.group(1) if reply else ""
    if "NOAUTH" in text:
        return "asks for a password: set redis.sentinel_password (and sentinel_username)"
    if code == "WRONGPASS" or "refused the login" in text:
        detail = f" ({reply.group(0)})" if reply else ""
        return (
            f"refused the login{detail}: check redis.sentinel_username and "
            "redis.sentinel_password (the sentinels' requirepass or ACL user)"
        )
    if "unknown command" in text:
        return "is not a sentinel (it does not know SENTINEL): list the sentinels, not data nodes"
    text = text.removeprefix(f"Redis at {sentinel.address} ")
    return text.split("; ", 1)[0]


def _join(said: list[tuple[str, str]]) -> str:
    """``[(address, what it said)]`` as text, sentinels that said the same together."""
    who: dict[str, list[str]] = {}
    for address, what in said:
        who.setdefault(what, []).append(address)
    return "; ".join(f"{', '.join(addresses)}: {what}" for what, addresses in who.items())


class SentinelLocator:
    """Implements ``Locator`` (``_connection.py``) by asking the sentinels."""

    check_role = True

    def __init__(self, master: str, sentinels: list[_Sentinel], name: str) -> None:
        # Called on +switch-master: the client drops its connections to the old primary.
        self.on_switch: Callable[[], None] = lambda: None
        self.master = master
        self._sentinels = sentinels  # in the order they are asked
        self._name = name
        self._found: tuple[str, int] | None = None
        self._stale = True
        # One lookup at a time; the connects waiting meanwhile take its result.
        self._lock = trio.Lock()
        self._lookups = 0
        self._last_error = ""

    @property
    def address(self) -> str:
        """The primary last found (``host:port``), or which master is looked for."""
        if self._found is None:
            return f"sentinel master {self.master}"
        return _address(*self._found)

    @property
    def sentinels(self) -> list[str]:
        """The sentinels' addresses, in the order the next lookup asks them."""
        return [s.address for s in self._sentinels]

    def moved(self) -> None:
        self._stale = True

    async def locate(self, deadline: float) -> tuple[str, int]:
        """The primary: the last answer while it holds, else the sentinels' answer."""
        if self._found is not None and not self._stale:
            return self._found
        seen = self._lookups
        async with self._lock:
            if self._lookups != seen:
                # Another connect asked while this one waited: share its answer.
                if self._found is not None and not self._stale:
                    return self._found
                if self._last_error:
                    raise BrokerUnavailable(self._last_error)
            return await self._ask(deadline)

    async def _ask(self, deadline: float) -> tuple[str, int]:
        now = trio.current_time()
        end = now + _SENTINEL_SHARE * (deadline - now) if math.isfinite(deadline) else deadline
        said: list[tuple[str, str]] = []
        failed: list[_Sentinel] = []
        order = list(self._sentinels)
        for index, sentinel in enumerate(order):
            # A fair share of what is left, so one silent sentinel cannot use it all.
            share = (end - trio.current_time()) / (len(order) - index)
            try:
                found = await sentinel.master_address(self.master, trio.current_time() + share)
            except FlowqdError as exc:
                said.append((sentinel.address, _said(sentinel, exc)))
                failed.append(sentinel)
                continue
            if found is None:
                said.append((sentinel.address, f"does not monitor a master named {self.master!r}"))
                failed.append(sentinel)
                continue
            rest = [s for s in order if s is not sentinel and s not in failed]
            self._sentinels = [sentinel, *rest, *failed]
            self._lookups += 1
            self._found, self._stale, self._last_error = found, False, ""
            return found
        self._lookups += 1
        self._last_error = (
            f"no sentinel named the primary of {self.master!r}: {_join(said)}; {_CHECK}"
        )
        raise BrokerUnavailable(self._last_error)

    # ---- following +switch-master ---------------------------------------------

    async def watch(self) -> None:
        """Subscribe to ``+switch-master`` on one sentinel after another, for ever.

        A sentinel that fails or drops the subscription hands over to the next
        one; a full round without one waits a backoff. Never raises: with no
        sentinel up, commands fail with the lookup's own message meanwhile.
        """
        backoff = Backoff(0.1, 5.0)
        while True:
            for sentinel in list(self._sentinels):
                try:
                    await self._follow(sentinel, backoff)
                except FlowqdError as exc:
                    _throttled.warning(
                        f"sentinel watch {sentinel.address}",
                        "cannot follow failovers of %r through the sentinel at %s: %s",
                        self.master,
                        sentinel.address,
                        _said(sentinel, exc),
                    )
            await backoff.wait()

    async def _follow(self, sentinel: _Sentinel, backoff: Backoff) -> None:
        connector = sentinel.connector
        connection = Connection(connector, self._name, dedicated=False)
        timeout = connector.connect_timeout + connector.command_timeout
        try:
            try:
                deadline = trio.current_time() + timeout
                await connection.connect(deadline)
                [reply] = await connection._request(_SUBSCRIBE, 1, deadline)
            except DeadlinePassed:
                raise connector.timed_out(timeout, "SUBSCRIBE +switch-master") from None
            if reply.__class__ is RedisReplyError:
                raise connector.error(reply, "SUBSCRIBE")
            backoff.reset()
            # A switch may have been missed while no sentinel was followed.
            self.moved()
            subscription = Subscription(connection, connector, max(1.0, connector.command_timeout))
            async for _, message in subscription:
                self._switched(message)
        finally:
            connection.close()

    def _switched(self, message: bytes) -> None:
        # "<master> <old ip> <old port> <new ip> <new port>"
        parts = message.decode(errors="replace").split()
        if len(parts) != 5 or parts[0] != self.master or not parts[4].isdigit():
            return
        new = (parts[3], int(parts[4]))
        _log.warning(
            "the primary of %r moved from %s to %s (+switch-master): reconnecting there",
            self.master,
            _address(parts[1], int(parts[2]) if parts[2].isdigit() else 0),
            _address(*new),
        )
        self._found, self._stale = new, False
        self.on_switch()

    def close(self) -> None:
        for sentinel in self._sentinels:
            sentinel.connection.close()


def _sentinels(
    config: RedisConfig, ssl_context: ssl.SSLContext | None, name: str
) -> list[_Sentinel]:
    found = []
    for entry in config.sentinels:
        host, _, port = entry.rpartition(":")
        target = Target(
            host=host.strip("[]"),
            port=int(port),
            username=config.sentinel_username,
            password=config.sentinel_password,
            db=0,
            tls=config.sentinel_tls,
        )
        connector = Connector(
            target=target,
            ssl_context=ssl_context if config.sentinel_tls else None,
            connect_timeout=config.connect_timeout_s,
            command_timeout=config.command_timeout_s,
            keep_alive_ms=config.keep_alive_ms,
        )
        connection = Connection(connector, name, dedicated=False)
        found.append(_Sentinel(target.address, connector, connection))
    return found


@asynccontextmanager
async def open_sentinel_locator(
    config: RedisConfig, ssl_context: ssl.SSLContext | None, name: str
) -> AsyncIterator[SentinelLocator]:
    """A locator for ``config.sentinel_master``, watching +switch-master while open.

    Enters at once, whether or not a sentinel answers: the first command
    that needs the primary says what the sentinels said.
    """
    if not config.sentinels or not config.sentinel_master:
        raise ConfigError(
            ["Sentinel needs both redis.sentinels (host:port list) and redis.sentinel_master"]
        )
    locator = SentinelLocator(config.sentinel_master, _sentinels(config, ssl_context, name), name)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(locator.watch, name=f"sentinel watch {config.sentinel_master}")
            try:
                yield locator
            except BaseException as exc:
                # Raised again below, outside the nursery: callers catch what the
                # body raised, not an ExceptionGroup around it.
                failure = exc
            nursery.cancel_scope.cancel()
    finally:
        locator.close()
    if failure is not None:
        raise failure
