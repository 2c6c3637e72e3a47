"""Branches and tools in one flow (parts d and e, merged): a tool is called from the
branch taken only, is never a skipped node, and the two fields refuse each other."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from flowqd import Executor, NodeContext
from flowqd.flows import compile_flow
from tests.flows.test_branches import flow, problems, route, run
from tests.flows.test_runner import Recorder


@attrs.frozen
class NoParams:
    pass


async def _ask_weather(ctx: NodeContext) -> Any:
    """Calls its one tool with the city named in its input."""
    return await ctx.call_tool("weather", {"city": ctx.inputs["city"]})


@pytest.fixture
def kinds(executors: dict[str, Executor]) -> dict[str, Executor]:
    asker = Executor(type="asker", params=NoParams, run=_ask_weather, description="calls weather")
    return {**executors, "asker": asker}


WEATHER = {
    "id": "weather",
    "type": "template",
    "params": {"template": "sunny in {city}"},
    "tool": {
        "description": "Today's weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def asker(node_id: str, outcome: str | list[str]) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "asker",
        "tools": ["weather"],
        "inputs": {"city": "$question"},
        "when": {"route": outcome},
    }


DOCUMENT = flow(
    route(),
    WEATHER,
    asker("billing_desk", "billing"),
    asker("other_desk", ["refund", "other"]),
    output=["billing_desk", "other_desk"],
)


async def test_the_branch_taken_calls_the_tool_and_the_tool_is_never_skipped(
    kinds: dict[str, Executor],
) -> None:
    compiled = compile_flow(DOCUMENT, kinds)
    assert [n.id for n in compiled.nodes] == ["route", "billing_desk", "other_desk"]
    recorder = Recorder()
    result = await run(compiled, recorder, "Paris")
    assert result.output == "sunny in Paris"
    records = [(r["nodeId"], r["status"], r.get("calledBy")) for r in result.nodes]
    assert records == [
        ("route", "FINISHED", None),
        ("billing_desk", "SKIPPED", None),
        ("weather", "FINISHED", "other_desk"),
        ("other_desk", "FINISHED", None),
    ]
    assert ("node_skipped", "weather") not in recorder.names()


def test_a_tool_node_takes_no_when_and_no_when_output_or_input_names_one(
    kinds: dict[str, Executor],
) -> None:
    document = flow(
        route(),
        {**WEATHER, "when": {"route": "billing"}},
        {**asker("desk", "billing"), "when": {"route": "other", "weather": "x"}},
        {"id": "fallback", "type": "echo", "when": {"route": "billing"}},
        output=["desk", "weather", "fallback"],
    )
    found = dict(problems(document, kinds))
    assert "remove when" in found["$.nodes[1].when"]
    assert "is a tool" in found["$.nodes[2].when.weather"]
    assert "is a tool" in found["$.output[1]"]
