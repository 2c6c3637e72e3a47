"""The Flowise-compatible prediction route: JSON and SSE framing against FLOWISE-WIRE.md."""

from __future__ import annotations

import re
from typing import Any

import orjson
import trio

from tests.api.conftest import FLOWS, open_api, post_and_leave, raw_post
from tests.api.sse import parse_sse

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
FRAME = re.compile(rb"message:\ndata:(.*)\n\n")


def parse_flowise_stream(raw: bytes) -> list[tuple[str, Any]]:
    """Split a Flowise stream into (event, data), checking every byte is framed as Flowise does."""
    events: list[tuple[str, Any]] = []
    position = 0
    for match in FRAME.finditer(raw):
        between = raw[position : match.start()]
        assert between in (b"", *(b":heartbeat\n\n" * n for n in range(1, 100))), between
        body = orjson.loads(match.group(1))
        assert list(body) == ["event", "data"]
        events.append((body["event"], body["data"]))
        position = match.end()
    assert raw[position:] == b"", raw[position:]
    return events


async def test_json_answer_has_flowise_keys_and_node_data() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/prediction/greet",
                json={"question": "hi", "chatId": "c-1", "overrideConfig": {"sessionId": "s-1"}},
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert list(body) == [
                "text",
                "question",
                "chatId",
                "chatMessageId",
                "executionId",
                "sessionId",
                "agentFlowExecutedData",
            ]
            assert body["text"] == "Hello hi"
            assert body["question"] == "hi"
            assert (body["chatId"], body["sessionId"]) == ("c-1", "s-1")
            assert UUID.fullmatch(body["chatMessageId"])
            start, hello = body["agentFlowExecutedData"]
            assert start == {
                "nodeId": "start",
                "nodeLabel": "Start",
                "data": {
                    "id": "start",
                    "name": "echo",
                    "input": {"q": "hi"},
                    "output": {"content": "hi"},
                    "state": {},
                },
                "previousNodeIds": [],
                "status": "FINISHED",
            }
            assert hello["previousNodeIds"] == ["start"]
            assert hello["data"]["output"] == {"content": "Hello hi"}
            # executionId is the job: readable afterwards.
            job = (await api.client.get(f"/api/v1/jobs/{body['executionId']}")).json()
            assert job["status"] == "completed" and job["result"] == "Hello hi"


async def test_chat_id_defaults_to_a_uuid_and_session_to_the_chat() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            # Exactly what the flowise Python SDK sends for a non-streaming prediction.
            body = (
                await api.client.post(
                    "/api/v1/prediction/echo",
                    json={
                        "chatflowId": "echo",
                        "question": "hi",
                        "overrideConfig": None,
                        "chatId": None,
                        "history": [],
                        "uploads": [],
                    },
                )
            ).json()
            assert body["text"] == "hi"
            assert UUID.fullmatch(body["chatId"])
            assert body["sessionId"] == body["chatId"]


async def test_sdk_streaming_probe_is_open_and_true() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.get("/api/v1/chatflows-streaming/echo")
            assert response.status_code == 200 and response.json() == {"isStreaming": True}


async def test_stream_matches_flowise_echo_example_byte_for_byte() -> None:
    """The echo example of FLOWISE-WIRE.md: same events, same order, same framing."""
    with trio.fail_after(15):
        async with open_api() as api:
            async with api.client.stream(
                "POST", "/api/v1/prediction/echo", json={"question": "hi", "streaming": True}
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            events = parse_flowise_stream(raw)
            names = [name for name, _ in events]
            assert names == [
                "agentFlowEvent",
                "nextAgentFlow",
                "token",
                "nextAgentFlow",
                "agentFlowExecutedData",
                "agentFlowEvent",
                "metadata",
                "end",
            ]
            assert raw.startswith(
                b'message:\ndata:{"event":"agentFlowEvent","data":"INPROGRESS"}\n\n'
                b'message:\ndata:{"event":"nextAgentFlow","data":{"nodeId":'
                b'"customFunctionAgentflow_0","nodeLabel":"Echo","status":"INPROGRESS"}}\n\n'
                b'message:\ndata:{"event":"token","data":"hi"}\n\n'
                b'message:\ndata:{"event":"nextAgentFlow","data":{"nodeId":'
                b'"customFunctionAgentflow_0","nodeLabel":"Echo","status":"FINISHED"}}\n\n'
            )
            assert raw.endswith(
                b'message:\ndata:{"event":"agentFlowEvent","data":"FINISHED"}\n\n'
                + b"message:\ndata:"
                + orjson.dumps({"event": "metadata", "data": events[6][1]})
                + b'\n\nmessage:\ndata:{"event":"end","data":"[DONE]"}\n\n'
            )
            [executed] = events[4][1]
            assert executed["nodeId"] == "customFunctionAgentflow_0"
            assert executed["data"]["output"] == {"content": "hi"}
            metadata = events[6][1]
            assert list(metadata) == ["chatId", "chatMessageId", "question", "sessionId"]
            assert metadata["question"] == "hi" and metadata["sessionId"] == metadata["chatId"]


async def test_streamed_tokens_are_not_repeated_as_one_final_token() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/prediction/tokens", json={"question": "you", "streaming": "true"}
            )
            events = parse_flowise_stream(response.content)
            assert [d for n, d in events if n == "token"] == ["Hel", "lo ", "you"]


