"""``RateLimiter`` of the Redis backend: one cell rate limit per name (``rate_limit.lua``)."""

from __future__ import annotations

import attrs

from flowqd.queue.redis.backend import RedisBackend


@attrs.define(eq=False)
class RedisRateLimiter:
    _backend: RedisBackend

    async def rate_limit(self, name: str, *, per_minute: int, burst: int) -> float:
        wait_ms = await self._backend.scripts.rate_limit((name, repr(60_000 / per_minute), burst))
        return int(wait_ms) / 1000
