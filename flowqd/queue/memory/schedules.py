"""``Schedules`` of the embedded backend: the Redis one's semantics, in dicts.

Each method runs between two checkpoints, so each is atomic as its Lua
script is; the claim is the same compare-and-set on the due time.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from flowqd.queue.roles import ScheduleEntry


@attrs.define(eq=False)
class MemorySchedules:
    _documents: dict[str, bytes] = attrs.Factory(dict)
    _due: dict[str, int] = attrs.Factory(dict)  # running schedules only
    _last: dict[str, int] = attrs.Factory(dict)

    def _entry(self, schedule_id: str) -> ScheduleEntry:
        return ScheduleEntry(
            schedule_id,
            self._documents[schedule_id],
            self._due.get(schedule_id),
            self._last.get(schedule_id),
        )

    async def put_schedule(self, schedule_id: str, document: bytes, due_ms: int) -> bool:
        await trio.lowlevel.checkpoint()
        old = self._documents.get(schedule_id)
        if old == document:
            return False
        self._documents[schedule_id] = bytes(document)
        if old is None or schedule_id in self._due:
            self._due[schedule_id] = due_ms
        return True

    async def get_schedule(self, schedule_id: str) -> ScheduleEntry | None:
        await trio.lowlevel.checkpoint()
        return self._entry(schedule_id) if schedule_id in self._documents else None

    async def list_schedules(self) -> list[ScheduleEntry]:
        await trio.lowlevel.checkpoint()
        return [self._entry(sid) for sid in sorted(self._documents)]

    async def pause_schedule(self, schedule_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._due.pop(schedule_id, None)
        return schedule_id in self._documents

    async def resume_schedule(self, schedule_id: str, due_ms: int) -> bool:
        await trio.lowlevel.checkpoint()
        if schedule_id not in self._documents:
            return False
        self._due.setdefault(schedule_id, due_ms)
        return True

    async def delete_schedule(self, schedule_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._due.pop(schedule_id, None)
        self._last.pop(schedule_id, None)
        return self._documents.pop(schedule_id, None) is not None

    async def due_schedules(
        self, now_ms: int, *, limit: int
    ) -> tuple[list[ScheduleEntry], int | None]:
        await trio.lowlevel.checkpoint()
        by_due = sorted((due, sid) for sid, due in self._due.items())
        due = [self._entry(sid) for ms, sid in by_due if ms <= now_ms][:limit]
        later = next((ms for ms, _ in by_due if ms > now_ms), None)
        return [attrs.evolve(e, last_ms=None) for e in due], later

    async def claim_ticks(self, claims: Sequence[tuple[str, int, int]]) -> list[str]:
        await trio.lowlevel.checkpoint()
        won: list[str] = []
        for schedule_id, due_ms, next_ms in claims:
            if self._due.get(schedule_id) == due_ms:
                self._due[schedule_id] = next_ms
                self._last[schedule_id] = due_ms
                won.append(schedule_id)
        return won
