"""The worker's line per job transition, read from a real ``--role all`` process.

A prediction that succeeds, a job that fails, is retried and fails for good,
and a job cancelled while it runs: each transition is one info line with the
job's facts as fields (JSON), or as ``key=value`` pairs after the message (text).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import poll

FLOWS: dict[str, dict[str, Any]] = {
    "greet": {"nodes": [{"id": "say", "type": "echo"}], "output": "say"},
    # The question is a string, not an object: the node fails on every attempt.
    "broken": {
        "nodes": [{"id": "render", "type": "template", "params": {"template": "{question[nope]}"}}],
        "output": "render",
    },
    "slow": {"nodes": [{"id": "wait", "type": "delay", "params": {"ms": 60000}}], "output": "wait"},
}


async def _traffic(daemon: Daemon) -> dict[str, str]:
    """The ids of a succeeded prediction, a job failed twice and a cancelled job."""
    async with httpx.AsyncClient(base_url=daemon.api, timeout=10) as client:
        for flow_id, doc in FLOWS.items():
            put = await client.put(f"/api/v1/flows/{flow_id}", json=doc)
            assert put.status_code == 200, put.text
        answer = await client.post("/api/v1/prediction/greet", json={"question": "hi"})
        assert answer.status_code == 200, answer.text
        ids = {"greet": answer.headers["X-Flowqd-Job-Id"]}
        for flow_id, extra in (("broken", {"max_attempts": 2}), ("slow", {})):
            queued = await client.post(
                "/api/v1/jobs", json={"flow": flow_id, "inputs": {"question": "q"}, **extra}
            )
            assert queued.status_code == 202, queued.text
            ids[flow_id] = queued.json()["id"]
        await daemon.wait_for_log(f"job {ids['slow']} claimed")
        cancel = await client.post(f"/api/v1/jobs/{ids['slow']}/cancel")
        assert cancel.status_code in (200, 202), cancel.text

        async def ended() -> bool:
            states = [
                (await client.get(f"/api/v1/jobs/{i}")).json()["status"] for i in ids.values()
            ]
            return states == ["completed", "failed", "cancelled"]

        await poll(ended)
    await daemon.wait_for_log(f"job {ids['slow']} cancelled")
    return ids


def _start(redis_url: str, queue_name: str, log_format: str) -> Any:
    env = {"REDIS_URL": redis_url, "QUEUE_NAME": queue_name, "FLOWQD_LOG__FORMAT": log_format}
    return start_daemon(["--role", "all", "--set", "queue.backoff_s=0.05"], env=env)


def _transitions(records: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("job_id") == job_id and r["logger"] == "flowqd.worker"]


async def test_json_lines_carry_each_transition_with_the_jobs_fields(
    redis_url: str, queue_name: str
) -> None:
    with trio.fail_after(60):
        async with _start(redis_url, queue_name, "json") as daemon:
            ids = await _traffic(daemon)
    records = [json.loads(line) for line in daemon.log if line.strip()]
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record
    worker = {r["worker"] for r in records if "worker" in r}
    assert len(worker) == 1, worker

    def said(job: str) -> list[tuple[str, int, bool]]:
        return [
            (r["msg"].split(" ", 2)[2].split(" ")[0], r["attempt"], "duration_ms" in r)
            for r in _transitions(records, ids[job])
            if r["level"] == "info"
        ]

    assert said("greet") == [("claimed", 1, False), ("succeeded", 1, True)]
    assert said("broken") == [
        ("claimed", 1, False),
        ("failed", 1, True),
        ("claimed", 2, False),
        ("failed", 2, True),
    ]
    assert said("slow") == [("claimed", 1, False), ("cancelled", 1, True)]
    retried, final = (r for r in _transitions(records, ids["broken"]) if "duration_ms" in r)
    assert "in node render" in retried["msg"] and "retried in 0.05s to 0.0625s" in retried["msg"]
    assert retried["retry_in_s"] == 0.05
    assert "no retry" in final["msg"] and "retry_in_s" not in final
    for record in _transitions(records, ids["greet"]):
        assert record["flow"] == "greet" and record["queue"] == queue_name, record


async def test_text_lines_say_the_same_facts(redis_url: str, queue_name: str) -> None:
    with trio.fail_after(60):
        async with _start(redis_url, queue_name, "text") as daemon:
            ids = await _traffic(daemon)
    text = daemon.text()
    for job, said in (("greet", "succeeded"), ("broken", "failed"), ("slow", "cancelled")):
        lines = [line for line in text.splitlines() if f"job {ids[job]} {said}" in line]
        assert lines, text[-3000:]
        assert f" job_id={ids[job]} flow={job} queue={queue_name} " in lines[-1]
        assert " attempt=" in lines[-1] and " duration_ms=" in lines[-1]
