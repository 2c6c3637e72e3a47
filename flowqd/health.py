"""Worker health server: liveness, readiness that tells the truth, metrics.

A plain ASGI app (no framework): it must answer even when the rest is busy,
and it is served by its own hypercorn instance on ``worker.health_port``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson

from flowqd.metrics import CONTENT_TYPE, BrokerFigures, Registry

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Readiness(Protocol):
    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason): reason says why not, e.g. "broker unreachable"."""
        ...


Statistics = Callable[[], Awaitable[Mapping[str, Any]]]
PerQueue = Callable[[], Awaitable[Mapping[str, Any]]]


class HealthApp:
    """``statistics``: the broker's figures about this process (QueueControl.statistics),
    shown under the same names as on main. ``queues``: each pool's readiness by
    queue, added to /readyz as ``queues`` (a worker with several pools)."""

    def __init__(
        self,
        readiness: Readiness,
        registry: Registry,
        statistics: Statistics | None = None,
        queues: PerQueue | None = None,
    ) -> None:
        self._readiness = readiness
        self._registry = registry
        self._statistics = statistics
        self._queues = queues
        self._broker = BrokerFigures(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            await _reply(send, 405, {"error": "method not allowed", "message": "use GET"})
        elif path == "/healthz":
            await _reply(send, 200, {"status": "ok"})
        elif path == "/readyz":
            ready, reason = await self._readiness.readiness()
            body: dict[str, Any] = {"status": "ready" if ready else "not ready", "reason": reason}
            if self._queues is not None:
                body["queues"] = await self._queues()
            await _reply(send, 200 if ready else 503, body)
        elif path == "/metrics":
            if self._statistics is not None:
                self._broker.record(await self._statistics())
            await _send(send, 200, self._registry.render(), CONTENT_TYPE)
        else:
            await _reply(
                send,
                404,
                {"error": "not found", "message": "health endpoints: /healthz, /readyz, /metrics"},
            )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    await _send(send, status, orjson.dumps(body), "application/json")


async def _send(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
