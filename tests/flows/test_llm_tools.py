"""The llm node calling tool nodes, and token usage, against a scripted OpenAI-compatible server."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing

from flowqd import Executor, FlowValidationError, NodeContext, NodeError
from flowqd.flows import NodeFailed, compile_flow
from flowqd.testing import run_executor, run_flow_document
from tests.flows.httpserver import (
    Server,
    open_http_server,
    scripted_llm,
    text_answer,
    tool_calls_answer,
)

WEATHER_TOOL = {
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@attrs.frozen
class NoParams:
    pass


async def refuse(ctx: NodeContext) -> Any:
    raise NodeError(f"no forecast for {ctx.inputs.get('city')!r}")


async def spend(ctx: NodeContext) -> Any:
    ctx.record_usage(input_tokens=5, output_tokens=2)
    ctx.record_usage(1, 1, 3)
    return {"spent": True}


async def leak(ctx: NodeContext) -> Any:
    return f"the key is {await ctx.credential('weather-key')}"


def with_test_executors(executors: dict[str, Executor]) -> dict[str, Executor]:
    """The built-ins and plugin executors: one that fails, one that records usage, one
    that returns a credential."""
    return {
        **executors,
        "refuse": Executor("refuse", NoParams, refuse, "always fails"),
        "spend": Executor("spend", NoParams, spend, "records usage"),
        "leak": Executor("leak", NoParams, leak, "returns a credential"),
    }


def flow(url: str, tools: list[str], **llm: Any) -> dict[str, Any]:
    tool = copy.deepcopy(WEATHER_TOOL)
    return {
        "id": "assist",
        "nodes": [
            {
                "id": "weather",
                "type": "template",
                "label": "Weather",
                "tool": tool,
                "params": {"template": "sunny in {city}"},
            },
            {"id": "forecast", "type": "refuse", "tool": copy.deepcopy(tool)},
            {
                "id": "answer",
                "type": "llm",
                "tools": tools,
                "inputs": {"prompt": "$question"},
                "params": {"base_url": f"{url}/v1", "model": "test-model", **llm},
            },
        ],
        "output": "answer",
    }


def sent(server: Server, index: int) -> list[dict[str, Any]]:
    """The messages of the ``index``-th request."""
    messages: list[dict[str, Any]] = server.requests[index].json()["messages"]
    return messages


def tool_messages(server: Server, index: int) -> list[tuple[str, Any]]:
    return [(m["tool_call_id"], m["content"]) for m in sent(server, index) if m["role"] == "tool"]


async def test_one_tool_call_runs_the_tool_node_and_sends_its_output_back(
    executors: dict[str, Executor],
) -> None:
    llm = scripted_llm(
        tool_calls_answer(("call_a", "weather", ['{"ci', 'ty": "Par', 'is"}'])),
        text_answer(["It is ", "sunny."]),
    )
    with trio.fail_after(10):
        async with open_http_server(llm) as server:
            result, events = await run_flow_document(
                flow(server.url, ["weather"]),
                "Weather in Paris?",
                executors=with_test_executors(executors),
            )
    assert result.output == "It is sunny."
    first = server.requests[0].json()
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city",
                "parameters": WEATHER_TOOL["parameters"],
            },
        }
    ]
    assert sent(server, 1)[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny in Paris"},
    ]
    assert [(n, d.get("node"), d.get("calledBy")) for n, d in events if n != "token"] == [
        ("node_start", "answer", None),
        ("node_start", "weather", "answer"),
        ("node_end", "weather", "answer"),
        ("node_end", "answer", None),
    ]
    assert [d for n, d in events if n == "token"] == ["It is ", "sunny."]
    call, answer = result.nodes
    assert call["nodeId"] == "weather" and call["calledBy"] == "answer"
    assert call["status"] == "FINISHED" and call["input"] == {"city": "Paris"}
    assert call["output"] == "sunny in Paris" and call["previousNodeIds"] == ["answer"]
    assert answer["nodeId"] == "answer" and answer["output"] == "It is sunny."


async def test_two_calls_in_one_round_run_in_order(executors: dict[str, Executor]) -> None:
    llm = scripted_llm(
        tool_calls_answer(
            ("c1", "weather", ['{"city": "Paris"}']), ("c2", "weather", ['{"city": ', '"Rome"}'])
        ),
        text_answer(["Both sunny."]),
    )
    with trio.fail_after(10):
        async with open_http_server(llm) as server:
            result, events = await run_flow_document(
                flow(server.url, ["weather"]),
                "Paris and Rome?",
                executors=with_test_executors(executors),
            )
    assert result.output == "Both sunny."
    assert tool_messages(server, 1) == [("c1", "sunny in Paris"), ("c2", "sunny in Rome")]
    assert [r["input"] for r in result.nodes if r["nodeId"] == "weather"] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    calls = [(n, d["node"]) for n, d in events if n != "token" and d.get("calledBy")]
    assert calls == [("node_start", "weather"), ("node_end", "weather")] * 2


async def test_a_failing_tool_is_reported_to_the_model_which_recovers(
    executors: dict[str, Executor],
) -> None:
    llm = scripted_llm(
        tool_calls_answer(("c1", "forecast", ['{"city": "Oslo"}'])),
        text_answer(["No forecast, sorry."]),
    )
    with trio.fail_after(10):
        async with open_http_server(llm) as server:
            result, events = await run_flow_document(
                flow(server.url, ["forecast"]), "Oslo?", executors=with_test_executors(executors)
            )
    assert result.output == "No forecast, sorry."
    [(call_id, content)] = tool_messages(server, 1)
    assert call_id == "c1"
    assert orjson.loads(content) == {"error": "tool 'forecast' failed: no forecast for 'Oslo'"}
    call = result.nodes[0]
    assert call["nodeId"] == "forecast" and call["status"] == "ERROR"
    assert call["error"] == "no forecast for 'Oslo'" and call["output"] is None
    [end] = [d for n, d in events if n == "node_end" and d["node"] == "forecast"]
    assert end["status"] == "ERROR" and end["calledBy"] == "answer"


async def test_unknown_tools_and_bad_arguments_go_back_as_errors_without_a_run(
    executors: dict[str, Executor],
) -> None:
    llm = scripted_llm(
        tool_calls_answer(
            ("c1", "stocks", ['{"symbol": "X"}']),
            ("c2", "weather", ['{"city": Paris}']),
            ("c3", "weather", ['["Paris"]']),
        ),
        text_answer(["I could not look that up."]),
    )
    with trio.fail_after(10):
        async with open_http_server(llm) as server:
            result, _events = await run_flow_document(
                flow(server.url, ["weather"]), "?", executors=with_test_executors(executors)
            )
    assert result.output == "I could not look that up."
    errors = [(i, orjson.loads(c)["error"]) for i, c in tool_messages(server, 1)]
    assert errors == [
        ("c1", "there is no tool 'stocks'; the tools are: weather"),
        ("c2", "the arguments of 'weather' are not JSON: '{\"city\": Paris}'"),
        ("c3", "the arguments of 'weather' must be a JSON object, got [\"Paris\"]"),
    ]
    assert [r["nodeId"] for r in result.nodes] == ["answer"]  # nothing ran


async def test_asking_past_max_tool_rounds_fails_the_node(executors: dict[str, Executor]) -> None:
    ask = tool_calls_answer(("c", "weather", ['{"city": "Paris"}']))
    with trio.fail_after(10):
        async with open_http_server(scripted_llm(ask, ask, ask)) as server:
            with pytest.raises(NodeFailed) as info:
                await run_flow_document(
                    flow(server.url, ["weather"], max_tool_rounds=2),
                    "?",
                    executors=with_test_executors(executors),
                )
    assert info.value.node_id == "answer"
    assert info.value.message == (
        "the model asked for tools after 2 rounds of tool calls, the most "
        "params.max_tool_rounds allows; raise it, or make the tools answer in fewer "
        "(last asked: 'weather')"
    )
    assert len(server.requests) == 3
    assert [r["nodeId"] for r in info.value.nodes] == ["weather", "weather", "answer"]


async def test_usage_is_summed_over_rounds_and_recorded(executors: dict[str, Executor]) -> None:
    llm = scripted_llm(
        tool_calls_answer(("c", "weather", ['{"city": "Paris"}']), usage=(100, 20)),
        text_answer(["Sunny."], usage=(130, 5)),
    )
    with trio.fail_after(10):
        async with open_http_server(llm) as server:
            result, events = await run_flow_document(
                flow(server.url, ["weather"]), "?", executors=with_test_executors(executors)
            )
    assert server.requests[0].json()["stream_options"] == {"include_usage": True}
    usage = {"input_tokens": 230, "output_tokens": 25, "total_tokens": 255}
    assert result.nodes[-1]["usage"] == usage
    assert "usage" not in result.nodes[0]  # the template tool recorded none
    [end] = [d for n, d in events if n == "node_end" and d["node"] == "answer"]
    assert end["usage"] == usage


async def test_a_whole_completion_with_tool_calls_and_usage(
    executors: dict[str, Executor],
) -> None:
    def whole(message: dict[str, Any], reason: str, usage: tuple[int, int]) -> dict[str, Any]:
        return {
            "choices": [{"index": 0, "message": message, "finish_reason": reason}],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        }

    call = {
        "id": "w1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Lima"}'},
    }
    llm = scripted_llm(
        whole({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls", (10, 3)),
        whole({"role": "assistant", "content": "Warm."}, "stop", (20, 2)),
    )
    with trio.fail_after(10):
        async with open_http_server(llm) as server:
            result, events = await run_flow_document(
                flow(server.url, ["weather"], stream_usage=False),
                "?",
                executors=with_test_executors(executors),
            )
    assert "stream_options" not in server.requests[0].json()
    assert result.output == "Warm." and [d for n, d in events if n == "token"] == ["Warm."]
    assert tool_messages(server, 1) == [("w1", "sunny in Lima")]
    assert result.nodes[-1]["usage"] == {
        "input_tokens": 30,
        "output_tokens": 5,
        "total_tokens": 35,
    }


async def test_record_usage_from_a_plugin_executor(executors: dict[str, Executor]) -> None:
    document = {
        "id": "f",
        "nodes": [{"id": "s", "type": "spend"}],
        "output": "s",
    }
    result, events = await run_flow_document(document, executors=with_test_executors(executors))
    usage = {"input_tokens": 6, "output_tokens": 3, "total_tokens": 10}
    assert result.nodes[0]["usage"] == usage and events[-1][1]["usage"] == usage
    with pytest.raises(ValueError, match="input_tokens must be an integer >= 0, got -1"):
        await run_executor(Executor("bad", NoParams, _bad_usage, "x"))


async def _bad_usage(ctx: NodeContext) -> None:
    ctx.record_usage(-1)


async def test_a_node_offered_no_tools_cannot_call_one(executors: dict[str, Executor]) -> None:
    async def caller(ctx: NodeContext) -> Any:
        return await ctx.call_tool("weather", {"city": "Paris"})

    with pytest.raises(NodeError, match="offered no tools"):
        await run_executor(Executor("caller", NoParams, caller, "x"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["nodes"][2]["inputs"].update(prompt="weather"),
            [
                (
                    "$.nodes[2].inputs.prompt",
                    "node 'weather' is a tool: it runs only when a node offered it calls it, "
                    "so it has no output here; read the output of the node that calls it",
                )
            ],
        ),
        (
            lambda d: d.update(output="weather"),
            [
                (
                    "$.output",
                    "node 'weather' is a tool: it runs only when a node offered it calls it, "
                    "so it has no output here; read the output of the node that calls it",
                )
            ],
        ),
        (
            lambda d: d["nodes"][2].update(tools=["weather", "nope", "answer", "weather"]),
            [
                (
                    "$.nodes[2].tools[1]",
                    "unknown node 'nope'; nodes: weather, forecast, answer "
                    "(job inputs start with $)",
                ),
                (
                    "$.nodes[2].tools[2]",
                    "node 'answer' is not a tool: give it a \"tool\" field with a "
                    "description and parameters",
                ),
                ("$.nodes[2].tools[3]", "tool 'weather' is listed twice"),
            ],
        ),
        (
            lambda d: d["nodes"][0].update(
                inputs={"city": "$question"},
                tools=["forecast"],
                tool={"description": " ", "parameters": {"type": "array"}, "x": 1},
            ),
            [
                (
                    "$.nodes[0].inputs",
                    "a tool node takes its inputs from the arguments the model sends "
                    "(tool.parameters), not from inputs; remove inputs",
                ),
                ("$.nodes[0].tools", "a tool node cannot offer tools itself; remove tools"),
                ("$.nodes[0].tool.x", "unknown key; known keys: description, parameters"),
                (
                    "$.nodes[0].tool.description",
                    "missing or empty: say what the tool does, the model reads it to "
                    "choose (got ' ')",
                ),
                (
                    "$.nodes[0].tool.parameters",
                    'expected a JSON schema of an object, {"type": "object", '
                    "\"properties\": {...}}, got {'type': 'array'}",
                ),
            ],
        ),
        (
            # The template reads {city}: the tool's parameters must offer it.
            lambda d: d["nodes"][0]["tool"].update(parameters={"type": "object"}),
            [
                (
                    "$.nodes[0].params.template",
                    "placeholder {city} has no value: a template reads this node's inputs "
                    "(none) and the job inputs question, overrideConfig, history, chatId, "
                    "sessionId; "
                    'to read another job input add "city": "$city" to the node\'s inputs',
                )
            ],
        ),
        (
            lambda d: d["nodes"][2]["params"].update(max_tool_rounds=0),
            [("$.nodes[2].params.max_tool_rounds", "must be >= 1: 0")],
        ),
    ],
    ids=[
        "tool-as-input",
        "tool-as-output",
        "bad-tools-list",
        "bad-tool-node",
        "tool-check",
        "rounds",
    ],
)
def test_validation_names_the_path_of_each_tool_problem(
    executors: dict[str, Executor], change: Any, expected: list[tuple[str, str]]
) -> None:
    document = flow("http://127.0.0.1:9", ["weather"])
    change(document)
    with pytest.raises(FlowValidationError) as info:
        compile_flow(document, with_test_executors(executors))
    assert sorted(info.value.problems) == sorted(expected)


def test_tool_nodes_are_compiled_apart_from_the_graph(executors: dict[str, Executor]) -> None:
    compiled = compile_flow(
        flow("http://127.0.0.1:9", ["weather", "forecast"]), with_test_executors(executors)
    )
    assert [n.id for n in compiled.nodes] == ["answer"]
    assert sorted(compiled.tools) == ["forecast", "weather"]
    [answer] = compiled.nodes
    assert [t.name for t in answer.tools] == ["weather", "forecast"]
    assert answer.tools[0].description == "The weather in a city"


@pytest.mark.parametrize("doc", ["README.md", "docs/plugins.md"])
def test_the_documented_tool_flows_are_valid(executors: dict[str, Executor], doc: str) -> None:
    text = (Path(__file__).resolve().parents[2] / doc).read_text()
    examples = [
        orjson.loads(block)
        for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)
        if '"tool"' in block
    ]
    assert len(examples) == 1
    compiled = compile_flow(examples[0], executors)
    assert [t.name for t in compiled.nodes[0].tools] == ["weather"]


async def test_a_tool_runs_with_its_timeout_and_redaction(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    document = flow("", ["slow", "leaky"])
    document["nodes"][:2] = [
        {
            "id": "slow",
            "type": "delay",
            "params": {"ms": 60_000},
            "timeout_s": 2,
            "tool": WEATHER_TOOL,
        },
        {"id": "leaky", "type": "leak", "tool": WEATHER_TOOL},
    ]
    llm = scripted_llm(
        tool_calls_answer(("c1", "slow", ['{"city": "A"}']), ("c2", "leaky", ['{"city": "B"}'])),
        text_answer(["Done."]),
    )
    async with open_http_server(llm) as server:
        document["nodes"][2]["params"]["base_url"] = f"{server.url}/v1"
        result, _events = await run_flow_document(
            document,
            "?",
            executors=with_test_executors(executors),
            credentials={"weather-key": "wk-secret"},
        )
    slow, leaky, _answer = result.nodes
    assert slow["status"] == "ERROR" and slow["error"] == (
        "timed out after 2 s (the tool node's timeout_s); raise timeout_s or make the tool faster"
    )
    assert leaky["output"] == "the key is [credential weather-key redacted]"
    assert tool_messages(server, 1) == [
        ("c1", orjson.dumps({"error": f"tool 'slow' failed: {slow['error']}"}).decode()),
        ("c2", "the key is [credential weather-key redacted]"),
    ]
    assert "wk-secret" not in repr(server.requests[1].body)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'data: {"choices":[{"index":0,"delta":{"tool_calls":"weather"}}]}\n\n',
            "sent a malformed stream: tool_calls in",
        ),
        (
            b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"function":{}}]}}]}\n\n',
            'sent a malformed tool call: {"function":{}}',
        ),
        (
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
            b"data: [DONE]\n\n",
            "ended with finish_reason tool_calls but sent no calls",
        ),
        (
            tool_calls_answer(*[(f"c{i}", "weather", ["{}"]) for i in range(17)]),
            "the model asked for more than 16 tool calls at once",
        ),
    ],
    ids=["not-a-list", "no-index", "no-calls", "too-many"],
)
async def test_malformed_tool_calls_fail_the_node(
    executors: dict[str, Executor], raw: bytes, message: str
) -> None:
    with trio.fail_after(10):
        async with open_http_server(scripted_llm(raw)) as server:
            with pytest.raises(NodeFailed) as info:
                await run_flow_document(
                    flow(server.url, ["weather"]), "?", executors=with_test_executors(executors)
                )
    assert message in info.value.message


async def test_a_malformed_usage_is_left_out_not_fatal(executors: dict[str, Executor]) -> None:
    odd = b'data: {"choices": [], "usage": {"prompt_tokens": "many"}}\n\n'
    answer = text_answer(["Fine."]).replace(b"data: [DONE]", odd + b"data: [DONE]")
    with trio.fail_after(10):
        async with open_http_server(scripted_llm(answer)) as server:
            result, _events = await run_flow_document(
                flow(server.url, ["weather"]), "?", executors=with_test_executors(executors)
            )
    assert result.output == "Fine." and "usage" not in result.nodes[-1]


async def test_call_tool_from_a_plugin_checks_its_arguments(
    executors: dict[str, Executor],
) -> None:
    async def ask(ctx: NodeContext) -> Any:
        answers = [await ctx.call_tool("weather", {"city": "Oslo"})]
        for arguments in ({"city": {1, 2}}, ["Oslo"]):
            try:
                await ctx.call_tool("weather", arguments)  # type: ignore[arg-type]
            except NodeError as exc:
                answers.append(str(exc))
        return answers

    document = flow("http://127.0.0.1:9", ["weather"])
    document["nodes"][2] = {"id": "answer", "type": "ask", "tools": ["weather"]}
    result, _events = await run_flow_document(
        document,
        executors={**with_test_executors(executors), "ask": Executor("ask", NoParams, ask, "x")},
    )
    assert result.output[0] == "sunny in Oslo"
    assert result.output[1].startswith("the arguments of tool 'weather' are not JSON: ")
    assert result.output[2] == "the arguments of tool 'weather' must be an object, got ['Oslo']"
    assert [r["nodeId"] for r in result.nodes] == ["weather", "answer"]
