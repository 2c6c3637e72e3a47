"""Event delivery for the Redis backend: one subscription and one reader for all watchers.

Streams are the record, pub/sub only a doorbell. Every script that appends
to job streams publishes the job ids on the queue's events channel. A job
whose every event came in the call that ended it has no stream: its record
holds them as one packed entry (field ``evs``, keys.py), read with the
stream, first, in the same pipeline (``codec.decode_job_events``). The hub
holds one subscription to it and one reader task; a ring marks the rung jobs
"dirty", and the reader reads every dirty stream that has watchers with one
non-blocking ``XREAD`` (per batch of streams, all in one pipeline), from the
oldest cursor among the job's watchers, and hands each watcher the entries
past its own cursor. A lost ring costs nothing: after every (re)subscription
and once a second anyway, every watched stream is re-read from its cursors.

Slow watchers cannot stall others. Each watcher has a bounded buffer; when
the reader finds it full, it marks the watcher *lagging* and skips it from
then on. A lagging watcher, once it has drained its buffer, reads its own
backlog with ``XRANGE`` from its cursor (one pooled command per page) until
it has caught up, then rejoins the shared feed (and marks its job dirty, so
whatever arrived during the switch is read). A watcher joining others of
the same job starts lagging: its replay is its own reading, not theirs.
Each watcher's cursor is the id of the last event put in its buffer;
events at or before it are never delivered again, so an XREAD that raced
a watcher's own XRANGE delivers nothing twice. A shared read that started
past a watcher's cursor (it rejoined while the read was under way) is not
offered to it, since it would skip what lies between: the next pass reads
from that cursor, so nothing is lost either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import orjson
import trio

from flowqd.backoff import Backoff
from flowqd.errors import BrokerUnavailable
from flowqd.jobs import RETRIED, Event, through_terminal
from flowqd.queue.keys import QueueKeys
from flowqd.queue.policy import resume_point
from flowqd.queue.redis.codec import checked, decode_job_events
from flowqd.redis import Arg, Redis

BUFFER = 256  # events a watcher may have waiting before it reads for itself
BATCH = 256  # entries per stream per XREAD / XRANGE page
STREAMS_PER_XREAD = 256
SAFETY_INTERVAL_S = 1.0


class _Watcher:
    __slots__ = ("buffer", "cursor", "cut", "job_id", "lagging", "woken")

    def __init__(self, job_id: str, cursor: tuple[int, int]) -> None:
        self.job_id = job_id
        self.cursor = cursor
        self.buffer: deque[tuple[tuple[int, int], Event]] = deque()
        self.lagging = True
        # The last read that filled the buffer stopped at its COUNT: the
        # stream may go on past the buffer's last entry.
        self.cut = False
        self.woken = trio.Event()

    def wake(self) -> None:
        self.woken.set()

    def offer(self, events: list[tuple[tuple[int, int], Event]], cut: bool) -> None:
        self.cut = cut
        for key, event in events:
            if key <= self.cursor:
                continue
            if len(self.buffer) >= BUFFER:
                self.lagging = self.cut = True
                break
            self.buffer.append((key, event))
            self.cursor = key
        self.wake()


class EventHub:
    """Shares one subscription and one reader among every ``watch`` of this process."""

    def __init__(self, redis: Redis, keys: QueueKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._watchers: dict[str, set[_Watcher]] = {}
        self._dirty: set[str] = set()
        # Watched jobs whose stream was found to have entries: their record
        # never holds events (only a job without any may), so it is not read.
        self._streamed: set[str] = set()
        self._kick = trio.Event()
        self.rings = 0  # doorbell messages received (for statistics)
        self._first_watcher = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The subscriber and the reader; ``started()`` at once.

        The subscription opens with the first watcher: a process that never
        watches (a worker) never receives the doorbell of every flush.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop, name="flowqd-event-reader")
            nursery.start_soon(self._subscribe_loop, name="flowqd-event-doorbell")
            task_status.started()

    async def watch(
        self, job_id: str, cursor: tuple[int, int]
    ) -> AsyncGenerator[list[Event], None]:
        """The job's events after ``cursor``, in batches; ``run()`` must be running."""
        watcher = _Watcher(job_id, cursor)
        if watcher.cursor > (0, 0):
            await self._clamp(watcher)
        job_watchers = self._watchers.setdefault(job_id, set())
        # The job's only watcher (a prediction's, say) is read by the shared
        # reader, in the same pipeline as every other dirty stream, instead
        # of one XRANGE of its own; one joining others reads its own replay.
        watcher.lagging = bool(job_watchers)
        job_watchers.add(watcher)
        self._first_watcher.set()
        if not watcher.lagging:
            self._mark([job_id])
        backoff = Backoff(initial=0.05, maximum=1.0)
        try:
            while True:
                if watcher.buffer:
                    events = [event for _, event in watcher.buffer]
                    batch, ended = through_terminal(events)
                    if ended and watcher.cut and len(batch) == len(events):
                        # A read cut at its COUNT right after a terminal event
                        # cannot tell whether ``retried`` follows: look.
                        ended = not await self._retried_after(watcher)
                    watcher.buffer.clear()
                    yield batch
                    if ended:
                        return
                    continue
                if watcher.lagging:
                    try:
                        await self._catch_up(watcher)
                    except BrokerUnavailable:
                        # A Redis outage is waited out: the stream is still
                        # there when Redis is back, and the caller's own
                        # deadline bounds the wait.
                        await backoff.wait()
                    else:
                        backoff.reset()
                    continue
                await watcher.woken.wait()
                watcher.woken = trio.Event()
        finally:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[job_id]
                    self._streamed.discard(job_id)

    async def read(self, job_id: str, after: tuple[int, int], count: int) -> list[Event]:
        return [event for _, event in await self._range(job_id, after, count)]

    # ---- internals ------------------------------------------------------------

    async def _clamp(self, watcher: _Watcher) -> None:
        """A cursor past the stream's last entry (a client's made-up or stale
        Last-Event-ID) is taken back to it: see ``policy.resume_point``."""
        backoff = Backoff(initial=0.05, maximum=1.0)
        while True:
            try:
                packed, reply = checked(
                    await self._redis.pipeline(
                        [
                            (b"HGET", self._keys.job(watcher.job_id), b"evs"),
                            (
                                b"XREVRANGE",
                                self._keys.events(watcher.job_id),
                                b"+",
                                b"-",
                                b"COUNT",
                                1,
                            ),
                        ]
                    )
                )
            except BrokerUnavailable:
                await backoff.wait()  # as in watch(): the caller's deadline bounds it
                continue
            last = decode_job_events(packed, reply)
            watcher.cursor = resume_point(watcher.cursor, last[-1][0] if last else None)
            return

    async def _retried_after(self, watcher: _Watcher) -> bool:
        backoff = Backoff(initial=0.05, maximum=1.0)
        while True:
            try:
                page = await self._range(watcher.job_id, watcher.cursor, 1)
            except BrokerUnavailable:
                await backoff.wait()  # as in watch(): the caller's deadline bounds it
                continue
            return bool(page) and page[0][1].name == RETRIED

    async def _catch_up(self, watcher: _Watcher) -> None:
        page = await self._range(watcher.job_id, watcher.cursor, BATCH)
        # Called with an empty buffer and BATCH <= BUFFER: the page always fits.
        watcher.offer(page, len(page) >= BATCH)
        if len(page) < BATCH:
            watcher.lagging = False
            self._mark([watcher.job_id])

    async def _range(
        self, job_id: str, after: tuple[int, int], count: int
    ) -> list[tuple[tuple[int, int], Event]]:
        # Every entry read holds at least one event past ``after`` (its last):
        # ``count`` entries hold at least ``count`` events, if there are so many.
        packed, entries = checked(
            await self._redis.pipeline(
                [
                    (b"HGET", self._keys.job(job_id), b"evs"),
                    (
                        b"XRANGE",
                        self._keys.events(job_id),
                        f"({after[0]}-{after[1]}",
                        b"+",
                        b"COUNT",
                        count,
                    ),
                ]
            )
        )
        return decode_job_events(packed, entries, after)[:count]

    def _mark(self, job_ids: Iterable[str]) -> None:
        watched = self._watchers
        added = False
        for job_id in job_ids:
            if job_id in watched:
                self._dirty.add(job_id)
                added = True
        if added:
            self._kick.set()

    async def _subscribe_loop(self) -> None:
        await self._first_watcher.wait()
        backoff = Backoff(initial=0.05, maximum=2.0)
        channel = self._keys.events_channel
        while True:
            try:
                async with self._redis.subscribe(channel) as subscription:
                    backoff.reset()
                    # Rings sent while unsubscribed are gone: re-read everything.
                    self._mark(list(self._watchers))
                    async for _, message in subscription:
                        self.rings += 1
                        self._mark(orjson.loads(message))
            except BrokerUnavailable:
                pass  # watchers are re-read once a second meanwhile
            await backoff.wait()

    async def _read_loop(self) -> None:
        backoff = Backoff(initial=0.05, maximum=2.0)
        while True:
            if not self._dirty:
                with trio.move_on_after(SAFETY_INTERVAL_S):
                    await self._kick.wait()
                self._kick = trio.Event()
                if not self._dirty:
                    self._mark(list(self._watchers))
                    if not self._dirty:
                        continue
            dirty, self._dirty = self._dirty, set()
            try:
                await self._read_dirty(dirty)
                backoff.reset()
            except BrokerUnavailable:
                self._dirty |= dirty
                await backoff.wait()

    async def _read_dirty(self, dirty: set[str]) -> None:
        requests: list[tuple[str, tuple[int, int]]] = []
        for job_id in dirty:
            feeding = [w.cursor for w in self._watchers.get(job_id, ()) if not w.lagging]
            if feeding:
                requests.append((job_id, min(feeding)))
        if not requests:
            return
        # The records first, then the streams: see decode_job_events.
        unstreamed = [job_id for job_id, _ in requests if job_id not in self._streamed]
        commands: list[tuple[Arg, ...]] = [
            (b"HGET", self._keys.job(job_id), b"evs") for job_id in unstreamed
        ]
        for start in range(0, len(requests), STREAMS_PER_XREAD):
            chunk = requests[start : start + STREAMS_PER_XREAD]
            commands.append(
                (
                    b"XREAD",
                    b"COUNT",
                    BATCH,
                    b"STREAMS",
                    *(self._keys.events(job_id) for job_id, _ in chunk),
                    *(f"{c[0]}-{c[1]}" for _, c in chunk),
                )
            )
        prefix_len = len(self._keys.events(""))
        starts = dict(requests)
        replies = checked(await self._redis.pipeline(commands))
        held = dict(zip(unstreamed, replies, strict=False))
        found: list[tuple[str, list[Any] | None]] = [
            (key[prefix_len:].decode(), entries)
            for reply in replies[len(unstreamed) :]
            for key, entries in reply or ()
        ]
        for job_id, _ in found:
            self._streamed.add(job_id)
            # The stream holds all: a retry moved the record's entry into it.
            held.pop(job_id, None)
        found += [(job_id, None) for job_id, packed in held.items() if packed is not None]
        for job_id, entries in found:
            read_from = starts[job_id]
            decoded = decode_job_events(held.get(job_id), entries, read_from)
            cut = entries is not None and len(entries) >= BATCH
            if cut:
                self._dirty.add(job_id)  # more to read: next pass
            for watcher in list(self._watchers.get(job_id, ())):
                if watcher.lagging:
                    continue
                if watcher.cursor < read_from:
                    # It rejoined behind this read's start while the read
                    # was under way: entries between its cursor and the
                    # start are not in this reply. The next pass reads
                    # from its cursor.
                    self._dirty.add(job_id)
                    continue
                watcher.offer(decoded, cut)
        if self._dirty:
            self._kick.set()
