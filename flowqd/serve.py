"""Serving an ASGI app with hypercorn's trio worker inside the daemon's nursery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout_s: float,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then drain for ``graceful_timeout_s``.

    Reports the bound addresses (``http://host:port``) through ``task_status``.
    """
    config = HyperConfig()
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
    await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)


def bound_port(binds: list[str]) -> int:
    """The port of the first bind hypercorn reports (useful when asked for port 0)."""
    return int(binds[0].rsplit(":", 1)[1])
