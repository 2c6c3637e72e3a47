"""What the http and llm executors share: clients and URLs fit for messages."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import orjson


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


async def read_some(response: httpx.Response, limit: int = 4096) -> bytes:
    """Up to ``limit`` bytes of a streamed body (an error page can be huge)."""
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
