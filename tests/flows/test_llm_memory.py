"""The llm node's ``params.memory`` and ``ctx.history`` as executors (and their tests)
see it, against the small OpenAI-compatible server on loopback."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from flowqd import Executor, NodeContext, NodeError
from flowqd.errors import FlowValidationError
from flowqd.flows import NodeFailed, compile_flow
from flowqd.testing import run_executor, run_flow_document
from tests.flows.httpserver import open_http_server, streaming_llm

STORED = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
    {"role": "assistant", "content": "a2"},
    {"role": "user", "content": "q3"},
    {"role": "assistant", "content": "a3"},
]


def params(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": f"{url}/v1", "model": "test-model", **extra}


async def test_memory_sends_the_last_turns_between_messages_and_prompt(
    executors: dict[str, Executor],
) -> None:
    with trio.fail_after(10):
        async with open_http_server(streaming_llm(["ok"])) as server:
            output, _ = await run_executor(
                executors["llm"],
                params(
                    server.url,
                    system="Be brief.",
                    messages=[{"role": "user", "content": "You are a bot."}],
                    memory={"turns": 2},
                ),
                {"prompt": "q4"},
                flow_inputs={"sessionId": "s1"},
                history=STORED,
            )
    assert output == "ok"
    assert server.requests[0].json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "You are a bot."},
        *STORED[2:],
        {"role": "user", "content": "q4"},
    ]


async def test_without_memory_nothing_of_the_conversation_is_sent(
    executors: dict[str, Executor],
) -> None:
    request = [{"role": "userMessage", "content": "earlier"}]
    with trio.fail_after(10):
        async with open_http_server(streaming_llm(["ok"])) as server:
            await run_executor(
                executors["llm"],
                params(server.url),
                {"prompt": "q4"},
                flow_inputs={"sessionId": "s1", "history": request},
                history=STORED,
            )
    assert server.requests[0].json()["messages"] == [{"role": "user", "content": "q4"}]


async def test_request_history_goes_first_as_flowise_prepends_it(
    executors: dict[str, Executor],
) -> None:
    document = {
        "id": "chat",
        "nodes": [
            {
                "id": "answer",
                "type": "llm",
                "inputs": {"prompt": "$question"},
                "params": {"base_url": "", "model": "m", "memory": {"turns": 1}},
            }
        ],
        "output": "answer",
    }
    request = [
        {"role": "userMessage", "content": "from the client"},
        {"role": "apiMessage", "content": "its answer"},
    ]
    with trio.fail_after(10):
        async with open_http_server(streaming_llm(["ok"])) as server:
            document["nodes"][0]["params"]["base_url"] = f"{server.url}/v1"  # type: ignore[index]
            result, _ = await run_flow_document(
                document,
                "q4",
                inputs={"sessionId": "s1", "history": request},
                executors=executors,
                history=STORED,
            )
    assert result.output == "ok"
    assert server.requests[0].json()["messages"] == [
        {"role": "user", "content": "from the client"},
        {"role": "assistant", "content": "its answer"},
        *STORED[-2:],
        {"role": "user", "content": "q4"},
    ]


async def test_a_malformed_request_history_fails_the_node_naming_the_entry(
    executors: dict[str, Executor],
) -> None:
    with trio.fail_after(10), pytest.raises(NodeError, match=r"\$\.history\[1\]"):
        await run_executor(
            executors["llm"],
            params("http://127.0.0.1:9", memory={"turns": 3}),
            {"prompt": "q"},
            flow_inputs={"history": [{"role": "userMessage", "content": "a"}, {"role": "bot"}]},
        )


@pytest.mark.parametrize(
    ("memory", "path"),
    [
        ({"turns": 0}, "$.nodes[0].params.memory.turns"),
        ({"turns": "ten"}, "$.nodes[0].params.memory.turns"),
        ({"window": 3}, "$.nodes[0].params.memory.window"),
    ],
)
def test_memory_is_validated_with_its_path(
    executors: dict[str, Executor], memory: dict[str, Any], path: str
) -> None:
    document = {
        "id": "chat",
        "nodes": [
            {
                "id": "answer",
                "type": "llm",
                "inputs": {"prompt": "$question"},
                "params": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "memory": memory},
            }
        ],
        "output": "answer",
    }
    with pytest.raises(FlowValidationError) as caught:
        compile_flow(document, executors)
    assert [p for p, _ in caught.value.problems] == [path], caught.value.problems


@attrs.frozen
class RecallParams:
    turns: int | None = None


async def _recall(ctx: NodeContext) -> Any:
    return {"session": ctx.session_id, "history": await ctx.history(turns=ctx.params.turns)}


RECALL = Executor(type="recall", params=RecallParams, run=_recall, description="ctx.history")


async def test_a_plugin_reads_the_history_a_test_gives() -> None:
    with trio.fail_after(10):
        output, _ = await run_executor(
            RECALL, {"turns": 1}, flow_inputs={"chatId": "c1"}, history=STORED
        )
        assert output == {"session": "c1", "history": STORED[-2:]}
        output, _ = await run_executor(RECALL, {}, history=STORED)
        assert output == {"session": None, "history": STORED}
        output, _ = await run_executor(RECALL, {"turns": 0}, history=STORED)
        assert output["history"] == []
        output, _ = await run_executor(RECALL)  # no conversation at all
        assert output["history"] == []
        with pytest.raises(ValueError, match="turns must be an integer >= 0"):
            await run_executor(RECALL, {"turns": -1}, history=STORED)
        with pytest.raises(ValueError, match=r"history\[0\]"):
            await run_executor(RECALL, history=[{"role": "userMessage", "content": "x"}])


async def test_a_failed_history_read_fails_the_flow(executors: dict[str, Executor]) -> None:
    document = {"id": "r", "nodes": [{"id": "r", "type": "recall"}], "output": "r"}
    with trio.fail_after(10), pytest.raises(NodeFailed, match=r"\$\.history\[0\]"):
        await run_flow_document(
            document,
            "q",
            inputs={"history": ["just text"]},
            executors={**executors, "recall": RECALL},
        )
