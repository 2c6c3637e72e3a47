"""A pub/sub subscription on a connection of its own."""

from __future__ import annotations

from typing import Any

import trio

from flowqd.errors import BrokerUnavailable
from flowqd.redis._connection import Connection, Connector, DeadlinePassed
from flowqd.redis._script import pack_command

_PING = pack_command((b"PING",))
_MESSAGE = b"message"


class Subscription:
    """``async for channel, message in sub`` yields the published messages.

    Losing the connection raises BrokerUnavailable from the iterator; the
    subscription is then over (subscribe again, and re-read whatever state
    the messages were about, since messages sent meanwhile are gone).
    A quiet connection is checked with PING every ``ping_interval`` seconds,
    so a Redis that vanished without closing the socket is noticed too.
    """

    def __init__(self, connection: Connection, connector: Connector, ping_interval: float) -> None:
        self._connection = connection
        self._connector = connector
        self._ping_interval = ping_interval

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[bytes, bytes]:
        while True:
            reply = await self._receive()
            # Confirmations and PING answers arrive as lists too; only
            # messages are passed on.
            if reply.__class__ is list and reply[0] == _MESSAGE:
                return reply[1], reply[2]

    async def _receive(self) -> Any:
        connection = self._connection
        with trio.move_on_after(self._ping_interval):
            return await connection._read_reply()
        timeout = self._connector.command_timeout
        try:
            await connection._send(_PING, trio.current_time() + timeout)
            with trio.move_on_after(timeout):
                return await connection._read_reply()
        except DeadlinePassed:
            pass
        connection.close()
        raise BrokerUnavailable(
            f"Redis at {self._connector.address} did not answer a PING on the "
            f"subscription within {timeout:g}s; check that it runs and is reachable"
        )
