"""``WorkQueue`` of the Redis backend: claims, locks, outcomes, notices.

Decisions where the contract left room:

- ``claim`` blocks at most once: if the doorbell rings it claims again and
  returns whatever it got, possibly [] (the worker loop calls again). After
  a claim that left nothing waiting, the next one blocks first and claims
  when the doorbell rings or ``block_s`` passes. The claim script runs
  shielded from cancellation; if the caller was cancelled meanwhile, the
  claimed jobs are put back at the head of ``wait`` (attempt not counted)
  before ``Cancelled`` propagates. If Redis fails mid-claim the jobs may sit
  in ``active`` until the stalled check returns them (attempt counted). A
  claimer cancelled while blocked may take a doorbell ring with it; other
  idle workers then find the jobs at their next ``block_s`` timeout.
- ``flush`` also runs shielded (bounded by the command timeout): once sent,
  it either completes or raises BrokerUnavailable.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import orjson
import trio

from flowqd.backoff import Backoff
from flowqd.errors import BrokerUnavailable, NotReplicated
from flowqd.jobs import Claimed, EmittedEvent, Outcome, OutcomeKind, WorkerInfo
from flowqd.logs import ThrottledLog
from flowqd.queue.redis import maintenance
from flowqd.queue.redis.backend import RedisBackend
from flowqd.queue.redis.codec import checked, decode_claim, flush_args, flush_packed
from flowqd.redis import Arg, ScriptCall

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class RedisWork:
    _backend: RedisBackend
    _drained: bool = False  # the last claim left no job waiting
    _throttled: ThrottledLog = attrs.Factory(lambda: ThrottledLog(log))

    async def ping(self) -> None:
        await self._backend.ping()

    async def is_paused(self) -> bool:
        return bool(await self._backend.redis.execute(b"EXISTS", self._backend.keys.paused))

    async def claim(
        self, worker_id: str, max_jobs: int, *, lock_ttl_s: float, block_s: float
    ) -> list[Claimed]:
        if max_jobs <= 0:
            await trio.lowlevel.checkpoint()
            return []
        # One token base for both claims below: the second runs only when the
        # first claimed nothing, so no token is ever issued twice.
        base = uuid.uuid4().hex
        args = (worker_id, max_jobs, max(1, round(lock_ttl_s * 1000)), base)
        if not self._drained or block_s <= 0:
            with trio.CancelScope(shield=True):
                reply = await self._backend.scripts.claim(args)
            claimed = decode_claim(reply, worker_id, base)
            await self._hand_over(claimed)
            self._drained = claimed is None or len(claimed) < max_jobs
            if claimed or block_s <= 0:
                return claimed or []
        # The last claim found the queue empty (or paused): wait for the
        # doorbell before claiming again. That saves a script call per job
        # at low load and is always safe: whatever puts jobs in ``wait``
        # rings, and a claim that leaves jobs there rings again.
        claimed = decode_claim(await self._wait_and_claim(args, block_s), worker_id, base)
        await self._hand_over(claimed)
        self._drained = claimed is None or len(claimed) < max_jobs
        return claimed or []

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
            await self._backend.scripts.flush(flush_args((), requeue))

    async def _wait_and_claim(self, args: tuple[Arg, ...], block_s: float) -> Any:
        """BZPOPMIN on the doorbell and the claim script in one write; the script's reply.

        When the doorbell rings, Redis runs the claim at once: no second round
        trip. After a timeout it runs too (a claimer cancelled while blocked
        may have taken the ring). The wait is shielded, since closing the
        socket on cancellation could come just after Redis ran the claim and
        leave jobs locked by nobody until the stalled check. A cancelled
        caller ends the wait with CLIENT UNBLOCK from the pool instead, reads
        the claim's reply, and puts those jobs back before Cancelled goes on.
        """
        backend = self._backend
        commands: list[tuple[Arg, ...] | ScriptCall] = [
            (b"BZPOPMIN", backend.keys.marker, f"{block_s:.3f}"),
            backend.scripts.claim.call(args),
        ]
        replies: list[Any] = []
        failures: list[Exception] = []
        cancelled: trio.Cancelled | None = None
        done = trio.Event()
        async with backend.blocking.connection() as connection:

            async def request() -> None:
                try:
                    with trio.CancelScope(shield=True):
                        replies.extend(
                            await connection.pipeline(
                                commands, timeout=block_s + backend.block_margin_s
                            )
                        )
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
                        if not done.is_set():
                            with contextlib.suppress(BrokerUnavailable):
                                await backend.redis.unblock(connection)
                        await done.wait()
                        if replies and not isinstance(replies[1], Exception):
                            claimed = decode_claim(replies[1], str(args[0]), str(args[3]))
                            if claimed:
                                await self._put_back(claimed)
        if cancelled is not None:
            raise cancelled
        if failures:
            raise failures[0]
        reply = replies[1]  # BZPOPMIN's own answer (nil on timeout) says nothing more
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
        lost, cancelled = await self._backend.scripts.renew(args)
        return {i.decode() for i in lost}, {i.decode() for i in cancelled}

    async def flush(
        self, events: Sequence[EmittedEvent], outcomes: Sequence[Outcome]
    ) -> list[bool]:
        if not events and not outcomes:
            await trio.lowlevel.checkpoint()
            return []
        args = flush_packed(events, outcomes, self._backend.memory)
        with trio.CancelScope(shield=True):
            try:
                results = await self._backend.scripts.flush(args, durable=True)
            except NotReplicated as exc:
                # Done on the primary: the outcomes stand. Retrying would be refused
                # (their tokens are spent), so say it and go on.
                self._throttled.warning("not-replicated", "%s", exc)
                [results] = exc.replies
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
        backend = self._backend
        backoff = Backoff(initial=0.05, maximum=5.0)
        started = False
        while True:
            try:
                async with backend.redis.subscribe(backend.keys.cancel_channel) as subscription:
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
        """Promotes due delayed jobs (at most ``maintenance.PROMOTE_INTERVAL_S`` late)
        and, every ``stalled_interval_s``, runs the stalled check and retention by
        age if no other process did in this interval. Survives Redis outages."""
        scripts = self._backend.scripts
        async with trio.open_nursery() as nursery:
            nursery.start_soon(maintenance.promote_loop, scripts.promote, name="flowqd-promote")
            nursery.start_soon(
                maintenance.stalled_loop,
                scripts.stalled,
                stalled_interval_s,
                self._backend.queue.name,
                name="flowqd-stalled",
            )
            task_status.started()

    async def heartbeat(self, info: WorkerInfo, *, ttl_s: float) -> None:
        keys = self._backend.keys
        checked(
            await self._backend.redis.pipeline(
                [
                    (
                        b"SET",
                        keys.worker(info.id),
                        orjson.dumps(attrs.asdict(info)),
                        b"PX",
                        max(1, round(ttl_s * 1000)),
                    ),
                    (b"ZADD", keys.workers, int(info.last_seen * 1000), info.id),
                ]
            )
        )
