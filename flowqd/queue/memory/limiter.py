"""``RateLimiter`` of the embedded backend."""

from __future__ import annotations

import attrs
import trio


@attrs.define(eq=False)
class MemoryRateLimiter:
    _arrivals: dict[str, float] = attrs.Factory(dict)  # name -> theoretical arrival time

    async def rate_limit(self, name: str, *, per_minute: int, burst: int) -> float:
        # The same cell rate algorithm as rate_limit.lua, on trio's clock.
        await trio.lowlevel.checkpoint()
        now, interval = trio.current_time(), 60.0 / per_minute
        tat = max(self._arrivals.get(name, now), now)
        allowed_at = tat - interval * (burst - 1)
        if now < allowed_at:
            return allowed_at - now
        self._arrivals[name] = tat + interval
        return 0.0
