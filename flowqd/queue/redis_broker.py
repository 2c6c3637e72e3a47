"""The Redis broker: the Broker contract on Redis, every state change one Lua script.

Data model (names in ``keys.py``, scripts in ``lua/``):

- ``wait`` list (LPUSH new, RPOP the oldest), ``delayed`` zset by due time,
  ``active`` zset by lock deadline (ms, Redis's clock: ``TIME`` in scripts),
  ``completed``/``failed``/``cancelled`` zsets by finish time.
- ``job:<id>`` hash: the record, plus ``tok`` (the current claim's token) and
  ``stl`` (stalls). The token in the hash is what proves ownership: a flush
  or renewal is accepted while the job is active under that token, even if
  its lock deadline has just passed, until the stalled check takes the job
  back (and clears the token). So a worker that merely ran late loses
  nothing, and a job taken back can never get a second outcome.
- ``events:<id>`` stream, ``XADD MAXLEN ~``, entries ``n`` (name) and ``d``
  (orjson data); its last entry is the one terminal event. Job hash and
  stream expire ``queue.remove_on_age_s`` after the job ends.
- ``marker``: a one-member zset that idle workers wait on with BZPOPMIN on a
  connection of their own; enqueue, promotion, requeue and resume ring it,
  and a claim that leaves jobs waiting rings it again for the next worker.

Decisions where the contract left room:

- ``claim`` blocks at most once: if the doorbell rings it claims again and
  returns whatever it got, possibly [] (the worker loop calls again). After
  a claim that left nothing waiting, the next one blocks first and claims
  when the doorbell rings or ``block_s`` passes. The
  claim script runs shielded from cancellation; if the caller was cancelled
  meanwhile, the claimed jobs are put back at the head of ``wait`` (attempt
  not counted) before ``Cancelled`` propagates. If Redis fails mid-claim the
  jobs may sit in ``active`` until the stalled check returns them (attempt
  counted). A claimer cancelled while blocked may take a doorbell ring with
  it; other idle workers then find the jobs at their next ``block_s`` timeout.
- ``flush`` also runs shielded (bounded by the command timeout): once sent,
  it either completes or raises BrokerUnavailable.
- Events emitted for a job that is not active are dropped (never appended
  after its terminal event).
- ``enqueue`` checks job ids against other owners in the same script that
  adds the jobs, so the check is atomic per call of ``ENQUEUE_CHUNK`` specs;
  past that (never from the API, which sends at most 1000 a request) a taken
  id refuses only its own chunk.
- ``queue.remove_on_count = 0`` means no limit by count (Flowise: unset).
- ``watch_events`` needs ``run()`` running (it owns the shared reader).
- A retry waits ``backoff_s * 2**(attempt-1)`` plus up to 25% jitter.
"""

from __future__ import annotations

import contextlib
import math
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from flowqd.config import QueueConfig, RedisConfig
from flowqd.errors import BrokerUnavailable
from flowqd.jobs import (
    Claimed,
    EmittedEvent,
    Event,
    Job,
    JobSpec,
    JobStatus,
    Outcome,
    OutcomeKind,
    WorkerInfo,
    new_job_id,
)
from flowqd.queue import policy
from flowqd.queue.base import Broker, JobIdTaken
from flowqd.queue.codec import decode_job
from flowqd.queue.keys import JOB_FIELDS, MARKER_MEMBER, QueueKeys
from flowqd.queue.redis_events import EventHub
from flowqd.queue.scripts import Scripts
from flowqd.redis import Arg, Backoff, Connection, Redis, ScriptCall, open_redis

ENQUEUE_CHUNK = 1000  # jobs per enqueue script call (all calls in one pipeline)
PROMOTE_INTERVAL_S = 0.1  # longest wait before a due delayed job is promoted
PROMOTE_LIMIT = 1000
STALLED_LIMIT = 1000
_OUTCOME_CODES = {
    OutcomeKind.COMPLETED: b"c",
    OutcomeKind.FAILED: b"f",
    OutcomeKind.CANCELLED: b"x",
    OutcomeKind.REQUEUE: b"r",
}
_FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@asynccontextmanager
async def open_redis_broker(
    redis_config: RedisConfig, queue: QueueConfig, *, name: str = "flowqd"
) -> AsyncIterator[RedisBroker]:
    """A Redis broker with its own client; needs no running Redis to enter."""
    async with open_redis(redis_config, name=name) as redis, AsyncExitStack() as stack:
        yield RedisBroker(
            redis, queue, exit_stack=stack, block_margin_s=redis_config.command_timeout_s
        )


