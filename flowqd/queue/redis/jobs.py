"""``JobStore`` of the Redis backend: jobs and their events.

``enqueue`` checks job ids against other owners in the same script that adds
the jobs, so the check is atomic per call of ``ENQUEUE_CHUNK`` specs; past
that (never from the API, which sends at most 1000 a request) a taken id
refuses only its own chunk.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any

import attrs
import orjson
import trio

from flowqd.errors import NotReplicated
from flowqd.jobs import Event, Job, JobSpec, JobStatus, new_job_id, parse_event_id
from flowqd.queue import policy
from flowqd.queue.base import JobIdTaken
from flowqd.queue.keys import JOB_FIELDS
from flowqd.queue.redis.backend import RedisBackend
from flowqd.queue.redis.codec import checked, decode_job

ENQUEUE_CHUNK = 1000  # jobs per enqueue script call (all calls in one pipeline)


@attrs.define(eq=False)
class RedisJobs:
    _backend: RedisBackend

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        ids: list[str] = []
        calls = []
        enqueue = self._backend.scripts.enqueue
        default_attempts = self._backend.queue.max_attempts
        for start in range(0, len(specs), ENQUEUE_CHUNK):
            args: list[Any] = []
            for spec in specs[start : start + ENQUEUE_CHUNK]:
                job_id = spec.job_id or new_job_id()
                ids.append(job_id)
                # A new random id needs no lookup (enqueue.lua).
                chosen = b"1" if spec.job_id else b""
                args += (
                    job_id,
                    spec.flow_id,
                    spec.flow_version,
                    orjson.dumps(spec.inputs),
                    math.ceil(spec.delay_s * 1000) if spec.delay_s > 0 else 0,
                    spec.max_attempts or default_attempts,
                    repr(float(spec.timeout_s)) if spec.timeout_s is not None else b"",
                    spec.owner or b"",
                    spec.trace or b"",
                    spec.priority or b"",
                    chosen,
                )
            calls.append(enqueue.call(args))
        if not calls:
            await trio.lowlevel.checkpoint()
            return ids
        taken: list[int] = []
        try:
            replies = checked(await self._backend.redis.pipeline(calls, durable=True))
        except NotReplicated as exc:
            # The jobs exist and will run: the client must learn their ids, or a
            # retry of its request would enqueue them twice.
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            raise NotReplicated(
                f"{exc}. The job(s) {shown} were queued on the primary and may still run: "
                "look them up (GET /api/v1/jobs/ID) before sending the request again",
                exc.replies,
            ) from None
        for chunk, reply in enumerate(replies):
            taken += [chunk * ENQUEUE_CHUNK + int(n) for n in reply]
        if taken:
            raise JobIdTaken(taken)
        return ids

    async def get_job(self, job_id: str) -> Job | None:
        backend = self._backend
        fields = await backend.redis.execute(b"HMGET", backend.keys.job(job_id), *JOB_FIELDS)
        return decode_job(job_id, fields)

    async def list_jobs(self, status: JobStatus, *, offset: int = 0, limit: int = 50) -> list[Job]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        redis, keys = self._backend.redis, self._backend.keys
        last = offset + limit - 1
        if status == JobStatus.WAITING:
            raw = await self._backend.scripts.list_waiting((offset, limit))
        elif status == JobStatus.ACTIVE:
            # Below +inf: not keys.KEEPER.
            raw = await redis.execute(
                b"ZREVRANGEBYSCORE", keys.active, b"(+inf", b"-inf", b"LIMIT", offset, limit
            )
        else:
            key = keys.delayed if status == JobStatus.DELAYED else keys.finished(status.value)
            raw = await redis.execute(b"ZREVRANGE", key, offset, last)
        ids = [r.decode() for r in raw]
        if not ids:
            return []
        replies = await redis.pipeline([(b"HMGET", keys.job(i), *JOB_FIELDS) for i in ids])
        jobs = [decode_job(i, fields) for i, fields in zip(ids, replies, strict=True)]
        return [job for job in jobs if job is not None]

    async def cancel(self, job_id: str, *, reason: str = "cancelled") -> Job | None:
        fields = await self._backend.scripts.cancel(
            (job_id, reason or policy.DEFAULT_CANCEL_REASON)
        )
        return None if fields is None else decode_job(job_id, fields)

    async def retry(self, job_id: str) -> Job | None:
        reply = await self._backend.scripts.retry((job_id, 0))
        return None if reply is None else decode_job(job_id, reply[1])

    async def promote(self, job_id: str) -> Job | None:
        fields = await self._backend.scripts.promote_job((job_id,))
        return None if fields is None else decode_job(job_id, fields)

    async def delete_job(self, job_id: str) -> JobStatus | None:
        status = await self._backend.scripts.delete_job((job_id,))
        return None if status is None else JobStatus(status.decode())

    async def read_events(self, job_id: str, *, after: str = "0", count: int = 1000) -> list[Event]:
        return await self._backend.events.read(job_id, parse_event_id(after), count)

    def open_event_watch(
        self, job_id: str, *, after: str = "0"
    ) -> AbstractAsyncContextManager[AsyncIterator[list[Event]]]:
        # Parsed now: a bad id is the caller's ValueError at the call.
        return aclosing(self._backend.events.watch(job_id, parse_event_id(after)))
