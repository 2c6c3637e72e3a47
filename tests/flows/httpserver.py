"""A tiny HTTP/1.1 server on loopback for executor tests (trio.serve_tcp, port 0).

Each test passes a handler that reads the parsed request and writes a raw
response, so it can also misbehave: stall, cut a stream short, send junk.
Responses are close-delimited (``Connection: close``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import orjson
import trio


@attrs.frozen
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


Handler = Callable[[Request, trio.SocketStream], Awaitable[None]]


async def _read_request(stream: trio.SocketStream) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _version = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, path, headers, body)


async def _connection(handler: Handler, seen: list[Request], stream: trio.SocketStream) -> None:
    async with stream:
        request = await _read_request(stream)
        if request is None:
            return
        seen.append(request)
        await handler(request, stream)


@attrs.frozen
class Server:
    url: str  # http://127.0.0.1:<port>
    requests: list[Request]


@asynccontextmanager
async def open_http_server(handler: Handler) -> AsyncIterator[Server]:
    seen: list[Request] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_connection, handler, seen), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        yield Server(f"http://127.0.0.1:{port}", seen)
        nursery.cancel_scope.cancel()


async def send_head(
    stream: trio.SocketStream, status: int, headers: Sequence[tuple[str, str]] = ()
) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())


async def send_json(stream: trio.SocketStream, status: int, data: Any) -> None:
    body = orjson.dumps(data)
    await send_head(
        stream, status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    await stream.send_all(body)


_REASONS = {200: "OK", 201: "Created", 404: "Not Found", 500: "Internal Server Error"}


# ---- an OpenAI-compatible chat completions server ---------------------------


def chunk(content: str | None = None, finish_reason: str | None = None) -> bytes:
    """One ``data:`` event as OpenAI-compatible servers stream them."""
    delta = {} if content is None else {"content": content}
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


def streaming_llm(tokens: Sequence[str]) -> Handler:
    """A handler answering every POST /v1/chat/completions with ``tokens``, one event each."""

    async def handler(request: Request, stream: trio.SocketStream) -> None:
        if request.path != "/v1/chat/completions":
            await send_json(stream, 404, {"error": {"message": f"no route {request.path}"}})
            return
        await send_head(stream, 200, [("Content-Type", "text/event-stream")])
        await stream.send_all(b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n')
        for token in tokens:
            await stream.send_all(chunk(token))
        await stream.send_all(chunk(None, "stop") + b"data: [DONE]\n\n")

    return handler