class _BlockingConnections:
    """Connections for BZPOPMIN, kept for reuse (as many as claims ever blocked at once)."""

    def __init__(self, redis: Redis, stack: AsyncExitStack) -> None:
        self._redis = redis
        self._stack = stack
        self._idle: list[Connection] = []

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        if self._idle:
            connection = self._idle.pop()
        else:
            # Connects lazily; after a cancellation closed it, reconnects on next use.
            connection = await self._stack.enter_async_context(
                self._redis.dedicated(name="flowqd-claim")
            )
        try:
            yield connection
        finally:
            self._idle.append(connection)


class RedisBroker(Broker):
    def __init__(
        self,
        redis: Redis,
        queue: QueueConfig,
        *,
        exit_stack: AsyncExitStack,
        block_margin_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._cfg = queue
        self._keys = QueueKeys(queue.name)
        self._scripts = Scripts.load(redis)
        self._script_keys = (self._keys.prefix,)
        self._settings: tuple[int | str, ...] = (
            queue.event_stream_max_len,
            max(1, math.ceil(queue.remove_on_age_s * 1000)),
            queue.remove_on_count,
            queue.max_stalled,
            round(queue.backoff_s * 1000),
        )
        self._blocking = _BlockingConnections(redis, exit_stack)
        self._block_margin_s = block_margin_s
        self._events = EventHub(redis, self._keys)
        self._drained = False  # the last claim left no job waiting

    async def _run(self, script_name: str, args: Sequence[Any]) -> Any:
        return await self._redis.run_script(
            getattr(self._scripts, script_name), self._script_keys, (*self._settings, *args)
        )

    # ---- lifecycle -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._events.run(task_status=task_status)

    async def ping(self) -> None:
        await self._redis.execute(b"PING")

    # ---- producers -------------------------------------------------------

    async def enqueue(self, specs: Sequence[JobSpec]) -> list[str]:
        ids: list[str] = []
        calls = []
        default_attempts = self._cfg.max_attempts
        for start in range(0, len(specs), ENQUEUE_CHUNK):
            args: list[Any] = list(self._settings)
            for spec in specs[start : start + ENQUEUE_CHUNK]:
                job_id = spec.job_id or new_job_id()
                ids.append(job_id)
                args += (
                    job_id,
                    spec.flow_id,
                    spec.flow_version,
                    orjson.dumps(spec.inputs),
                    math.ceil(spec.delay_s * 1000) if spec.delay_s > 0 else 0,
                    spec.max_attempts or default_attempts,
                    repr(float(spec.timeout_s)) if spec.timeout_s is not None else b"",
                    spec.owner or b"",
                )
            calls.append(self._scripts.enqueue.call(self._script_keys, args))
        if not calls:
            await trio.lowlevel.checkpoint()
            return ids
        taken: list[int] = []
        for chunk, reply in enumerate(await self._redis.pipeline(calls)):
            if isinstance(reply, Exception):
                raise reply
            taken += [chunk * ENQUEUE_CHUNK + int(n) for n in reply]
        if taken:
            raise JobIdTaken(taken)
        return ids

    async def get_job(self, job_id: str) -> Job | None:
        fields = await self._redis.execute(b"HMGET", self._keys.job(job_id), *JOB_FIELDS)
        return decode_job(job_id, fields)

    async def list_jobs(self, status: JobStatus, *, offset: int = 0, limit: int = 50) -> list[Job]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        last = offset + limit - 1
        if status == JobStatus.WAITING:
            raw = await self._redis.execute(b"LRANGE", self._keys.wait, offset, last)
        else:
            key = {
                JobStatus.ACTIVE: self._keys.active,
                JobStatus.DELAYED: self._keys.delayed,
            }.get(status) or self._keys.finished(status.value)
            raw = await self._redis.execute(b"ZREVRANGE", key, offset, last)
        ids = [r.decode() for r in raw]
        if not ids:
            return []
        replies = await self._redis.pipeline(
            [(b"HMGET", self._keys.job(i), *JOB_FIELDS) for i in ids]
        )
        jobs = [decode_job(i, fields) for i, fields in zip(ids, replies, strict=True)]
        return [job for job in jobs if job is not None]

    async def cancel(self, job_id: str, *, reason: str = "cancelled") -> Job | None:
        fields = await self._run("cancel", (job_id, reason or "cancelled"))
        return None if fields is None else decode_job(job_id, fields)

    async def retry(self, job_id: str) -> Job | None:
        fields = await self._run("retry", (job_id,))
        return None if fields is None else decode_job(job_id, fields)

    async def read_events(self, job_id: str, *, after: str = "0", count: int = 1000) -> list[Event]:
        return await self._events.read(job_id, policy.parse_event_id(after), count)

    def watch_event_batches(self, job_id: str, *, after: str = "0"
                            ) -> AsyncIterator[list[Event]]:
        policy.parse_event_id(after)  # a bad id fails here, not at the first iteration
        return self._events.watch(job_id, after)

    # ---- queue control and introspection ---------------------------------

    async def pause(self) -> None:
        await self._redis.execute(b"SET", self._keys.paused, b"1")

    async def resume(self) -> None:
        replies = await self._redis.pipeline(
            [(b"DEL", self._keys.paused), (b"ZADD", self._keys.marker, 0, MARKER_MEMBER)]
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    async def is_paused(self) -> bool:
        return bool(await self._redis.execute(b"EXISTS", self._keys.paused))

    async def counts(self) -> dict[JobStatus, int]:
        k = self._keys
        replies = await self._redis.pipeline(
            [
                (b"LLEN", k.wait),
                (b"ZCARD", k.delayed),
                (b"ZCARD", k.active),
                *((b"ZCARD", k.finished(s.value)) for s in _FINISHED),
            ]
        )
        statuses = (JobStatus.WAITING, JobStatus.DELAYED, JobStatus.ACTIVE, *_FINISHED)
        result: dict[JobStatus, int] = {}
        for status, reply in zip(statuses, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            result[status] = int(reply)
        return result

    async def workers(self) -> list[WorkerInfo]:
        records = await self._run("workers", ())
        return [WorkerInfo(**orjson.loads(record)) for record in records]

    # ---- workers ---------------------------------------------------------

    async def claim(
        self, worker_id: str, max_jobs: int, *, lock_ttl_s: float, block_s: float
    ) -> list[Claimed]:
        if max_jobs <= 0:
            await trio.lowlevel.checkpoint()
            return []
        if not self._drained or block_s <= 0:
            claimed = await self._claim_now(worker_id, max_jobs, lock_ttl_s)
            self._drained = claimed is None or len(claimed) < max_jobs
            if claimed or block_s <= 0:
                return claimed or []
        # The last claim found the queue empty (or paused): wait for the
        # doorbell before claiming again. That saves a script call per job
        # at low load and is always safe: whatever puts jobs in ``wait``
        # rings, and a claim that leaves jobs there rings again.
        claimed = self._decode_claim(await self._wait_and_claim(worker_id, max_jobs, lock_ttl_s,
                                                                block_s))
        await self._hand_over(claimed)
        self._drained = claimed is None or len(claimed) < max_jobs
        return claimed or []

    def _claim_args(self, worker_id: str, max_jobs: int, lock_ttl_s: float) -> tuple[Any, ...]:
        return (worker_id, max_jobs, max(1, round(lock_ttl_s * 1000)), uuid.uuid4().hex)

    async def _claim_now(
        self, worker_id: str, max_jobs: int, lock_ttl_s: float
    ) -> list[Claimed] | None:
        """Run the claim script; None while the queue is paused."""
        with trio.CancelScope(shield=True):
            reply = await self._run("claim", self._claim_args(worker_id, max_jobs, lock_ttl_s))
        claimed = self._decode_claim(reply)
        await self._hand_over(claimed)
        return claimed

    def _decode_claim(self, reply: Any) -> list[Claimed] | None:
        if reply is None:
            return None
        claimed: list[Claimed] = []
        for i in range(0, len(reply), 3):
            job_id = reply[i].decode()
            job = decode_job(job_id, reply[i + 2])
            assert job is not None  # the script has just written it
            claimed.append(Claimed(job, reply[i + 1].decode()))
        return claimed

    async def _hand_over(self, claimed: list[Claimed] | None) -> None:
        """Raise Cancelled if the caller was cancelled, after putting ``claimed`` back."""
        if claimed:
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except trio.Cancelled:
                await self._put_back(claimed)
                raise

    async def _put_back(self, claimed: list[Claimed]) -> None:
        # Our caller will never see these jobs: put them back, uncounted.
        requeue = [Outcome(c.job.id, c.token, OutcomeKind.REQUEUE) for c in claimed]
        # If Redis fails now, the stalled check returns them after the lock TTL.
        with trio.CancelScope(shield=True), contextlib.suppress(BrokerUnavailable):
            await self._flush((), requeue)

    async def _wait_and_claim(
        self, worker_id: str, max_jobs: int, lock_ttl_s: float, block_s: float
    ) -> Any:
        """BZPOPMIN on the doorbell and the claim script in one write; the script's reply.

        When the doorbell rings, Redis runs the claim at once: no second round
        trip. After a timeout it runs too (a claimer cancelled while blocked
        may have taken the ring). The wait is shielded, since closing the
        socket on cancellation could come just after Redis ran the claim and
        leave jobs locked by nobody until the stalled check. A cancelled
        caller ends the wait with CLIENT UNBLOCK from the pool instead, reads
        the claim's reply, and puts those jobs back before Cancelled goes on.
        """
        args = (*self._settings, *self._claim_args(worker_id, max_jobs, lock_ttl_s))
        commands: list[tuple[Arg, ...] | ScriptCall] = [
            (b"BZPOPMIN", self._keys.marker, f"{block_s:.3f}"),
            self._scripts.claim.call(self._script_keys, args),
        ]
        replies: list[Any] = []
        failures: list[Exception] = []
        cancelled: trio.Cancelled | None = None
        done = trio.Event()
        async with self._blocking.connection() as connection:

            async def request() -> None:
                try:
                    with trio.CancelScope(shield=True):
                        replies.extend(await connection.pipeline(
                            commands, timeout=block_s + self._block_margin_s))
                except Exception as exc:  # handed to the caller as it is, not in a group
                    failures.append(exc)
                finally:
                    done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(request)
                try:
                    await done.wait()
                except trio.Cancelled as exc:
                    # Raised after the nursery: from inside it, a group.
                    cancelled = exc
                    with trio.CancelScope(shield=True):
                        client_id = connection.client_id
                        if client_id is not None and not done.is_set():
                            with contextlib.suppress(BrokerUnavailable):
                                await self._redis.execute(b"CLIENT", b"UNBLOCK", client_id)
                        await done.wait()
                        if replies and not isinstance(replies[1], Exception):
                            claimed = self._decode_claim(replies[1])
                            if claimed:
                                await self._put_back(claimed)
        if cancelled is not None:
            raise cancelled
        if failures:
            raise failures[0]
        reply = replies[1]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def renew(
        self, worker_id: str, held: Mapping[str, str], *, lock_ttl_s: float
    ) -> tuple[set[str], set[str]]:
        if not held:
            await trio.lowlevel.checkpoint()
            return set(), set()
        args: list[Any] = [max(1, round(lock_ttl_s * 1000))]
        for job_id, token in held.items():
            args += (job_id, token)
        lost, cancelled = await self._run("renew", args)
        return {i.decode() for i in lost}, {i.decode() for i in cancelled}

    async def flush(
        self, events: Sequence[EmittedEvent], outcomes: Sequence[Outcome]
    ) -> list[bool]:
        if not events and not outcomes:
            await trio.lowlevel.checkpoint()
            return []
        with trio.CancelScope(shield=True):
            recorded = await self._flush(events, outcomes)
        return recorded

    async def _flush(
        self, events: Sequence[EmittedEvent], outcomes: Sequence[Outcome]
    ) -> list[bool]:
        dumps = orjson.dumps
        # Events as runs of one job's consecutive events: job id and count
        # once per run (a job's events mostly come together), then name and
        # data per event.
        args: list[Any] = [0]
        runs = 0
        run_job: str | None = None
        count_at = 0
        for event in events:
            if event.job_id != run_job:
                run_job = event.job_id
                runs += 1
                count_at = len(args) + 1
                args += (run_job, 0)
            args[count_at] += 1
            args += (event.name, dumps(event.data))
        args[0] = runs
        for outcome in outcomes:
            kind = outcome.kind
            stored: bytes | str = b""
            event_data = b""
            if kind == OutcomeKind.COMPLETED:
                stored = dumps(outcome.result)
            elif kind == OutcomeKind.FAILED:
                error = outcome.error or {"message": "job failed"}
                stored = dumps(error)
                event_data = dumps(policy.error_event_data(error))
            elif kind == OutcomeKind.CANCELLED:
                stored = policy.cancel_reason(outcome.error)
            args += (
                outcome.job_id,
                outcome.token,
                _OUTCOME_CODES[kind],
                stored,
                event_data,
                dumps(outcome.nodes) if outcome.nodes else b"",
                b"1" if outcome.retry else b"0",
                repr(random.random()) if kind == OutcomeKind.FAILED else b"",
            )
        results = await self._run("flush", args)
        return [bool(r) for r in results]

    async def watch_cancels(
        self,
        on_cancel: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Calls ``on_cancel`` per notice; ``started()`` after the first attempt.

        Started once subscribed, or once the first attempt failed: a worker
        that starts while Redis is down must still come up (and say "not
        ready" on /readyz) rather than hang in start-up. Notices published
        while the subscription is down are lost; ``renew`` reports those
        jobs, so a lost notice costs at most one renewal.
        """
        backoff = Backoff(initial=0.05, maximum=5.0)
        started = False
        while True:
            try:
                async with self._redis.subscribe(self._keys.cancel_channel) as subscription:
                    backoff.reset()
                    if not started:
                        task_status.started()
                        started = True
                    async for _, message in subscription:
                        on_cancel(message.decode())
            except BrokerUnavailable:
                if not started:
                    task_status.started()
                    started = True
            await backoff.wait()

    async def run_maintenance(
        self,
        *,
        stalled_interval_s: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Promotes due delayed jobs (at most ``PROMOTE_INTERVAL_S`` late) and,
        every ``stalled_interval_s``, runs the stalled check and retention by age
        if no other process did in this interval. Survives Redis outages."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._promote_loop, name="flowqd-promote")
            nursery.start_soon(self._stalled_loop, stalled_interval_s, name="flowqd-stalled")
            task_status.started()

    async def _promote_loop(self) -> None:
        backoff = Backoff(initial=0.05, maximum=5.0)
        while True:
            try:
                examined, next_due_ms = await self._run("promote", (PROMOTE_LIMIT,))
            except BrokerUnavailable:
                await backoff.wait()
                continue
            backoff.reset()
            if examined >= PROMOTE_LIMIT:
                await trio.lowlevel.checkpoint()
                continue
            wait = PROMOTE_INTERVAL_S if next_due_ms < 0 else next_due_ms / 1000
            await trio.sleep(min(max(wait, 0.002), PROMOTE_INTERVAL_S))

    async def _stalled_loop(self, interval_s: float) -> None:
        # The winner's claim on the round lasts most of an interval, so the
        # check runs about once per interval whichever process wins it.
        hold_ms = max(1, int(interval_s * 1000 * 0.8))
        error = orjson.dumps(policy.stalled_error())
        event = orjson.dumps(policy.error_event_data(policy.stalled_error()))
        while True:
            await trio.sleep(interval_s)
            try:
                handled = await self._run("stalled", (hold_ms, STALLED_LIMIT, error, event))
                while handled >= STALLED_LIMIT:
                    handled = await self._run("stalled", (0, STALLED_LIMIT, error, event))
            except BrokerUnavailable:
                continue  # next interval; the stalled check tolerates gaps

    async def heartbeat(self, info: WorkerInfo, *, ttl_s: float) -> None:
        replies = await self._redis.pipeline(
            [
                (
                    b"SET", self._keys.worker(info.id), orjson.dumps(attrs.asdict(info)),
                    b"PX", max(1, round(ttl_s * 1000)),
                ),
                (b"ZADD", self._keys.workers, int(info.last_seen * 1000), info.id),
            ]
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    # ---- flows and credentials ---------------------------------------------

    async def put_flow(self, flow_id: str, document: bytes) -> int:
        return int(await self._run("put_flow", (flow_id, document)))

    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        reply = await self._run("get_flow", (flow_id, b"" if version is None else version))
        return None if reply is None else (int(reply[0]), reply[1])

    async def list_flows(self) -> dict[str, int]:
        reply = await self._redis.execute(b"HGETALL", self._keys.flows)
        return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def delete_flow(self, flow_id: str) -> bool:
        return bool(await self._redis.execute(b"HDEL", self._keys.flows, flow_id))

    async def put_secret(self, name: str, sealed: bytes) -> None:
        await self._redis.execute(b"HSET", self._keys.secrets, name, sealed)

    async def get_secret(self, name: str) -> bytes | None:
        value: bytes | None = await self._redis.execute(b"HGET", self._keys.secrets, name)
        return value

    async def list_secrets(self) -> list[str]:
        return sorted(n.decode() for n in await self._redis.execute(b"HKEYS", self._keys.secrets))

    async def delete_secret(self, name: str) -> bool:
        return bool(await self._redis.execute(b"HDEL", self._keys.secrets, name))

    async def rate_limit(self, name: str, *, per_minute: int, burst: int) -> float:
        wait_ms = await self._run("rate_limit", (name, repr(60_000 / per_minute), burst))
        return int(wait_ms) / 1000

    async def statistics(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        stats = attrs.asdict(self._redis.statistics())
        stats["event_rings"] = self._events.rings
        return stats
