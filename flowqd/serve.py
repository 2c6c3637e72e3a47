"""Serving an ASGI app with hypercorn's trio worker inside the daemon's nursery."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

Message = dict[str, Any]


class _Responses:
    """Counts HTTP responses not yet sent in full.

    quart-trio keeps a request's task alive after its response, waiting for
    the client to disconnect, so hypercorn never sees an idle keep-alive
    connection as idle and would hold shutdown for its whole graceful timeout.
    What matters for a clean stop is that every response went out.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.open = 0
        self.none_open = trio.Event()
        self.none_open.set()

    # hypercorn types ASGI messages as TypedDicts; this wrapper passes them through.
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.open += 1
        self.none_open = trio.Event() if self.open == 1 else self.none_open
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                self.open -= 1
                if self.open == 0:
                    self.none_open.set()

        async def send_tracked(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finish()

        try:
            await self.app(scope, receive, send_tracked)
        finally:
            finish()


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout_s: float,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then drain for ``graceful_timeout_s``.

    The drain ends as soon as every response has been sent, whatever idle
    keep-alive connections remain. Reports the bound addresses
    (``http://host:port``) through ``task_status``. With ``reuse_port``,
    other processes may bind the same port and the kernel spreads the
    connections among them (``server.processes``).
    """
    config = HyperConfig()
    if reuse_port:
        config.bind = [f"fd://{_bind_reusable(host, port)}"]
    else:
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handlers
    # A request body is read by the app with its own limit; this only bounds headers.
    config.h11_max_incomplete_size = 64 * 1024
    config.keep_alive_timeout = 75
    # hypercorn's default of 100 drops SYNs when thousands of clients connect
    # at once (each then waits a second for the retransmit).
    config.backlog = 2048
    responses = _Responses(app)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(serve, responses, config, shutdown_trigger=shutdown_trigger)
        )
        task_status.started(binds)
        await shutdown_trigger()
        with trio.move_on_after(graceful_timeout_s):
            while responses.open:
                await responses.none_open.wait()
        nursery.cancel_scope.cancel()


def bound_port(binds: list[str]) -> int:
    """The port of the first bind hypercorn reports (useful when asked for port 0)."""
    return int(binds[0].rsplit(":", 1)[1])


def _bind_reusable(host: str, port: int) -> int:
    """A bound (not yet listening) socket with SO_REUSEPORT, as a descriptor for hypercorn.

    hypercorn starts listening only once the app has started, so the kernel
    sends this process connections only when it can answer them.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock.detach()
