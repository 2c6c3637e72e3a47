"""Redis Sentinel: find the primary of ``redis.sentinel_master`` and follow it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from flowqd.config import RedisConfig


class SentinelLocator:
    """Implements ``Locator`` (``_connection.py``) by asking the sentinels."""

    check_role = True

    def __init__(self) -> None:
        # Called on +switch-master: the client drops its connections to the old primary.
        self.on_switch: Callable[[], None] = lambda: None

    @property
    def address(self) -> str:
        raise NotImplementedError

    async def locate(self, deadline: float) -> tuple[str, int]:
        raise NotImplementedError

    def moved(self) -> None:
        raise NotImplementedError


@asynccontextmanager
async def open_sentinel_locator(
    config: RedisConfig, ssl_context: ssl.SSLContext | None, name: str
) -> AsyncIterator[SentinelLocator]:
    """A locator for ``config.sentinel_master``, watching +switch-master while open."""
    raise NotImplementedError
    yield SentinelLocator()  # type: ignore[unreachable]
