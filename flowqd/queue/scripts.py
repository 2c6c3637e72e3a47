"""The Lua scripts of the Redis broker, read from ``lua/`` and assembled.

Each script is the generated key names (``keys.lua_prelude``), then
``common.lua`` (settings, events, terminal handling, retention), then its own
file. Every call passes the queue's key prefix as ``KEYS[1]`` and the five
queue settings as ``ARGV[1..5]`` (see ``common.lua``).
"""

from __future__ import annotations

from importlib import resources

import attrs

from flowqd.queue.keys import lua_prelude
from flowqd.redis import Redis, Script

NAMES = (
    "enqueue", "claim", "renew", "flush", "cancel", "retry",
    "promote", "stalled", "workers", "put_flow", "get_flow", "rate_limit",
)


def source(name: str) -> str:
    lua = resources.files("flowqd.queue") / "lua"
    common = (lua / "common.lua").read_text(encoding="utf-8")
    return lua_prelude() + common + (lua / f"{name}.lua").read_text(encoding="utf-8")


@attrs.frozen
class Scripts:
    enqueue: Script
    claim: Script
    renew: Script
    flush: Script
    cancel: Script
    retry: Script
    promote: Script
    stalled: Script
    workers: Script
    put_flow: Script
    get_flow: Script
    rate_limit: Script

    @classmethod
    def load(cls, redis: Redis) -> Scripts:
        return cls(**{name: redis.script(source(name)) for name in NAMES})
