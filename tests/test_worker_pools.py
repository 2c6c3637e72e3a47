"""Two queues, two worker processes, real Redis: a worker only ever runs its queues' jobs.

A main process takes the jobs over HTTP and routes each to its flow's queue;
one worker takes the default queue, the other (``--queues``) the second one.
Every job records the worker that ran it.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import trio

from flowqd.config import load_config
from flowqd.jobs import Job, JobStatus
from flowqd.queue import Brokers, open_brokers
from tests.daemonproc import Daemon, start_daemon
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

ECHO = {"nodes": [{"id": "e", "type": "echo"}], "output": "e"}


def worker_id(daemon: Daemon) -> str:
    [found] = re.findall(r"worker (\S+) taking jobs", daemon.text())
    return str(found)


async def finished(brokers: Brokers, queue: str, job_id: str) -> Job:
    jobs = brokers[queue].jobs
    async with jobs.open_event_watch(job_id) as batches:
        async for _ in batches:
            pass
    job = await jobs.get_job(job_id)
    assert job is not None
    return job


async def test_each_worker_runs_only_its_queues_jobs(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    bulk = f"{queue_name}-bulk"
    config_file = tmp_path / "flowqd.toml"
    config_file.write_text(f'[queues."{bulk}"]\nmax_attempts = 2\n')
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    config = load_config(config_file=str(config_file), environ=env)
    common = ["--config", str(config_file)]
    with trio.fail_after(90):
        async with (
            open_brokers(config) as brokers,
            start_daemon(["--role", "main", *common], env=env) as main,
            start_daemon(["--role", "worker", *common], env=env) as w_default,
            start_daemon(["--role", "worker", "--queues", bulk, *common], env=env) as w_bulk,
            httpx.AsyncClient(base_url=main.api, timeout=10) as http,
        ):
            async with trio.open_nursery() as nursery:
                for broker in brokers.by_queue.values():
                    await nursery.start(broker.run)
                for flow, queue in (("echo", None), ("bulk-echo", bulk)):
                    document = ECHO if queue is None else {**ECHO, "queue": queue}
                    put = await http.put(f"/api/v1/flows/{flow}", json=document)
                    assert put.status_code == 200, put.text
                body = {
                    "jobs": [
                        {"flow": flow, "inputs": {"question": f"{flow}-{n}"}}
                        for n in range(40)
                        for flow in ("echo", "bulk-echo")
                    ]
                }
                answer = await http.post("/api/v1/jobs", json=body)
                assert answer.status_code == 202, answer.text
                ids = [j["id"] for j in answer.json()["jobs"]]
                default_ids, bulk_ids = ids[0::2], ids[1::2]
                default_jobs = [await finished(brokers, queue_name, i) for i in default_ids]
                bulk_jobs = [await finished(brokers, bulk, i) for i in bulk_ids]
                nursery.cancel_scope.cancel()
            assert all(j.status == JobStatus.COMPLETED for j in default_jobs + bulk_jobs)
            assert {j.worker for j in default_jobs} == {worker_id(w_default)}
            assert {j.worker for j in bulk_jobs} == {worker_id(w_bulk)}
            assert {j.max_attempts for j in bulk_jobs} == {2}  # [queues.NAME] applied
            assert [j.result for j in bulk_jobs] == [f"bulk-echo-{n}" for n in range(40)]
            shown = (await http.get("/api/v1/queues")).json()["queues"]
            counts = {q["name"]: q["counts"]["completed"] for q in shown}
            assert counts == {queue_name: 40, bulk: 40}


async def test_a_worker_with_two_pools_reports_each_queue(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    bulk = f"{queue_name}-bulk"
    config_file = tmp_path / "flowqd.toml"
    config_file.write_text(f'[queues."{bulk}"]\n')
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    args = ["--role", "worker", "--config", str(config_file), "--queues", f"{queue_name}:3,{bulk}"]
    with trio.fail_after(60):
        async with (
            start_daemon([*args, "--set", "worker.concurrency=4"], env=env) as worker,
            httpx.AsyncClient(base_url=worker.health, timeout=10) as http,
        ):
            assert worker.endpoints["queues"] == f"{queue_name},{bulk}"
            await worker.wait_for_log(
                f"queue {queue_name} (concurrency 3), queue {bulk} (concurrency 1)"
            )
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            queues = ready.json()["queues"]
            assert list(queues) == [queue_name, bulk]
            assert all(q["ready"] for q in queues.values())
            ids = set(re.findall(r"worker (\S+) taking jobs", worker.text()))
            assert {q["worker"] for q in queues.values()} == ids and len(ids) == 2
            metrics = (await http.get("/metrics")).text
            assert f'flowqd_worker_pool_slots{{queue="{bulk}"}} 1' in metrics
