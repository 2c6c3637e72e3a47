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


# ---- a scripted OpenAI-compatible server: tool calls and usage --------------


def _delta_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return (
        b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"
    )


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> bytes:
    """The last chunk of a stream asked with ``stream_options.include_usage``: no choices."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"


def tool_calls_answer(
    *calls: tuple[str, str, Sequence[str]], usage: tuple[int, int] | None = None
) -> bytes:
    """A streamed answer asking for tool calls, each ``(id, name, argument pieces)``.

    As OpenAI streams them: a first piece with the call's index, id and name,
    then the arguments' JSON text in pieces, then finish_reason tool_calls.
    """
    out = _delta_chunk({"role": "assistant", "content": None})
    for index, (call_id, name, pieces) in enumerate(calls):
        first = {"index": index, "id": call_id, "type": "function"}
        out += _delta_chunk(
            {"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]}
        )
        for piece in pieces:
            out += _delta_chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            )
    out += _delta_chunk({}, "tool_calls")
    if usage is not None:
        out += usage_chunk(*usage)
    return out + b"data: [DONE]\n\n"


def text_answer(tokens: Sequence[str], usage: tuple[int, int] | None = None) -> bytes:
    """A streamed answer of ``tokens``, then finish_reason stop (and usage)."""
    out = b"".join(chunk(token) for token in tokens) + chunk(None, "stop")
    if usage is not None:
        out += usage_chunk(*usage)
    return out + b"data: [DONE]\n\n"


def scripted_llm(*answers: bytes | dict[str, Any]) -> Handler:
    """Answers the n-th chat completion request with ``answers[n]``, then HTTP 500.

    A bytes answer is an event stream body; a dict is sent as a whole (not
    streamed) chat completion. The test reads what each request sent from
    ``Server.requests`` (the tool results the node sent back, say).
    """
    script = list(answers)

    async def handler(request: Request, stream: trio.SocketStream) -> None:
        if not script:
            await send_json(stream, 500, {"error": {"message": "the script has no more answers"}})
            return
        answer = script.pop(0)
        if isinstance(answer, dict):
            await send_json(stream, 200, answer)
            return
        await send_head(stream, 200, [("Content-Type", "text/event-stream")])
        await stream.send_all(answer)

    return handler
