"""What the http and llm executors share: clients and URLs fit for messages."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import orjson
import trio

T = TypeVar("T")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs milliseconds; once per process, not per node.
    return httpx.create_ssl_context()


def open_client(timeout_s: float) -> httpx.AsyncClient:
    """A client for one node run; ``async with`` it."""
    return httpx.AsyncClient(verify=_ssl_context(), timeout=httpx.Timeout(timeout_s))


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
