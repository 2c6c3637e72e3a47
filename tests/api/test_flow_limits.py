"""PUT /api/v1/flows: big flows are refused by flows.max_nodes; validation time is not a broker
outage."""

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
            message = ("the flow has 10000 nodes, over flows.max_nodes (1000); "
                       "split it or raise flows.max_nodes")
            assert response.json()["problems"] == [{"path": "$.nodes", "message": message}]
            assert response.json()["message"] == f"invalid flow: $.nodes: {message}"
            assert (await api.client.put("/api/v1/flows/long", json=chain(1000))).status_code \
                == 200
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
    slow = Executor(type="slow_check", params=NoParams, run=_noop, description="slow check",
                    check=_slow_check)
    monkeypatch.setattr(conftest, "TEST_EXECUTORS", [*conftest.TEST_EXECUTORS, slow])
    with trio.fail_after(15):
        async with open_api("server.broker_timeout_s=0.3") as api:
            flow = {"nodes": [{"id": "s", "type": "slow_check"}], "output": "s"}
            response = await api.client.put("/api/v1/flows/slow", json=flow)
            # Inside the broker deadline this was 503 "storing the flow: no answer within 0.3s".
            assert response.status_code == 200, response.text
            assert response.json()["id"] == "slow"
