"""An llm node calling a tool through the API and a worker: the call's record, usage in
the job JSON, and Flowise's usageMetadata in the JSON answer and the stream."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.api.conftest import FLOWS, open_api
from tests.api.test_predictions import parse_flowise_stream
from tests.flows.httpserver import open_http_server, scripted_llm, text_answer, tool_calls_answer


def assistant(url: str) -> dict[str, Any]:
    return {
        "id": "assistant",
        "nodes": [
            {
                "id": "weather",
                "type": "template",
                "label": "Weather",
                "tool": {
                    "description": "The weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
                "params": {"template": "sunny in {city}"},
            },
            {
                "id": "answer",
                "type": "llm",
                "label": "LLM",
                "tools": ["weather"],
                "inputs": {"prompt": "$question"},
                "params": {"base_url": f"{url}/v1", "model": "test-model"},
            },
        ],
        "output": "answer",
    }


def one_call() -> list[bytes]:
    """A tool call, then an answer: the requests of one prediction."""
    return [
        tool_calls_answer(("c1", "weather", ['{"city":', ' "Paris"}']), usage=(40, 10)),
        text_answer(["Sunny", " in Paris."], usage=(60, 4)),
    ]


USAGE = {"input_tokens": 100, "output_tokens": 14, "total_tokens": 114}


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_tool_call_and_usage_in_the_job_and_the_flowise_answers(
    broker: str, request: pytest.FixtureRequest
) -> None:
    environ = None
    if broker == "redis":  # records go through Redis and back
        url, queue = request.getfixturevalue("redis_url"), request.getfixturevalue("queue_name")
        environ = {"REDIS_URL": url, "QUEUE_NAME": queue}
    with trio.fail_after(30):
        async with (
            open_http_server(scripted_llm(*one_call(), *one_call())) as llm,
            open_api(flows=[*FLOWS, assistant(llm.url)], environ=environ) as api,
        ):
            response = await api.client.post(
                "/api/v1/prediction/assistant", json={"question": "Paris?"}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["text"] == "Sunny in Paris."
            call, answer = body["agentFlowExecutedData"]
            assert call["nodeId"] == "weather" and call["previousNodeIds"] == ["answer"]
            assert call["data"]["input"] == {"city": "Paris"}
            assert call["data"]["output"] == {"content": "sunny in Paris"}
            assert answer["data"]["output"] == {
                "content": "Sunny in Paris.",
                "usageMetadata": USAGE,
            }
            # The tool's result went back to the model.
            assert llm.requests[1].json()["messages"][-1] == {
                "role": "tool",
                "tool_call_id": "c1",
                "content": "sunny in Paris",
            }

            job = (await api.client.get(f"/api/v1/jobs/{body['executionId']}")).json()
            assert job["usage"] == USAGE
            assert [(n["nodeId"], n.get("calledBy")) for n in job["nodes"]] == [
                ("weather", "answer"),
                ("answer", None),
            ]
            assert job["nodes"][1]["usage"] == USAGE

            streamed = await api.client.post(
                "/api/v1/prediction/assistant", json={"question": "Paris?", "streaming": True}
            )
            events = parse_flowise_stream(streamed.content)
            assert "".join(d for n, d in events if n == "token") == "Sunny in Paris."
            assert [d for n, d in events if n == "usageMetadata"] == [USAGE]
            progress = [(d["nodeId"], d["status"]) for n, d in events if n == "nextAgentFlow"]
            assert progress == [
                ("answer", "INPROGRESS"),
                ("weather", "INPROGRESS"),
                ("weather", "FINISHED"),
                ("answer", "FINISHED"),
            ]
            assert events[-1] == ("end", "[DONE]")

            echo = await api.client.post("/api/v1/prediction/echo", json={"question": "x"})
            plain = (await api.client.get(f"/api/v1/jobs/{echo.json()['executionId']}")).json()
            assert plain["usage"] is None  # no node recorded any
