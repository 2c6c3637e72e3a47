"""What the http and llm executors share: clients and URLs fit for messages."""

from __future__ import annotations

import codecs
import functools
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpcore
import httpx
import orjson
import trio

from flowqd import tracing
from flowqd.errors import NodeError
from flowqd.executors._egress import CheckedBackend, EgressPolicy, outbound

T = TypeVar("T")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs milliseconds; once per process, not per node.
    return httpx.create_ssl_context()


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool whose connections the egress policy checks."""

    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        limits = httpx.Limits()  # httpx's defaults, as without a policy
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(policy),
        )


def open_client(timeout_s: float) -> httpx.AsyncClient:
    """A client for one node run under the worker's egress policy; ``async with`` it.

    Redirects are not followed (httpx's default): each would be a connection
    the policy did not see. With a policy, proxy variables (HTTPS_PROXY...)
    are not used: a proxy would resolve and connect where the policy cannot look.
    """
    policy = outbound().policy
    transport = None if policy.open else _CheckedTransport(policy)
    # Traced: a client span per request, traceparent sent along.
    client = httpx.AsyncClient if tracing.current is None else tracing.TracedClient
    return client(verify=_ssl_context(), timeout=httpx.Timeout(timeout_s), transport=transport)


def too_large(what: str, limit: int) -> NodeError:
    return NodeError(
        f"{what} sent more than limits.max_response_bytes ({limit} bytes); raise "
        "limits.max_response_bytes or ask for less"
    )


async def read_within(response: httpx.Response, what: str) -> bytes:
    """The whole body, or NodeError once it passes ``limits.max_response_bytes``.

    Never holds more than the limit: a declared Content-Length over it fails
    before reading, and a body without one stops at the first byte past it.
    """
    limit = outbound().max_response_bytes
    declared = response.headers.get("content-length", "")
    if (
        declared.isdigit()
        and (len(declared) > 18 or int(declared) > limit)
        and "content-encoding" not in response.headers
        and response.request.method != "HEAD"  # its Content-Length is of a body not sent
    ):
        raise too_large(what, limit)
    chunks: list[bytes] = []
    size = 0

    def add(chunk: bytes) -> bool:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise too_large(what, limit)
        chunks.append(chunk)
        return False

    await consume_until(response.aiter_bytes(), add)
    return b"".join(chunks)


def shown_url(url: str | httpx.URL) -> str:
    """The URL without user, password or query: those may hold secrets."""
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"


def check_url(url: str, where: str) -> Iterator[tuple[str, str]]:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        yield where, f"not a valid URL: {exc}"
        return
    if parsed.scheme not in ("http", "https") or not parsed.host:
        yield where, f"expected an http:// or https:// URL with a host, got {url!r}"


def error_text(body: bytes, limit: int = 300) -> str:
    """The gist of an error answer: OpenAI-style ``error.message``, else the body's start."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str):
            return message[:limit]
        if isinstance(error, str):
            return error[:limit]
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return "(empty body)"
    return text[:limit] + ("..." if len(text) > limit else "")


async def consume_until(items: AsyncIterator[T], consume: Callable[[T], bool]) -> None:
    """Feed ``items`` to ``consume`` until it returns True or raises, then stop reading.

    httpx's body iterators are chains of async generators: breaking out of a
    loop leaves the inner ones suspended, and trio warns when they are
    collected (httpx issue 3686). Stopping by cancelling instead ends every
    layer from the inside, at its next read.
    """
    failure: Exception | None = None
    with trio.CancelScope() as stop:
        async for item in items:
            if stop.cancel_called:
                continue  # lines already buffered: the next read raises Cancelled
            try:
                if consume(item):
                    stop.cancel()
            except Exception as exc:
                failure = exc
                stop.cancel()
    if failure is not None:
        raise failure


async def read_some(response: httpx.Response, limit: int = 4096) -> bytes:
    """Up to ``limit`` bytes of a streamed body (an error page can be huge)."""
    chunks: list[bytes] = []

    def add(chunk: bytes) -> bool:
        chunks.append(chunk)
        return sum(map(len, chunks)) >= limit

    await consume_until(response.aiter_bytes(), add)
    return b"".join(chunks)[:limit]


class Lines:
    """A streamed body as text lines, ``limits.max_response_bytes`` in all.

    httpx's ``aiter_lines`` would hold a line without end however long it
    grows; this counts every byte first. Lines end with LF or CRLF (what
    server-sent events use in practice).
    """

    def __init__(self, what: str, line: Callable[[str], bool]) -> None:
        self._what = what
        self._line = line  # True: the answer is complete, stop reading
        self._limit = outbound().max_response_bytes
        self._size = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending: list[str] = []  # the line so far, in pieces: joined once it ends
        self._done = False

    def feed(self, chunk: bytes) -> bool:
        self._size += len(chunk)
        if self._size > self._limit:
            raise too_large(self._what, self._limit)
        text = self._decoder.decode(chunk)
        if "\n" not in text:
            self._pending.append(text)
            return False
        first, *lines = text.split("\n")
        self._pending.append(first)
        lines[:0] = ["".join(self._pending)]
        self._pending = [lines.pop()]
        self._done = any(self._line(line.removesuffix("\r")) for line in lines)
        return self._done

    def end(self) -> None:
        """The last line, if the body did not end with a line break."""
        rest = "".join(self._pending) + self._decoder.decode(b"", final=True)
        if rest and not self._done:
            self._line(rest.removesuffix("\r"))
