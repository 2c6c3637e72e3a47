"""Jobs finished per time bucket over the last minutes, for the dashboard.

The broker keeps no counters of finished jobs, and the main role may run in a
process without a worker, so finishes are counted from the ``completed`` and
``failed`` sets (newest first, by finish time). Each sample reads only what
finished since the previous one: the cursor is the newest finish time seen
(and the ids finished at exactly that time, so ties are not counted twice).
A sample reads at most ``scan_limit`` jobs per state; past that the counts are
lower bounds and the answer says ``saturated`` (retention, which trims the
sets by count, has the same effect on very busy queues).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from flowqd.jobs import Job, JobStatus
from flowqd.queue.roles import JobStore

STATES = (JobStatus.COMPLETED, JobStatus.FAILED)
PAGE = 500


@attrs.define(eq=False)
class _Cursor:
    at: float
    ids: frozenset[str] = frozenset()

    def is_new(self, job: Job) -> bool:
        finished = job.finished_at or 0.0
        return finished > self.at or (finished == self.at and job.id not in self.ids)


@attrs.define(eq=False)
class FinishRate:
    """Finishes per ``bucket_s`` over ``window_s``; ``sample`` brings it up to date."""

    jobs: JobStore
    window_s: float = 900.0
    bucket_s: float = 30.0
    scan_limit: int = 2000
    # Samples closer together than this reuse the previous one: many open
    # dashboards cost the broker one scan, not one each.
    min_interval_s: float = 1.0
    _buckets: dict[int, dict[str, int]] = attrs.Factory(dict)
    _cursors: dict[JobStatus, _Cursor] = attrs.Factory(dict)
    _sampled_at: float = -math.inf
    _saturated_at: float = -math.inf
    _lock: trio.Lock = attrs.Factory(trio.Lock)

    async def sample(self, now: float) -> None:
        """Count what finished since the last sample (``now``: unix seconds)."""
        async with self._lock:
            if now - self._sampled_at < self.min_interval_s:
                return
            found: dict[JobStatus, list[Job]] = {}
            saturated = False
            # Read everything first, commit after: a sample cut short by the
            # caller's deadline leaves the counts and cursors as they were.
            for state in STATES:
                cursor = self._cursors.get(state) or _Cursor(now - self.window_s)
                jobs, full = await self._new_finishes(state, cursor)
                found[state] = jobs
                saturated = saturated or full
            for state, jobs in found.items():
                for job in jobs:
                    slot = self._bucket(job.finished_at or now)
                    counts = self._buckets.setdefault(slot, {s.value: 0 for s in STATES})
                    counts[state.value] += 1
                if jobs:
                    newest = max(j.finished_at or 0.0 for j in jobs)
                    self._cursors[state] = _Cursor(
                        newest, frozenset(j.id for j in jobs if j.finished_at == newest)
                    )
                elif state not in self._cursors:
                    self._cursors[state] = _Cursor(now - self.window_s)
            if saturated:
                self._saturated_at = now
            self._sampled_at = now
            oldest = self._bucket(now - self.window_s)
            for slot in [s for s in self._buckets if s < oldest]:
                del self._buckets[slot]

    async def _new_finishes(self, state: JobStatus, cursor: _Cursor) -> tuple[list[Job], bool]:
        seen: dict[str, Job] = {}
        offset = 0
        while offset < self.scan_limit:
            page = await self.jobs.list_jobs(state, offset=offset, limit=PAGE)
            # Jobs finishing while we page push older ones down: ids dedupe the overlap.
            fresh = [job for job in page if cursor.is_new(job)]
            seen.update((job.id, job) for job in fresh)
            if len(page) < PAGE or len(fresh) < len(page):
                return list(seen.values()), False
            offset += PAGE
        return list(seen.values()), True

    def _bucket(self, t: float) -> int:
        return math.floor(t / self.bucket_s)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The JSON answer: oldest bucket first, the current (partial) one last."""
        last = self._bucket(now)
        count = math.ceil(self.window_s / self.bucket_s)
        buckets = [
            {"start": slot * self.bucket_s, **self._buckets.get(slot, {s.value: 0 for s in STATES})}
            for slot in range(last - count + 1, last + 1)
        ]
        # The last five minutes, the current partial bucket included.
        recent = buckets[-max(1, math.ceil(min(300.0, self.window_s) / self.bucket_s)) :]
        span_min = len(recent) * self.bucket_s / 60
        return {
            "window_s": self.window_s,
            "bucket_s": self.bucket_s,
            "now": now,
            "buckets": buckets,
            "last_5_min": {s.value: sum(int(b[s.value]) for b in recent) for s in STATES},
            "per_minute": {
                s.value: round(sum(int(b[s.value]) for b in recent) / span_min, 2) for s in STATES
            },
            "saturated": now - self._saturated_at < self.window_s,
        }
