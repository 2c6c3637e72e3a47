"""The Lua scripts of the Redis backend, read from ``queue/lua/`` and assembled.

Each script is the generated key names (``keys.lua_prelude``), job states,
event names and outcome codes (``codec.lua_names``) and job rules
(``policy.lua_rules``), then ``common.lua`` (settings, events,
terminal handling, retention), then its own file. A ``QueueScript`` binds a
script to one queue: calling it passes the queue's key prefix as ``KEYS[1]``
and the five queue settings as ``ARGV[1..5]`` (see ``common.lua``) ahead of
the script's own arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import attrs

from flowqd.config import QueueConfig
from flowqd.queue import policy
from flowqd.queue.keys import QueueKeys, lua_prelude
from flowqd.queue.redis.codec import lua_names
from flowqd.redis import Arg, Redis, Script, ScriptCall


def source(name: str) -> str:
    lua = resources.files("flowqd.queue") / "lua"
    common = (lua / "common.lua").read_text(encoding="utf-8")
    own = (lua / f"{name}.lua").read_text(encoding="utf-8")
    return lua_prelude() + lua_names() + policy.lua_rules() + common + own


def queue_settings(queue: QueueConfig) -> tuple[int, ...]:
    """ARGV[1..5] of every call, in ``common.lua``'s order."""
    return (
        queue.event_stream_max_len,
        max(1, math.ceil(queue.remove_on_age_s * 1000)),
        queue.remove_on_count,
        queue.max_stalled,
        round(queue.backoff_s * 1000),
    )


@attrs.frozen(eq=False)
class QueueScript:
    """One script of one queue: ``await script(args)`` runs it, ``script.call(args)``
    is the same run for a pipeline."""

    _redis: Redis
    _script: Script
    _keys: tuple[str]
    _settings: tuple[int, ...]

    async def __call__(self, args: Sequence[Arg] = (), *, durable: bool = False) -> Any:
        return await self._redis.run_script(
            self._script, self._keys, (*self._settings, *args), durable=durable
        )

    def call(self, args: Sequence[Arg]) -> ScriptCall:
        return self._script.call(self._keys, (*self._settings, *args))


@attrs.frozen
class QueueScripts:
    enqueue: QueueScript
    claim: QueueScript
    renew: QueueScript
    flush: QueueScript
    cancel: QueueScript
    retry: QueueScript
    promote: QueueScript
    promote_job: QueueScript
    list_waiting: QueueScript
    delete_job: QueueScript
    clean: QueueScript
    stalled: QueueScript
    workers: QueueScript
    put_flow: QueueScript
    get_flow: QueueScript
    rate_limit: QueueScript
    clear_conversation: QueueScript

    @classmethod
    def load(cls, redis: Redis, keys: QueueKeys, queue: QueueConfig) -> QueueScripts:
        settings = queue_settings(queue)
        return cls(
            **{
                field.name: QueueScript(
                    redis, Script.from_source(source(field.name)), (keys.prefix,), settings
                )
                for field in attrs.fields(cls)
            }
        )
