"""Server-sent event responses: a producer task feeds the response body through a channel.

The body generator runs in the request's task and cannot hold a nursery
across ``yield``, so the work that needs concurrency (waiting for events
while sending heartbeats and watching for shutdown) runs as a producer task
in the app's nursery, started when the body is first iterated: a response
whose body is never sent starts nothing. The producer owns a cancel scope the
body cancels when the client goes away; it always ends, on the terminal
event, its deadline, the server's shutdown or the client's departure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import attrs
import orjson
import trio
from quart import Response

from flowqd.jobs import Event

log = logging.getLogger("flowqd.api")

Send = trio.MemorySendChannel[bytes]
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# Chunks a slow client may fall behind before the producer waits for it.
BUFFER = 64
# After the client went away, cleanup (cancelling its job, say) gets this long.
CLEANUP_S = 5.0


def sse_event(event_id: str, name: str, data: Any) -> bytes:
    """A standard SSE event: ``id:``, ``event:``, one ``data:`` line of JSON."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event_id.encode(),
        name.encode(),
        orjson.dumps(data),
    )


def sse_events(events: Iterable[Event]) -> bytes:
    """Standard SSE events, one frame each, as one chunk (one write)."""
    return b"".join([sse_event(event.id, event.name, event.data) for event in events])


def sse_comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"


@attrs.define(eq=False)
class Stream:
    """One streaming response's producer, as the body and the producer see it."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    client_gone: bool = False
    # Run (shielded, bounded) when the client left before the producer finished.
    on_client_gone: Callable[[], Awaitable[None]] | None = None


Produce = Callable[[Send, Stream], Awaitable[None]]


def stream_response(
    nursery: trio.Nursery,
    produce: Produce,
    *,
    name: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    on_open: Callable[[], None] | None = None,
    on_close: Callable[[], None] | None = None,
) -> Response:
    """A response whose body is what ``produce(send, stream)`` sends, chunk by chunk."""

    async def run(send: Send, stream: Stream) -> None:
        async with send:  # closing it ends the body
            try:
                with stream.scope:
                    await produce(send, stream)
            except* trio.BrokenResourceError:
                stream.client_gone = True
            except* Exception:
                log.exception("%s: event stream failed", name)
            if stream.client_gone and stream.on_client_gone is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_S):
                    try:
                        await stream.on_client_gone()
                    except Exception:
                        log.exception("%s: cleanup after the client left failed", name)

    async def body() -> AsyncIterator[bytes]:
        stream = Stream()
        send, receive = trio.open_memory_channel[bytes](BUFFER)
        nursery.start_soon(run, send, stream, name=name)
        if on_open is not None:
            on_open()
        finished = False
        try:
            async for chunk in receive:
                yield chunk
            finished = True
        finally:
            if not finished:
                stream.client_gone = True
                stream.scope.cancel()
            receive.close()
            if on_close is not None:
                on_close()

    response = Response(body(), status=status, headers={**SSE_HEADERS, **(headers or {})})
    # An event stream lasts as long as its job; the producer bounds it, not Quart.
    response.timeout = None
    return response


async def drive(
    send: Send,
    pump: Callable[[], Awaitable[None]],
    *,
    heartbeat: bytes,
    heartbeat_s: float,
    shutdown: trio.Event,
    deadline_s: float = math.inf,
) -> str:
    """Run ``pump`` with heartbeats; return ``"done"``, ``"deadline"`` or ``"shutdown"``.

    Shutdown ends the stream at once, so hypercorn's graceful stop never has
    to cut it.
    """
    outcome = "done"
    async with trio.open_nursery() as nursery:

        async def beat() -> None:
            while True:
                await trio.sleep(heartbeat_s)
                await send.send(heartbeat)

        async def stop_on_shutdown() -> None:
            nonlocal outcome
            await shutdown.wait()
            outcome = "shutdown"
            nursery.cancel_scope.cancel()

        nursery.start_soon(beat)
        nursery.start_soon(stop_on_shutdown)
        with trio.move_on_after(deadline_s) as scope:
            await pump()
        if scope.cancelled_caught:
            outcome = "deadline"
        nursery.cancel_scope.cancel()
    return outcome
