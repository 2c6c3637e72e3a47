"""Micro-benchmark of flowqd's Redis client against its own redis-server.

Run: .venv/bin/python bench/redis_client.py [--n 50000]

Prints sequential SET/s (one round trip each), pipelined SET/s (100 per
pipeline), SET/s from 100 concurrent tasks on the pool, and this process's
CPU time per round trip and per pipelined command. Redis's own CPU is not
counted (it is another process).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowqd.config import RedisConfig
from flowqd.redis import Redis, open_redis
from tests.redisproc import RedisServer


async def measure(label: str, ops: int, unit: str, run: Callable[[], Awaitable[None]]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:<34} {ops / wall:>10,.0f} SET/s   CPU {cpu / ops * 1e6:6.2f} µs per {unit}")


async def bench(url: str, n: int) -> None:
    async with open_redis(RedisConfig(url=url, max_connections=32), name="bench") as redis:
        await redis.execute("FLUSHALL")
        value = b"x" * 100

        async def sequential() -> None:
            execute = redis.execute
            for i in range(n):
                await execute("SET", i, value)

        async def pipelined() -> None:
            total = n * 10
            for start in range(0, total, 100):
                await redis.pipeline([("SET", i, value) for i in range(start, start + 100)])

        async def concurrent(tasks: int = 100) -> None:
            async def worker(r: Redis, first: int) -> None:
                for i in range(first, n, tasks):
                    await r.execute("SET", i, value)

            async with trio.open_nursery() as nursery:
                for t in range(tasks):
                    nursery.start_soon(worker, redis, t)

        await sequential()  # warm-up: connection, allocator, caches
        await measure("sequential SET (1 per round trip)", n, "round trip", sequential)
        await measure("pipelined SET (100 per pipeline)", n * 10, "command", pipelined)
        await measure("100 tasks, pool of 32", n, "command", concurrent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="SETs per sequential run")
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        trio.run(bench, server.url, args.n)
    finally:
        server.close()


if __name__ == "__main__":
    main()
