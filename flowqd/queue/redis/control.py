"""``QueueControl`` of the Redis backend: pausing, counts, live workers, figures."""

from __future__ import annotations

import math
from typing import Any

import attrs
import orjson
import trio

from flowqd.jobs import JobStatus, WorkerInfo
from flowqd.queue.keys import MARKER_MEMBER
from flowqd.queue.redis.backend import RedisBackend
from flowqd.queue.redis.codec import checked

_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
_COUNTED = (JobStatus.WAITING, JobStatus.DELAYED, JobStatus.ACTIVE, *_FINISHED)


@attrs.define(eq=False)
class RedisControl:
    _backend: RedisBackend

    async def pause(self) -> None:
        await self._backend.redis.execute(b"SET", self._backend.keys.paused, b"1")

    async def resume(self) -> None:
        keys = self._backend.keys
        checked(
            await self._backend.redis.pipeline(
                [(b"DEL", keys.paused), (b"ZADD", keys.marker, 0, MARKER_MEMBER)]
            )
        )

    async def is_paused(self) -> bool:
        return bool(await self._backend.redis.execute(b"EXISTS", self._backend.keys.paused))

    async def counts(self) -> dict[JobStatus, int]:
        k = self._backend.keys
        low, high, *replies = checked(
            await self._backend.redis.pipeline(
                [
                    (b"ZCARD", k.wait_low),
                    (b"ZCARD", k.wait_high),
                    (b"LLEN", k.wait),
                    (b"ZCARD", k.delayed),
                    (b"ZCOUNT", k.active, b"-inf", b"(+inf"),  # not keys.KEEPER
                    *((b"ZCARD", k.finished(s.value)) for s in _FINISHED),
                ]
            )
        )
        counts = {status: int(reply) for status, reply in zip(_COUNTED, replies, strict=True)}
        counts[JobStatus.WAITING] += int(low) + int(high)
        return counts

    async def waiting_by_priority(self) -> dict[str, int]:
        k = self._backend.keys
        high, plain, low = checked(
            await self._backend.redis.pipeline(
                [(b"ZCARD", k.wait_high), (b"LLEN", k.wait), (b"ZCARD", k.wait_low)]
            )
        )
        return {"positive": int(high), "zero": int(plain), "negative": int(low)}

    async def retry_failed(self, limit: int) -> int:
        [count] = await self._backend.scripts.retry((b"", limit))
        return int(count)

    async def clean(self, status: JobStatus, *, older_than_s: float | None, limit: int) -> int:
        if status not in _FINISHED:
            raise ValueError(f"only finished jobs are cleaned, not {status.value} ones")
        age = b"" if older_than_s is None else math.ceil(older_than_s * 1000)
        return int(await self._backend.scripts.clean((status.value, age, limit)))

    async def workers(self) -> list[WorkerInfo]:
        records = await self._backend.scripts.workers()
        return [WorkerInfo(**orjson.loads(record)) for record in records]

    async def statistics(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        stats = attrs.asdict(self._backend.redis.statistics())
        stats["event_rings"] = self._backend.events.rings
        return stats
