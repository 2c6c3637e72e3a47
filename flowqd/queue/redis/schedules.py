"""``Schedules`` of the Redis backend: a hash of definitions, a zset of due times.

Every change is one script (``schedule_*.lua``) on the queue's keys, so it
works on a Redis Cluster; the claim of ticks is a compare-and-set on the
due time, which is what lets every main process run a scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from flowqd.queue.redis.backend import RedisBackend
from flowqd.queue.redis.codec import checked
from flowqd.queue.redis.scripts import QueueScript, queue_settings, source
from flowqd.queue.roles import ScheduleEntry
from flowqd.redis import Script


def _script(backend: RedisBackend, name: str) -> QueueScript:
    return QueueScript(
        backend.redis,
        Script.from_source(source(name)),
        (backend.keys.prefix,),
        queue_settings(backend.queue),
    )


def _ms(value: Any) -> int | None:
    return None if value is None else int(float(value))


@attrs.define(eq=False)
class RedisSchedules:
    _backend: RedisBackend
    _put: QueueScript = attrs.field(init=False)
    _claim: QueueScript = attrs.field(init=False)
    _due: QueueScript = attrs.field(init=False)
    _state: QueueScript = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._put = _script(self._backend, "schedule_put")
        self._claim = _script(self._backend, "schedule_claim")
        self._due = _script(self._backend, "schedule_due")
        self._state = _script(self._backend, "schedule_state")

    async def put_schedule(self, schedule_id: str, document: bytes, due_ms: int) -> bool:
        return bool(await self._put((schedule_id, document, due_ms)))

    async def get_schedule(self, schedule_id: str) -> ScheduleEntry | None:
        keys = self._backend.keys
        document, due, last = checked(
            await self._backend.redis.pipeline(
                [
                    (b"HGET", keys.schedules, schedule_id),
                    (b"ZSCORE", keys.schedule_due, schedule_id),
                    (b"HGET", keys.schedule_last, schedule_id),
                ]
            )
        )
        if document is None:
            return None
        return ScheduleEntry(schedule_id, document, _ms(due), _ms(last))

    async def list_schedules(self) -> list[ScheduleEntry]:
        keys = self._backend.keys
        documents, due, last = checked(
            await self._backend.redis.pipeline(
                [
                    (b"HGETALL", keys.schedules),
                    (b"ZRANGE", keys.schedule_due, 0, -1, b"WITHSCORES"),
                    (b"HGETALL", keys.schedule_last),
                ]
            )
        )
        due_of = {due[i].decode(): _ms(due[i + 1]) for i in range(0, len(due), 2)}
        last_of = {last[i].decode(): _ms(last[i + 1]) for i in range(0, len(last), 2)}
        entries = [
            ScheduleEntry(sid, documents[i + 1], due_of.get(sid), last_of.get(sid))
            for i in range(0, len(documents), 2)
            for sid in (documents[i].decode(),)
        ]
        return sorted(entries, key=lambda e: e.id)

    async def pause_schedule(self, schedule_id: str) -> bool:
        return bool(await self._state((b"pause", schedule_id, b"")))

    async def resume_schedule(self, schedule_id: str, due_ms: int) -> bool:
        return bool(await self._state((b"resume", schedule_id, due_ms)))

    async def delete_schedule(self, schedule_id: str) -> bool:
        return bool(await self._state((b"delete", schedule_id, b"")))

    async def due_schedules(
        self, now_ms: int, *, limit: int
    ) -> tuple[list[ScheduleEntry], int | None]:
        reply = await self._due((now_ms, limit))
        entries = [
            ScheduleEntry(reply[i].decode(), reply[i + 2], _ms(reply[i + 1]), None)
            for i in range(1, len(reply), 3)
        ]
        return entries, _ms(reply[0])

    async def claim_ticks(self, claims: Sequence[tuple[str, int, int]]) -> list[str]:
        if not claims:
            return []
        won = await self._claim([arg for claim in claims for arg in claim])
        return [sid.decode() for sid in won]
