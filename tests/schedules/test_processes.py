"""A schedule in a flows.paths file, fired by two real main processes on one Redis:
each tick is exactly one job (claimed by one main, none missing), run by a worker."""

from __future__ import annotations

import itertools
import re
import signal
from pathlib import Path

import orjson
import pytest
import trio

from flowqd.config import load_config
from flowqd.jobs import JobStatus
from flowqd.queue import open_broker
from tests.daemonproc import Daemon, start_daemon
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

FLOW = {
    "id": "tick",
    "nodes": [{"id": "e", "type": "echo", "inputs": {"q": "$question"}}],
    "output": "e",
    "schedules": [{"id": "every-second", "interval_s": 1, "inputs": {"question": "t"}}],
}
FIRED = re.compile(r"schedule every-second fired job sched:every-second:(\d+)")
TICKS = 6


def fired(daemon: Daemon) -> list[int]:
    return [int(m.group(1)) for m in FIRED.finditer(daemon.text())]


async def logged_by_either(daemons: tuple[Daemon, ...], text: str) -> None:
    async with trio.open_nursery() as nursery:

        async def wait(daemon: Daemon) -> None:
            await daemon.wait_for_log(text, 10)
            nursery.cancel_scope.cancel()

        for daemon in daemons:
            nursery.start_soon(wait, daemon)


async def test_two_mains_fire_each_tick_once(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "tick.json").write_bytes(orjson.dumps(FLOW))
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    main = ["--role", "main", "--set", f'flows.paths=["{flows}"]']
    config = load_config(environ=env)
    with trio.fail_after(90):
        async with (
            open_broker(config) as broker,
            trio.open_nursery() as nursery,
            start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)) as worker,
            start_daemon(main, env=env, cwd=str(tmp_path)) as one,
            start_daemon(main, env=env, cwd=str(tmp_path)) as two,
        ):
            await nursery.start(broker.run)  # event watches need its reader
            # The next TICKS ticks once both mains run: each must be fired by one of them.
            entry = await broker.schedules.get_schedule("every-second")
            assert entry is not None and entry.due_ms is not None
            for n in range(TICKS):
                await logged_by_either((one, two), f"sched:every-second:{entry.due_ms + n * 1000}")
            for daemon in (one, two):
                daemon.signal(signal.SIGTERM)
            assert await one.wait(20) == 0 and await two.wait(20) == 0
            by_one, by_two = fired(one), fired(two)
            ticks = sorted(by_one + by_two)
            # No tick claimed by both mains, none twice, none missing in between.
            assert len(ticks) == len(set(ticks)), (by_one, by_two)
            assert all(b - a == 1000 for a, b in itertools.pairwise(ticks)), ticks
            assert "schedule every-second loaded" in one.text() + two.text()
            # Every tick is one job, and the worker ran each.
            ids = {f"sched:every-second:{t}" for t in ticks}
            for job_id in ids:
                with trio.fail_after(20):
                    async with broker.jobs.open_event_watch(job_id) as batches:
                        async for _ in batches:
                            pass
                job = await broker.jobs.get_job(job_id)
                assert job is not None and job.status == JobStatus.COMPLETED
                assert job.result == "t" and job.flow_id == "tick"
            completed = await broker.jobs.list_jobs(JobStatus.COMPLETED, limit=1000)
            assert {j.id for j in completed} == ids
            worker.signal(signal.SIGTERM)
            assert await worker.wait(20) == 0
            nursery.cancel_scope.cancel()
