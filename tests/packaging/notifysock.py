"""systemd's side of NOTIFY_SOCKET, for tests: a unix datagram socket that reads messages."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class Listener:
    """Receives what the daemon sends, one message per datagram, and keeps them in order."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.messages: list[dict[str, str]] = []

    async def next(self) -> dict[str, str]:
        data = await self.sock.recv(65536)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(fields)
        return fields

    async def until(self, key: str) -> dict[str, str]:
        """The next message that has ``key``."""
        while True:
            fields = await self.next()
            if key in fields:
                return fields

    def keys(self, *wanted: str) -> list[str]:
        """The ``wanted`` keys in the order they arrived."""
        return [key for message in self.messages for key in message if key in wanted]


@asynccontextmanager
async def listen(address: str) -> AsyncIterator[Listener]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(address)
        yield Listener(sock)
