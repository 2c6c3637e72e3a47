"""A minimal HTTP/1.1 client on trio sockets, for load: thousands of concurrent requests.

httpx's connection pool does work per request that grows with the number of
open connections, so with 2,000 of them the client, not the server, is what
a test would measure. This one keeps one connection per caller and parses
only what flowqd sends (Content-Length or chunked bodies).
"""

from __future__ import annotations

from typing import Any

import orjson
import trio


class RawConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._stream: trio.SocketStream | None = None
        self._buffer = b""

    @classmethod
    def for_url(cls, base_url: str) -> RawConnection:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        return cls(host, int(port))

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request on the kept-alive connection; returns (status, body)."""
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._buffer = b""
        payload = b"" if body is None else orjson.dumps(body)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        await self._stream.send_all(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\n{extra}"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await self._read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        if "content-length" in fields:
            content = await self._read_exactly(int(fields["content-length"]))
        else:
            content = await self._read_chunked()
        if fields.get("connection", "").lower() == "close":
            await self.aclose()
        return status, content

    async def _fill(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            await self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    async def _read_chunked(self) -> bytes:
        out = b""
        while True:
            size = int((await self._read_until(b"\r\n")).split(b";")[0], 16)
            data = await self._read_exactly(size + 2)
            if size == 0:
                return out
            out += data[:-2]
