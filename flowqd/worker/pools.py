"""Worker pools: one ``Worker`` per queue a worker process takes jobs from.

``worker.queues`` (``--queues a:3,b:1``) names the queues, each with a
weight; the weights split ``worker.concurrency`` into one pool per queue,
each a whole ``Worker`` of its own (claim loop, lock renewals, flusher) on
that queue's broker. So one queue's backlog never takes another's slots,
and the claim loop stays the one tuned for a single queue. The price: slots
a pool leaves idle are not lent to the other pools.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from flowqd.config import Config
from flowqd.flows import FlowStore
from flowqd.metrics import Gauge, Registry
from flowqd.queue.base import Brokers
from flowqd.worker.core import Worker
from flowqd.worker.metrics import WorkerMetrics

log = logging.getLogger("flowqd.worker")


def split_concurrency(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` job slots split in proportion to ``weights``, at least one each
    (largest remainders get the slots rounding leaves over)."""
    if total < len(weights):
        raise ValueError(
            f"worker.concurrency = {total} is fewer than the {len(weights)} queues of "
            "worker.queues: each pool needs a slot; raise worker.concurrency"
        )
    spare = total - len(weights)  # one slot each first
    whole = sum(weights)
    exact = [spare * w / whole for w in weights]
    shares = [1 + int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: int(exact[i]) - exact[i])
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


@attrs.define(eq=False)
class WorkerPools:
    """The pools of one worker process, run and reported on together."""

    workers: list[Worker]

    @classmethod
    def create(
        cls,
        brokers: Brokers,
        flows: FlowStore,
        config: Config,
        registry: Registry,
        *,
        credential: Callable[[str], Awaitable[str]],
        broker_ok: bool,
    ) -> WorkerPools:
        pools = config.worker_pools()
        shares = split_concurrency(config.worker.concurrency, [w for _, w in pools])
        workers = [
            Worker(
                brokers[name].work,
                flows,
                attrs.evolve(
                    config,
                    queue=config.queue_config(name),
                    worker=attrs.evolve(config.worker, concurrency=share),
                ),
                WorkerMetrics(registry, queue=name),
                credential=credential,
                broker_ok=broker_ok,
                # A job's turns are written in its own queue's keys (by its flush).
                conversations=brokers[name].conversations,
            )
            for (name, _), share in zip(pools, shares, strict=True)
        ]
        self = cls(workers)
        # Each Worker points the gauge at its own jobs; the process's figure is the sum.
        workers[0].metrics.running.read = lambda: sum(w.jobs_held for w in workers)
        slots = registry.add(Gauge("flowqd_worker_pool_slots", "Job slots of each queue's pool."))
        running = registry.add(
            Gauge("flowqd_worker_pool_jobs_running", "Jobs held right now, by queue.")
        )
        for w in workers:
            slots.set(w.config.worker.concurrency, queue=w.queue)

        def collect() -> None:
            for w in workers:
                running.set(w.jobs_held, queue=w.queue)

        registry.collectors.append(collect)
        return self

    async def run(
        self, shutdown: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every pool until ``shutdown``; ``started()`` once all of them claim."""
        if len(self.workers) > 1:
            log.info(
                "worker pools: %s",
                ", ".join(
                    f"queue {w.queue} (concurrency {w.config.worker.concurrency})"
                    for w in self.workers
                ),
            )
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                await nursery.start(worker.run, shutdown)
            task_status.started()

    async def readiness(self) -> tuple[bool, str]:
        """Ready while any pool takes jobs (a paused queue leaves the others
        working); the reason names each queue's state when there are several."""
        if len(self.workers) == 1:
            return await self.workers[0].readiness()
        states = [(w.queue, await w.readiness()) for w in self.workers]
        ready = any(ok for _, (ok, _) in states)
        return ready, "; ".join(f"queue {name}: {why}" for name, (_, why) in states)

    async def queue_readiness(self) -> dict[str, dict[str, object]]:
        """Each queue's readiness, for /readyz."""
        out: dict[str, dict[str, object]] = {}
        for w in self.workers:
            ok, why = await w.readiness()
            out[w.queue] = {"ready": ok, "reason": why, "worker": w.id}
        return out