async def test_failing_job_streams_error_then_end_with_status_200() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/prediction/boom", json={"question": "x", "streaming": True}
            )
            assert response.status_code == 200
            events = parse_flowise_stream(response.content)
            assert events[-3:] == [
                ("nextAgentFlow", {"nodeId": "b", "nodeLabel": "Boom", "status": "ERROR"}),
                ("error", "node 'b' failed: kaput"),
                ("end", "[DONE]"),
            ]


async def test_failing_job_json_is_500_naming_the_node() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post("/api/v1/prediction/boom", json={"question": "x"})
            assert response.status_code == 500
            body = response.json()
            assert body["statusCode"] == 500 and body["success"] is False
            assert body["message"] == "node 'b' failed: kaput" and body["node"] == "b"
            assert body["executionId"] == body["jobId"]


async def test_deadline_answers_504_with_job_id_and_the_job_finishes_later() -> None:
    with trio.fail_after(20):
        async with open_api("server.prediction_timeout_s=0.3") as api:
            response = await api.client.post("/api/v1/prediction/short", json={"question": "q"})
            assert response.status_code == 504
            body = response.json()
            assert body["statusCode"] == 504 and body["success"] is False
            job_id = body["jobId"]
            assert response.headers["location"] == f"/api/v1/jobs/{job_id}"
            assert "server.prediction_timeout_s" in body["message"] and job_id in body["message"]
            # The job goes on: its event stream ends with the result.
            events = await api.client.get(f"/api/v1/jobs/{job_id}/events")
            assert events.text.rstrip().endswith('event: end\ndata: "q"')
            job = (await api.client.get(f"/api/v1/jobs/{job_id}")).json()
            assert job["status"] == "completed" and job["result"] == "q"


async def test_streaming_deadline_ends_with_error_and_end() -> None:
    with trio.fail_after(20):
        async with open_api("server.prediction_timeout_s=0.3") as api:
            response = await api.client.post(
                "/api/v1/prediction/slow", json={"question": "q", "streaming": True}
            )
            events = parse_flowise_stream(response.content)
            assert events[-1] == ("end", "[DONE]")
            name, message = events[-2]
            assert name == "error" and "server.prediction_timeout_s" in message


async def test_heartbeats_between_events() -> None:
    with trio.fail_after(20):
        async with open_api("server.heartbeat_s=0.05") as api:
            response = await api.client.post(
                "/api/v1/prediction/short", json={"question": "q", "streaming": True}
            )
            assert b":heartbeat\n\n" in response.content
            assert parse_flowise_stream(response.content)[-1] == ("end", "[DONE]")


async def test_unknown_flow_is_404_before_any_stream() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            for streaming in (False, True):
                response = await api.client.post(
                    "/api/v1/prediction/nope", json={"question": "q", "streaming": streaming}
                )
                assert response.status_code == 404
                assert response.headers["content-type"] == "application/json"
                body = response.json()
                assert body["statusCode"] == 404 and body["success"] is False
                assert body["message"].startswith("Chatflow nope not found")


async def test_missing_or_empty_question_is_422() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            for body in ({}, {"question": ""}, {"question": "  "}):
                response = await api.client.post("/api/v1/prediction/greet", json=body)
                assert response.status_code == 422, body
                problems = response.json()["problems"]
                assert problems == [{"path": "$.question", "message": problems[0]["message"]}]


async def test_flow_input_not_sent_is_422_naming_it() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post("/api/v1/prediction/topic", json={"question": "q"})
            assert response.status_code == 422
            assert response.json()["problems"][0]["path"] == "$.topic"


async def test_wrong_types_are_422_listing_every_path() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/prediction/echo",
                json={"question": 5, "streaming": "maybe", "overrideConfig": [], "history": {}},
            )
            assert response.status_code == 422
            paths = [p["path"] for p in response.json()["problems"]]
            assert paths == ["$.question", "$.streaming", "$.overrideConfig", "$.history"]


async def test_cancel_on_disconnect_cancels_the_job() -> None:
    with trio.fail_after(20):
        async with open_api("server.cancel_on_disconnect=true") as api:
            await post_and_leave(
                api.url, "/api/v1/prediction/slow", {"question": "q", "streaming": True}
            )
            listing = await _wait_for(api, "cancelled")
            job_ids = [j["id"] for j in listing]
            assert len(job_ids) == 1
            job = (await api.client.get(f"/api/v1/jobs/{job_ids[0]}")).json()
            assert job["status"] == "cancelled"


