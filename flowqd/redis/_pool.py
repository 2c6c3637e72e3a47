"""The shared connections: at most ``redis.max_connections``, reused LIFO."""

from __future__ import annotations

import trio

from flowqd.redis._connection import Connection, Connector


class Pool:
    """Hands out connections; a slot is held from ``wait_slot`` to ``release``.

    Idle connections hold no slot, so open connections never exceed the
    limit. A connection that comes back closed (it failed or was cancelled
    mid-command) is dropped; the next caller connects afresh.
    """

    def __init__(self, connector: Connector, name: str, max_connections: int) -> None:
        self.connector = connector
        self._name = name
        self.max_connections = max_connections
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[Connection] = []
        self.closed = False
        self.waiting = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def free_slots(self) -> int:
        return self._slots.value

    def try_slot(self) -> bool:
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    async def wait_slot(self) -> None:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1

    def take_idle(self) -> Connection | None:
        """An idle connection still open, for the slot the caller holds, or None."""
        if self.closed:
            raise trio.ClosedResourceError("this Redis client is closed (open_redis has exited)")
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
        return None

    async def connect(self, deadline: float) -> Connection:
        """A new connection, for the slot the caller holds."""
        connection = Connection(self.connector, self._name, dedicated=False)
        await connection.connect(deadline)
        return connection

    def release(self, connection: Connection | None) -> None:
        """Give back the slot, and the connection if it can be reused."""
        if connection is not None and connection.is_open:
            if self.closed:
                connection.close()
            else:
                self._idle.append(connection)
        self._slots.release()

    def close(self) -> None:
        self.closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
