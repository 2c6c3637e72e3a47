"""PUT /api/v1/flows: what registration refuses (flows.max_nodes, template placeholders and
widths), and validation time is not a broker outage."""

from __future__ import annotations

import time
from collections.abc import Iterator, Set
from typing import Any

import pytest
import trio

from flowqd import Executor
from tests.api import conftest
from tests.api.conftest import NoParams, open_api


def chain(length: int) -> dict[str, Any]:
    nodes = [{"id": "n0", "type": "echo", "inputs": {"x": "$question"}}]
    nodes += [
        {"id": f"n{i}", "type": "echo", "inputs": {"x": f"n{i - 1}"}} for i in range(1, length)
    ]
    return {"nodes": nodes, "output": f"n{length - 1}"}


async def test_a_flow_over_flows_max_nodes_is_422_naming_the_key() -> None:
    # Before: 30 s of ordering on the main's only thread, then 503 "no answer within 1s".
    with trio.fail_after(30):
        async with open_api() as api:
            response = await api.client.put("/api/v1/flows/long", json=chain(10_000))
            assert response.status_code == 422, response.text
            message = (
                "the flow has 10000 nodes, over flows.max_nodes (1000); "
                "split it or raise flows.max_nodes"
            )
            assert response.json()["problems"] == [{"path": "$.nodes", "message": message}]
            assert response.json()["message"] == f"invalid flow: $.nodes: {message}"
            assert (await api.client.put("/api/v1/flows/long", json=chain(1000))).status_code == 200
        async with open_api("flows.max_nodes=10") as api:
            response = await api.client.put("/api/v1/flows/long", json=chain(11))
            assert "over flows.max_nodes (10)" in response.json()["problems"][0]["message"]


def _slow_check(_params: Any, _inputs: Set[str]) -> Iterator[tuple[str, str]]:
    time.sleep(0.5)  # stands for validation CPU: it holds the main's thread just the same
    return iter(())


async def _noop(_ctx: Any) -> None:
    return None


async def test_slow_validation_is_not_reported_as_a_slow_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow = Executor(
        type="slow_check", params=NoParams, run=_noop, description="slow check", check=_slow_check
    )
    monkeypatch.setattr(conftest, "TEST_EXECUTORS", [*conftest.TEST_EXECUTORS, slow])
    with trio.fail_after(15):
        async with open_api("server.broker_timeout_s=0.3") as api:
            flow = {"nodes": [{"id": "s", "type": "slow_check"}], "output": "s"}
            response = await api.client.put("/api/v1/flows/slow", json=flow)
            # Inside the broker deadline this was 503 "storing the flow: no answer within 0.3s".
            assert response.status_code == 200, response.text
            assert response.json()["id"] == "slow"


async def test_template_placeholders_and_widths_are_checked_at_put() -> None:
    # Before: both were stored; {nme} failed every job, the width made a 200 MB output.
    with trio.fail_after(15):
        async with open_api() as api:
            flow = {
                "nodes": [
                    {
                        "id": "t",
                        "type": "template",
                        "inputs": {"name": "$name"},
                        "params": {"template": "Hi {nme}, {question:>200000000}"},
                    }
                ],
                "output": "t",
            }
            response = await api.client.put("/api/v1/flows/typo", json=flow)
            assert response.status_code == 422, response.text
            assert response.json()["problems"] == [
                {
                    "path": "$.nodes[0].params.template",
                    "message": "placeholder {question:>200000000} asks for a width or precision "
                    "of 200000000; at most 10000 is allowed",
                },
                {
                    "path": "$.nodes[0].params.template",
                    "message": "placeholder {nme} has no value: a template reads this node's "
                    "inputs (name) and the job inputs question, overrideConfig, "
                    "history, chatId, sessionId; to read another job input add "
                    '"nme": "$nme" to the node\'s inputs',
                },
            ]
            assert (await api.client.get("/api/v1/flows/typo")).status_code == 404