async def test_without_cancel_on_disconnect_the_job_goes_on() -> None:
    with trio.fail_after(20):
        async with open_api() as api:
            await post_and_leave(
                api.url, "/api/v1/prediction/short", {"question": "q", "streaming": True}
            )
            [job] = await _wait_for(api, "completed")
            assert job["result"] == "q"


async def _wait_for(api: Any, status: str) -> list[dict[str, Any]]:
    # Polled over HTTP: the client has no event to wait on for a job it did
    # not keep the id of. Bounded by the caller's fail_after.
    while True:
        jobs = (await api.client.get("/api/v1/jobs", params={"status": status})).json()["jobs"]
        if jobs:
            return list(jobs)
        await trio.sleep(0.02)


async def test_cancel_on_disconnect_applies_to_waiting_json_predictions() -> None:
    with trio.fail_after(20):
        async with open_api("server.cancel_on_disconnect=true") as api:
            async with raw_post(api.url, "/api/v1/prediction/slow", {"question": "q"}):
                await _wait_for(api, "active")
            [job] = await _wait_for(api, "cancelled")
            assert job["error"]["reason"] == "client disconnected"


# An LLM between a prompt and an output node, as issue 13 found it: the llm's
# tokens and then the output node's text made the answer twice.
CHAIN = {
    "id": "chain",
    "nodes": [
        {
            "id": "prompt",
            "type": "template",
            "label": "Prompt",
            "params": {"template": "Say {q}"},
            "inputs": {"q": "$question"},
        },
        {"id": "llm", "type": "tokens", "label": "LLM", "inputs": {"prompt": "prompt"}},
        {"id": "out", "type": "echo", "label": "Output", "inputs": {"text": "llm"}},
    ],
    "output": "out",
}
# The output node streams, with a side branch that streams too and may run beside it.
SIDE = {
    "id": "side",
    "nodes": [
        {"id": "llm", "type": "tokens", "label": "LLM"},
        {"id": "aside", "type": "tokens", "label": "Aside"},
    ],
    "output": "llm",
}


async def test_stream_tokens_give_the_answer_once_with_node_inputs_filled() -> None:
    with trio.fail_after(15):
        async with open_api(flows=[*FLOWS, CHAIN, SIDE]) as api:
            body = {"question": "you", "overrideConfig": {"sessionId": "s"}}
            answer = (await api.client.post("/api/v1/prediction/chain", json=body)).json()
            assert answer["text"] == "Hello you"
            streamed = await api.client.post(
                "/api/v1/prediction/chain", json={**body, "streaming": True}
            )
            events = parse_flowise_stream(streamed.content)
            # Only the output node's text: it streamed none itself, so it comes as
            # one token (as Flowise sends a Custom Function's), not after the llm's.
            assert [d for n, d in events if n == "token"] == ["Hello you"]
            executed = [d for n, d in events if n == "agentFlowExecutedData"][-1]
            # The same per-node data as the JSON answer, inputs included.
            assert (
                [e["data"]["input"] for e in executed]
                == [e["data"]["input"] for e in answer["agentFlowExecutedData"]]
                == [{"q": "you"}, {"prompt": "Say you"}, {"text": "Hello you"}]
            )
            for _ in range(3):
                side = await api.client.post(
                    "/api/v1/prediction/side", json={"question": "me", "streaming": True}
                )
                tokens = [d for n, d in parse_flowise_stream(side.content) if n == "token"]
                assert "".join(tokens) == "Hello me", tokens
            # The job's own event stream keeps every node's tokens.
            job_id = streamed.headers["x-flowqd-job-id"]
            job_events, _ = parse_sse(
                (await api.client.get(f"/api/v1/jobs/{job_id}/events")).content
            )
            assert [e.data for e in job_events if e.name == "token"] == ["Hel", "lo ", "you"]


async def test_every_prediction_answer_names_its_job_in_a_header() -> None:
    with trio.fail_after(20):
        async with open_api("server.prediction_timeout_s=0.3") as api:
            cases = [
                ("echo", False, 200),
                ("echo", True, 200),
                ("boom", False, 500),
                ("boom", True, 200),
                ("short", False, 504),
                ("short", True, 200),
            ]
            for flow, streaming, status in cases:
                async with api.client.stream(
                    "POST",
                    f"/api/v1/prediction/{flow}",
                    json={"question": "q", "streaming": streaming},
                ) as response:
                    # Streamed: in the headers, before the first event.
                    job_id = response.headers["x-flowqd-job-id"]
                    raw = b"".join([chunk async for chunk in response.aiter_raw()])
                assert response.status_code == status, (flow, streaming)
                job = await api.client.get(f"/api/v1/jobs/{job_id}")
                assert job.status_code == 200 and job.json()["flow_id"] == flow
                if not streaming:
                    assert job_id == orjson.loads(raw).get("executionId", job_id)
            # No job, no header.
            missing = await api.client.post("/api/v1/prediction/nope", json={"question": "q"})
            assert missing.status_code == 404 and "x-flowqd-job-id" not in missing.headers
