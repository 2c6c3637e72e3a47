"""A flow with branches through the API, on the embedded broker and on Redis.

Flowise lists the nodes that ran only: skipped nodes are in the job's records
and events, never in ``agentFlowExecutedData`` or the Flowise stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from flowqd.api.flowise import Chat, StreamTranslator, frame
from flowqd.config import PluginsConfig
from flowqd.flows import compile_flow
from flowqd.jobs import Event
from flowqd.plugins import collect_executors, load_plugins
from tests.api.conftest import FLOWS, TEST_EXECUTORS, Api, open_api
from tests.api.sse import parse_sse
from tests.api.test_predictions import parse_flowise_stream

HELPDESK: dict[str, Any] = {
    "id": "helpdesk",
    "nodes": [
        {
            "id": "route",
            "type": "condition",
            "label": "Route",
            "params": {"cases": [{"name": "billing", "regex": "(?i)bill"}], "default": "other"},
        },
        {
            "id": "bill",
            "type": "template",
            "label": "Billing",
            "params": {"template": "Billing: {question}"},
            "when": {"route": "billing"},
        },
        {"id": "chat", "type": "tokens", "label": "LLM", "when": {"route": "other"}},
    ],
    "output": ["bill", "chat"],
}


@pytest.fixture(params=["memory", "redis"])
def broker_env(request: pytest.FixtureRequest) -> dict[str, str] | None:
    if request.param == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    return {"REDIS_URL": url, "QUEUE_NAME": request.getfixturevalue("queue_name")}


@asynccontextmanager
async def helpdesk(environ: dict[str, str] | None) -> AsyncIterator[Api]:
    async with open_api(environ=environ, flows=[*FLOWS, HELPDESK]) as api:
        yield api


async def test_json_answer_lists_the_nodes_that_ran_and_the_job_records_the_skipped(
    broker_env: dict[str, str] | None,
) -> None:
    with trio.fail_after(30):
        async with helpdesk(broker_env) as api:
            answer = await api.client.post(
                "/api/v1/prediction/helpdesk", json={"question": "my bill"}
            )
            assert answer.status_code == 200
            body = answer.json()
            assert body["text"] == "Billing: my bill"
            executed = body["agentFlowExecutedData"]
            assert [(e["nodeId"], e["status"]) for e in executed] == [
                ("route", "FINISHED"),
                ("bill", "FINISHED"),
            ]
            assert executed[0]["data"]["output"] == {"content": "billing"}
            job_id = body["executionId"]
            job = (await api.client.get(f"/api/v1/jobs/{job_id}")).json()
            [skipped] = [n for n in job["nodes"] if n["status"] == "SKIPPED"]
            assert (skipped["nodeId"], skipped["reason"]) == ("chat", "route chose 'billing'")
            events, _ = parse_sse((await api.client.get(f"/api/v1/jobs/{job_id}/events")).content)
            names = [
                (e.name, e.data.get("node") if isinstance(e.data, dict) else None) for e in events
            ]
            assert ("node_skipped", "chat") in names
            assert names.index(("node_skipped", "chat")) < names.index(("node_start", "bill"))


async def test_stream_gives_the_branch_taken_as_the_answer_without_skipped_nodes(
    broker_env: dict[str, str] | None,
) -> None:
    with trio.fail_after(30):
        async with helpdesk(broker_env) as api:
            streamed = await api.client.post(
                "/api/v1/prediction/helpdesk", json={"question": "hi", "streaming": True}
            )
            events = parse_flowise_stream(streamed.content)
            assert [d for n, d in events if n == "token"] == ["Hel", "lo ", "hi"]
            assert "node_skipped" not in [n for n, _d in events]
            progress = [(d["nodeId"], d["status"]) for n, d in events if n == "nextAgentFlow"]
            assert progress == [
                ("route", "INPROGRESS"),
                ("route", "FINISHED"),
                ("chat", "INPROGRESS"),
                ("chat", "FINISHED"),
            ]
            last = [d for n, d in events if n == "agentFlowExecutedData"][-1]
            assert [e["nodeId"] for e in last] == ["route", "chat"]
            assert events[-1] == ("end", "[DONE]")
            billing = parse_flowise_stream(
                (
                    await api.client.post(
                        "/api/v1/prediction/helpdesk",
                        json={"question": "a bill", "streaming": True},
                    )
                ).content
            )
            assert [d for n, d in billing if n == "token"] == ["Billing: a bill"]


def test_an_answer_node_that_ended_before_the_ones_ahead_of_it_were_skipped_is_sent_whole() -> None:
    """Output ``[a, b]``: b ends first, then a is skipped; b's text is then the answer."""
    executors = collect_executors(load_plugins(PluginsConfig(disable=["example"])))
    executors.update({e.type: e for e in TEST_EXECUTORS})
    flow = compile_flow(
        {
            "id": "f",
            "nodes": [
                {
                    "id": "r",
                    "type": "condition",
                    "params": {"cases": [{"name": "x", "equals": 1}], "default": "y"},
                },
                {"id": "a", "type": "echo", "when": {"r": "x"}},
                {"id": "b", "type": "tokens"},
            ],
            "output": ["a", "b"],
        },
        executors,
    )
    translator = StreamTranslator(flow, Chat.new("q", None, None, "e"))
    sent: list[bytes] = []
    for n, (name, data) in enumerate(
        [
            ("node_start", {"node": "r", "type": "condition", "label": "r"}),
            ("node_start", {"node": "b", "type": "tokens", "label": "b"}),
            ("token", "Hel"),  # b is not the answer yet: a may run
            (
                "node_end",
                {
                    "node": "b",
                    "type": "tokens",
                    "label": "b",
                    "status": "FINISHED",
                    "output": "Hello q",
                },
            ),
            (
                "node_end",
                {
                    "node": "r",
                    "type": "condition",
                    "label": "r",
                    "status": "FINISHED",
                    "output": "y",
                },
            ),
            ("node_skipped", {"node": "a", "type": "echo", "label": "a", "reason": "r chose 'y'"}),
        ]
    ):
        sent += translator.translate(Event(f"1-{n}", name, data))
    tokens = [f for f in sent if f.startswith(b'message:\ndata:{"event":"token"')]
    assert tokens == [frame("token", "Hello q")]
