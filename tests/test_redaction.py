"""A credential a job opened appears nowhere the job writes.

Outputs, node records, events, the result, the error and its traceback, the
log, the prediction's answer and every raw Redis key of the queue hold
``[credential NAME redacted]`` where the value was.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import orjson
import pytest
import trio

from flowqd import Executor, NodeContext, NodeError
from flowqd.jobs import JobStatus
from tests import test_worker
from tests.api.conftest import open_api
from tests.api.sse import parse_sse
from tests.flows.httpserver import Request, open_http_server, send_json
from tests.test_worker_limits import raw_values

broker_kind = test_worker.broker_kind
harness_factory = test_worker.harness_factory

SECRET = "sk-proj-Zq81xT0kens_redact-me-9f8e7d6c"
MARK = "[credential openai redacted]"


@attrs.frozen
class LeakyParams:
    fail: bool = False


async def _leaky(ctx: NodeContext) -> Any:
    key = await ctx.credential("openai")
    ctx.emit("token", f"using {key}")
    ctx.emit("progress", {key: [key]})
    if ctx.params.fail:
        raise NodeError(f"upstream said: Incorrect API key provided: {key!r}")
    return {"said": f"key={key}", key: 1}


LEAKY = Executor(
    type="leaky",
    params=LeakyParams,
    run=_leaky,
    description="puts the credential it opens everywhere it can",
)


def leaky_flow(fail: bool) -> dict[str, Any]:
    return {
        "id": "leaky",
        "output": "out",
        "nodes": [
            {"id": "l", "type": "leaky", "params": {"fail": fail}},
            {"id": "out", "type": "echo", "inputs": {"text": "l"}},
        ],
    }


def everything(*parts: Any) -> str:
    return orjson.dumps(parts, default=repr).decode()


async def test_a_plugin_output_and_its_events_are_redacted(
    harness_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(20):
        async with harness_factory(executors=[LEAKY], credentials={"openai": SECRET}) as h:
            await h.flows.put(leaky_flow(fail=False))
            [job_id] = await h.enqueue("leaky")
            job = await h.wait_terminal(job_id)
            assert job.status == JobStatus.COMPLETED
            assert job.result == {"said": f"key={MARK}", MARK: 1}
            events = await h.broker.jobs.read_events(job_id)
            by_name = {e.name: e.data for e in events}
            assert by_name["token"] == f"using {MARK}"
            assert by_name["progress"] == {MARK: [MARK]}
            # The downstream node's input is the redacted output too.
            assert job.nodes[1]["input"] == {"text": job.result}
            written = everything(job.result, job.nodes, [(e.name, e.data) for e in events])
            assert SECRET not in written and MARK in written
    assert SECRET not in caplog.text


async def test_a_failing_node_error_and_traceback_are_redacted(
    harness_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(20):
        async with harness_factory(executors=[LEAKY], credentials={"openai": SECRET}) as h:
            await h.flows.put(leaky_flow(fail=True))
            [job_id] = await h.enqueue("leaky")
            job = await h.wait_terminal(job_id)
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["message"] == f"upstream said: Incorrect API key provided: '{MARK}'"
            assert MARK in job.error["traceback"]
            events = await h.broker.jobs.read_events(job_id)
            written = everything(job.error, job.nodes, [(e.name, e.data) for e in events])
            assert SECRET not in written
    assert SECRET not in caplog.text
    assert MARK in caplog.text  # the failure is logged, redacted


async def _echo_key_with_401(request: Request, stream: trio.SocketStream) -> None:
    # As OpenAI-compatible servers do: the key that was sent, quoted back.
    await send_json(
        stream,
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {request.headers.get('authorization')}"
            }
        },
    )


async def test_an_upstream_echoing_the_key_leaks_it_nowhere(
    redis_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        async with (
            open_http_server(_echo_key_with_401) as upstream,
            open_api(f"queue.name={queue_name}", environ={"REDIS_URL": redis_url}, flows=[]) as api,
        ):
            stored = await api.client.put("/api/v1/credentials/openai", json={"value": SECRET})
            assert stored.status_code == 204
            flow = {
                "id": "call",
                "output": "h",
                "nodes": [
                    {
                        "id": "h",
                        "type": "http",
                        "params": {"url": f"{upstream.url}/v1/models", "credential": "openai"},
                    }
                ],
            }
            put = await api.client.put("/api/v1/flows/call", json=flow)
            assert put.status_code in (200, 201), put.text
            answer = await api.client.post("/api/v1/prediction/call", json={"question": "q"})
            assert answer.status_code == 500
            assert MARK in answer.json()["message"]
            assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"
            job_id = answer.json()["jobId"]
            job = await api.client.get(f"/api/v1/jobs/{job_id}")
            events = await api.client.get(f"/api/v1/jobs/{job_id}/events")
            parse_sse(events.content)
            for body in (answer.text, job.text, events.text):
                assert SECRET not in body
            assert MARK in job.json()["error"]["message"]
            raw = await raw_values(api.config)
            assert any(job_id.encode() in key for key in raw)
            assert not [
                key
                for key, values in raw.items()
                if any(SECRET.encode() in value for value in values)
            ]
    assert SECRET not in caplog.text


CUT_SECRET = "Zq81xT0kens9f8e7d6c5b4a3-cut-me"


async def _echo_key_many_times(request: Request, stream: trio.SocketStream) -> None:
    # Quoted over and over: the node's 300-character excerpt of the answer ends
    # inside one copy, leaving a piece of the key no whole-value redaction finds.
    said = f"{request.headers.get('authorization')} " * 30
    await send_json(stream, 401, {"error": {"message": f"Incorrect API key provided: {said}"}})


@pytest.mark.parametrize("node_type", ["http", "llm"])
async def test_a_key_cut_short_in_an_error_excerpt_leaks_no_piece(
    node_type: str, redis_url: str, queue_name: str
) -> None:
    with trio.fail_after(30):
        async with (
            open_http_server(_echo_key_many_times) as upstream,
            open_api(f"queue.name={queue_name}", environ={"REDIS_URL": redis_url}, flows=[]) as api,
        ):
            stored = await api.client.put("/api/v1/credentials/openai", json={"value": CUT_SECRET})
            assert stored.status_code == 204
            params: dict[str, Any] = (
                {"url": f"{upstream.url}/v1/models", "credential": "openai"}
                if node_type == "http"
                else {"base_url": f"{upstream.url}/v1", "model": "m", "credential": "openai"}
            )
            node: dict[str, Any] = {"id": "n", "type": node_type, "params": params}
            if node_type == "llm":
                node["inputs"] = {"prompt": "$question"}
            put = await api.client.put(
                "/api/v1/flows/cut", json={"id": "cut", "output": "n", "nodes": [node]}
            )
            assert put.status_code in (200, 201), put.text
            answer = await api.client.post("/api/v1/prediction/cut", json={"question": "q"})
            assert answer.status_code == 500
            message = answer.json()["message"]
            assert "redacted]" in message  # the mark itself may be cut
            # Not even the key's first characters survive the cut.
            assert CUT_SECRET[:4] not in message
            job = await api.client.get(f"/api/v1/jobs/{answer.json()['jobId']}")
            assert CUT_SECRET[:4] not in job.text
