"""Tests of the example plugin, written as a plugin author would: flowqd.testing only."""

from __future__ import annotations

import flowqd_example
import pytest

from flowqd import FlowValidationError
from flowqd.testing import NodeFailed, run_executor, run_flow_document

REVERSE = flowqd_example.flowqd_executors()[0]


async def test_reverses_its_input() -> None:
    output, events = await run_executor(REVERSE, {"upper": True}, {"text": "abc"})
    assert output == "CBA"
    assert events == [("progress", {"chars": 3})]


async def test_bad_params_are_refused() -> None:
    with pytest.raises(FlowValidationError) as info:
        await run_executor(REVERSE, {"upper": "yes"}, {"text": "abc"})
    assert info.value.problems == [("$.params.upper", "expected true or false, got 'yes'")]


async def test_in_a_flow() -> None:
    flow = {
        "id": "rev",
        "nodes": [{"id": "r", "type": "reverse", "inputs": {"text": "$question"}}],
        "output": "r",
    }
    result, _events = await run_flow_document(flow, "hello", plugins=[flowqd_example])
    assert result.output == "olleh"
    with pytest.raises(NodeFailed, match="reverse needs text"):
        await run_flow_document(flow, 42, plugins=[flowqd_example])
