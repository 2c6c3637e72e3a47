"""Broker throughput: bulk enqueue and a claim/flush drain of no-op jobs, one process.

    .venv/bin/python bench/broker.py [--jobs 20000] [--batch 500] [--events 1]

Starts its own redis-server (tests/redisproc.py). Reports jobs/s for the
bulk enqueue and for the drain (claim up to --batch jobs, then one flush with
--events events per job plus the outcomes), and this process's CPU per job.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowqd.config import Config, QueueConfig, RedisConfig
from flowqd.jobs import EmittedEvent, JobSpec, JobStatus, Outcome, OutcomeKind
from flowqd.queue import open_broker
from tests.redisproc import RedisServer


async def bench(url: str, jobs: int, batch: int, events: int) -> None:
    config = Config(
        role="all",
        queue=QueueConfig(broker="redis", name="bench"),
        redis=RedisConfig(url=url, command_timeout_s=30),
    )
    async with open_broker(config) as broker:
        specs = [JobSpec(flow_id="noop", flow_version=1, inputs={"i": i}) for i in range(jobs)]
        wall, cpu = time.perf_counter(), time.process_time()
        await broker.jobs.enqueue(specs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"enqueue: {jobs / wall:9,.0f} jobs/s   cpu {cpu / jobs * 1e6:6.1f} us/job")

        done = 0
        wall, cpu = time.perf_counter(), time.process_time()
        while done < jobs:
            claimed = await broker.work.claim("bench", batch, lock_ttl_s=30, block_s=0.1)
            emitted = [EmittedEvent(c.job.id, "token", "x") for c in claimed for _ in range(events)]
            outcomes = [
                Outcome(c.job.id, c.token, OutcomeKind.COMPLETED, result={"text": "x"})
                for c in claimed
            ]
            recorded = await broker.work.flush(emitted, outcomes)
            assert all(recorded)
            done += len(claimed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"drain:   {jobs / wall:9,.0f} jobs/s   cpu {cpu / jobs * 1e6:6.1f} us/job"
            f"   (batch {batch}, {events} event(s) + outcome per job)"
        )
        counts = await broker.control.counts()
        assert counts[JobStatus.COMPLETED] == min(jobs, config.queue.remove_on_count), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--events", type=int, default=1)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        trio.run(bench, server.url, args.jobs, args.batch, args.events)
    finally:
        server.close()


if __name__ == "__main__":
    main()
