"""kill -9 of a worker holding 50 running jobs while a second worker runs.

Flowise/BullMQ: a crashed worker's jobs sit in ``active`` for 30-60 s, and a
client waiting on one has no deadline. Here: the jobs are back within lock TTL
+ stalled interval, run once more on the live worker, end with one outcome and
one terminal event each, the dead worker's late finish is refused, and every
waiting HTTP client gets its answer.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from flowqd.jobs import Event, JobStatus, Outcome, OutcomeKind
from tests.daemonproc import start_daemon
from tests.faults.helpers import (
    Observer,
    assert_no_crash,
    delay_flow,
    event_ms,
    gather,
    open_observer,
    poll,
    redis_env,
    settings,
    terminal_count,
    worker_id,
    write_flows,
)
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

JOBS = 50
DELAY_MS = 4000
LOCK_TTL_S = 1.0
STALLED_S = 0.5
MARGIN_S = 5.0
WORKER = [
    "--role",
    "worker",
    *settings(worker__lock_ttl_s=LOCK_TTL_S, worker__stalled_interval_s=STALLED_S),
]


async def active_on(observer: Observer, worker: str, n: int) -> bool:
    active = await observer.broker.jobs.list_jobs(JobStatus.ACTIVE, limit=1000)
    return sum(j.worker == worker for j in active) >= n


async def test_kill_9_jobs_finish_once_on_the_other_worker_and_clients_get_answers(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = redis_env(redis_server.url, queue_name)
    flows = write_flows(tmp_path / "flows", [delay_flow("wait", DELAY_MS)])
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    with trio.fail_after(90):
        async with (
            open_observer(redis_server.url, queue_name) as observer,
            start_daemon(
                ["--role", "main", *settings(flows__paths=flows, server__prediction_timeout_s=60)],
                env=env,
                cwd=str(tmp_path),
            ) as main,
            httpx.AsyncClient(base_url=main.api, timeout=80) as client,
        ):
            async with (
                trio.open_nursery() as clients,
                start_daemon(WORKER, env=env, cwd=str(tmp_path)) as doomed,
            ):
                doomed_id = worker_id(doomed)

                async def predict(i: int) -> None:
                    response = await client.post(
                        "/api/v1/prediction/wait", json={"question": f"q{i}"}
                    )
                    answers[f"q{i}"] = (response.status_code, response.json())

                for i in range(JOBS):
                    clients.start_soon(predict, i)
                with trio.fail_after(20):
                    await poll(lambda: active_on(observer, doomed_id, JOBS))
                ids = [
                    j.id for j in await observer.broker.jobs.list_jobs(JobStatus.ACTIVE, limit=1000)
                ]
                assert len(ids) == JOBS
                await gather(lambda i: observer.wait_event(i, "node_start"), ids)
                tokens = await gather(observer.token, ids)
                assert all(tokens)
                dead_tokens = {i: str(t) for i, t in zip(ids, tokens, strict=True)}
                async with start_daemon(WORKER, env=env, cwd=str(tmp_path)) as rescuer:
                    rescuer_id = worker_id(rescuer)
                    # Still running on the doomed worker when it dies.
                    assert await active_on(observer, doomed_id, JOBS)
                    killed_at = time.time()
                    doomed.signal(signal.SIGKILL)
                    assert await doomed.wait(5) == -signal.SIGKILL
                    restarts = await gather(lambda i: nth_started(observer, i, 2), ids)
                    # The dead worker's token, once the job is another's: refused.
                    late = [
                        Outcome(i, dead_tokens[i], OutcomeKind.COMPLETED, result="late")
                        for i in ids
                    ]
                    assert await observer.broker.work.flush([], late) == [False] * JOBS
                    jobs = await observer.all_finished(ids)
                    finished_at = time.time()
                    assert_no_crash(main, rescuer)
                    # The live worker ran the stalled check: it says which jobs it took back.
                    for job_id in ids:
                        await rescuer.wait_for_log(f"job {job_id} stalled", 5)
                    stalled = [line for line in rescuer.log if " stalled (" in line]
            # Every client's request has returned (the nursery waited for them).
            events = await gather(observer.events, ids)
            where = await gather(observer.in_finished_sets, ids)
    back = [event_ms(e) / 1000 - killed_at for e in restarts]
    print(
        f"\nkill -9 with {JOBS} running jobs: back in the queue and restarted "
        f"{min(back):.2f}-{max(back):.2f}s after the kill, all finished "
        f"{finished_at - killed_at:.2f}s after (delay {DELAY_MS / 1000:g}s, "
        f"lock ttl {LOCK_TTL_S:g}s, stalled interval {STALLED_S:g}s)"
    )
    assert max(back) < LOCK_TTL_S + STALLED_S + MARGIN_S
    assert finished_at - killed_at < LOCK_TTL_S + STALLED_S + DELAY_MS / 1000 + MARGIN_S
    assert all(e.data["worker"] == rescuer_id for e in restarts)
    assert all(j.status == JobStatus.COMPLETED for j in jobs), [j.status for j in jobs]
    assert all(j.worker == rescuer_id for j in jobs)
    assert all(j.attempts == 2 for j in jobs)  # the stall counted once
    assert all(j.result == j.inputs["question"] for j in jobs)  # not the refused "late"
    assert where == [["completed"]] * JOBS  # one outcome each
    for job_events in events:
        names = [e.name for e in job_events]
        assert terminal_count(job_events) == 1, names
        assert names.count("started") == 2, names
    assert len(stalled) == JOBS, stalled
    assert all("stalled=requeued" in line and f"queue={queue_name}" in line for line in stalled)
    assert sorted(answers) == sorted(f"q{i}" for i in range(JOBS))
    for question, (status, body) in answers.items():
        assert status == 200, body
        assert body["text"] == question


async def nth_started(observer: Observer, job_id: str, n: int) -> Event:
    """The job's ``n``-th ``started`` event, once written."""
    seen = 0
    async with observer.broker.jobs.open_event_watch(job_id) as batches:
        async for batch in batches:
            for event in batch:
                if event.name == "started":
                    seen += 1
                    if seen == n:
                        return event
    raise AssertionError(f"job {job_id} ended after {seen} starts, expected {n}")
