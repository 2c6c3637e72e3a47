"""Chat memory of the embedded backend: the store ``MemoryState.record`` appends
to with a completed outcome, and the ``Conversations`` role over it.

Same bounds as the Redis backend (turns stored encoded by ``queue/turns.py``,
so the byte totals are the same): ``memory.max_turns`` and ``max_bytes`` per
conversation, ``max_sessions`` per flow, ``ttl_s`` after the last turn (on
``trio.current_time()``, like the other deadlines of this backend).
"""

from __future__ import annotations

from collections import deque

import attrs
import trio

from flowqd.config import MemoryConfig
from flowqd.jobs import ConversationKey, Turn, TurnWrite
from flowqd.queue.turns import (
    conversation_key,
    conversation_name,
    decode_turn,
    encode_turn,
    owner_prefix,
)


@attrs.define(eq=False)
class _Conversation:
    turns: deque[bytes] = attrs.Factory(deque)
    size: int = 0
    last: float = 0.0


@attrs.define(eq=False)
class ConversationStore:
    cfg: MemoryConfig = attrs.Factory(MemoryConfig)
    # Per flow, conversations by name, least recently active first.
    flows: dict[str, dict[str, _Conversation]] = attrs.Factory(dict)

    def append(self, write: TurnWrite) -> None:
        """Add a turn (flush with a completed outcome only), then apply the bounds."""
        cfg = self.cfg
        data = encode_turn(write.turn, cfg.max_bytes)
        if data is None:
            return
        now = trio.current_time()
        flow = self.flows.setdefault(write.key.flow_id, {})
        name = conversation_name(write.key)
        conv = flow.pop(name, None)  # put back last: the most recently active
        if conv is None or conv.last <= now - cfg.ttl_s:
            conv = _Conversation()
        conv.turns.append(data)
        conv.size += len(data)
        conv.last = now
        turns = conv.turns
        while len(turns) > 1 and (len(turns) > cfg.max_turns or conv.size > cfg.max_bytes):
            conv.size -= len(turns.popleft())
        flow[name] = conv
        while len(flow) > cfg.max_sessions or flow[next(iter(flow))].last <= now - cfg.ttl_s:
            del flow[next(iter(flow))]

    def get(self, key: ConversationKey) -> _Conversation | None:
        conv = self.flows.get(key.flow_id, {}).get(conversation_name(key))
        if conv is None or conv.last <= trio.current_time() - self.cfg.ttl_s:
            return None
        return conv


@attrs.define(eq=False)
class MemoryConversations:
    _store: ConversationStore

    async def read_turns(self, key: ConversationKey, *, turns: int | None = None) -> list[Turn]:
        await trio.lowlevel.checkpoint()
        conv = self._store.get(key)
        if conv is None or (turns is not None and turns <= 0):
            return []
        kept = list(conv.turns)
        return [decode_turn(data) for data in (kept[-turns:] if turns else kept)]

    async def sessions(
        self, flow_id: str, *, owner: str | None, all_owners: bool = False, limit: int = 1000
    ) -> list[ConversationKey]:
        await trio.lowlevel.checkpoint()
        store = self._store
        since = trio.current_time() - store.cfg.ttl_s
        prefix = owner_prefix(owner)
        found: list[ConversationKey] = []
        for name, conv in reversed(store.flows.get(flow_id, {}).items()):
            if len(found) >= limit or conv.last <= since:
                break  # newest first: the rest are older still
            if all_owners or name.startswith(prefix):
                found.append(conversation_key(flow_id, name))
        return found

    async def clear(self, key: ConversationKey) -> int:
        await trio.lowlevel.checkpoint()
        store = self._store
        conv = store.get(key)
        store.flows.get(key.flow_id, {}).pop(conversation_name(key), None)
        return 0 if conv is None else len(conv.turns)
