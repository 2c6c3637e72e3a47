"""``Conversations`` of the Redis backend: reading and clearing chat memory.

Turns are written by the flush script only (``flush.lua``'s ``add_turn``), in
the step that records their job's completed outcome. Decisions where the
contract left room:

- ``sessions`` leaves out conversations whose last turn is older than
  ``memory.ttl_s`` (their keys have expired; the index forgets them at the
  flow's next turn). The age is judged by this host's clock.
- ``memory.max_sessions`` bounds each flow's conversations, every owner's
  together: the flow's index holds no more, and a conversation dropped from
  it is deleted with it.
"""

from __future__ import annotations

import time

import attrs

from flowqd.jobs import ConversationKey, Turn
from flowqd.queue.redis.backend import RedisBackend
from flowqd.queue.turns import conversation_key, conversation_name, decode_turn, owner_prefix
from flowqd.redis import Arg


@attrs.define(eq=False)
class RedisConversations:
    _backend: RedisBackend

    async def read_turns(self, key: ConversationKey, *, turns: int | None = None) -> list[Turn]:
        if turns is not None and turns <= 0:
            return []
        backend = self._backend
        lk = backend.keys.conversation(key.flow_id, conversation_name(key))
        reply = await backend.redis.execute(b"LRANGE", lk, -turns if turns else 0, -1)
        return [decode_turn(data) for data in reply]

    async def sessions(
        self, flow_id: str, *, owner: str | None, all_owners: bool = False, limit: int = 1000
    ) -> list[ConversationKey]:
        if limit <= 0:
            return []
        backend = self._backend
        since = int((time.time() - backend.memory.ttl_s) * 1000)
        args: list[Arg] = [
            b"ZREVRANGEBYSCORE",
            backend.keys.conversations(flow_id),
            b"+inf",
            since,
        ]
        if all_owners:
            args += (b"LIMIT", 0, limit)
        # One owner's: filtered here from the flow's (memory.max_sessions at most).
        names = [name.decode() for name in await backend.redis.execute(*args)]
        if not all_owners:
            prefix = owner_prefix(owner)
            names = [name for name in names if name.startswith(prefix)][:limit]
        return [conversation_key(flow_id, name) for name in names]

    async def clear(self, key: ConversationKey) -> int:
        return int(
            await self._backend.scripts.clear_conversation((key.flow_id, conversation_name(key)))
        )
