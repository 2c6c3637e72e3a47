"""FlowStore over a small in-test backend with the broker's four flow methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from flowqd.errors import FlowValidationError
from flowqd.executors.base import Executor
from flowqd.flows import FlowStore


class DictBackend:
    """put_flow/get_flow/list_flows/delete_flow as ``flowqd.queue.base.Broker`` defines them."""

    def __init__(self) -> None:
        self.versions: dict[str, list[bytes]] = {}
        self.current: dict[str, int] = {}
        self.gets = 0

    async def put_flow(self, flow_id: str, document: bytes) -> int:
        self.versions.setdefault(flow_id, []).append(document)
        self.current[flow_id] = len(self.versions[flow_id])
        return self.current[flow_id]

    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        self.gets += 1
        if version is None:
            version = self.current.get(flow_id)
        docs = self.versions.get(flow_id, [])
        if version is None or not 1 <= version <= len(docs):
            return None
        return version, docs[version - 1]

    async def list_flows(self) -> dict[str, int]:
        return dict(self.current)

    async def delete_flow(self, flow_id: str) -> bool:
        return self.current.pop(flow_id, None) is not None


def echo_flow(flow_id: str = "f", label: str = "A") -> dict[str, Any]:
    return {"id": flow_id, "nodes": [{"id": "a", "type": "echo", "label": label}], "output": "a"}


async def test_versions_are_immutable_and_cached(executors: dict[str, Executor]) -> None:
    backend = DictBackend()
    store = FlowStore(backend, executors)
    assert await store.put(echo_flow()) == ("f", 1)
    assert await store.put(dict(reversed(echo_flow().items()))) == ("f", 1)  # same document
    assert await store.put(echo_flow(label="B")) == ("f", 2)
    assert await store.current_version("f") == 2
    assert await store.list() == {"f": 2}

    v1 = await store.get("f", 1)
    assert v1 is not None and v1.version == 1 and v1.nodes[0].label == "A"
    gets = backend.gets
    assert await store.get("f", 1) is v1
    assert backend.gets == gets  # a known version never goes back to the backend
    current = await store.get("f")
    assert current is not None and current.version == 2 and current.nodes[0].label == "B"

    assert await store.delete("f") is True
    assert await store.get("f") is None
    assert await store.current_version("f") is None
    assert await store.get("f", 1) is v1  # queued jobs still run their version
    assert await store.delete("f") is False
    assert await store.get("nope") is None


async def test_put_validates_first(executors: dict[str, Executor]) -> None:
    backend = DictBackend()
    store = FlowStore(backend, executors)
    with pytest.raises(FlowValidationError) as info:
        await store.put({"id": "f", "nodes": [{"id": "a", "type": "nope"}], "output": "a"})
    assert info.value.problems[0][0] == "$.nodes[0].type"
    assert backend.versions == {}


async def test_stored_documents_compile_in_a_fresh_store(executors: dict[str, Executor]) -> None:
    backend = DictBackend()
    await FlowStore(backend, executors).put(echo_flow())
    flow = await FlowStore(backend, executors).get("f")
    assert flow is not None and flow.version == 1 and flow.document == echo_flow()
    assert orjson.loads(backend.versions["f"][0]) == echo_flow()


async def test_load_paths(tmp_path: Path, executors: dict[str, Executor]) -> None:
    (tmp_path / "one.json").write_bytes(orjson.dumps(echo_flow("one")))
    (tmp_path / "two.toml").write_text(
        'id = "two"\noutput = "a"\n[[nodes]]\nid = "a"\ntype = "echo"\n'
    )
    (tmp_path / "notes.txt").write_text("ignored")
    backend = DictBackend()
    store = FlowStore(backend, executors)
    assert await store.load_paths([str(tmp_path)]) == [("one", 1), ("two", 1)]
    assert await store.load_paths([str(tmp_path)]) == [("one", 1), ("two", 1)]  # unchanged
    (tmp_path / "one.json").write_bytes(orjson.dumps(echo_flow("one", label="changed")))
    assert await store.load_paths([str(tmp_path)]) == [("one", 2), ("two", 1)]


async def test_load_paths_names_every_bad_file(
    tmp_path: Path, executors: dict[str, Executor]
) -> None:
    (tmp_path / "a_good.json").write_bytes(orjson.dumps(echo_flow("good")))
    (tmp_path / "b_bad.json").write_bytes(
        orjson.dumps({"id": "bad", "nodes": [{"id": "a", "type": "nope"}], "output": "a"})
    )
    (tmp_path / "c_broken.json").write_text("{")
    (tmp_path / "d_dup.json").write_bytes(orjson.dumps(echo_flow("good")))
    backend = DictBackend()
    store = FlowStore(backend, executors)
    with pytest.raises(FlowValidationError) as info:
        await store.load_paths([str(tmp_path), str(tmp_path / "missing")])
    problems = info.value.problems
    assert [p for p, _m in problems] == [
        str(tmp_path / "missing"),
        f"{tmp_path / 'b_bad.json'}: $.nodes[0].type",
        str(tmp_path / "c_broken.json"),
        f"{tmp_path / 'd_dup.json'}: $.id",
    ]
    assert problems[0][1] == "flows.paths: no such folder or file"
    assert problems[3][1] == f"flow id 'good' also defined in {tmp_path / 'a_good.json'}"
    assert backend.versions == {}  # nothing stored when anything is wrong


async def test_flows_paths_follow_flows_max_nodes(
    tmp_path: Path, executors: dict[str, Executor]
) -> None:
    nodes = [{"id": f"n{i}", "type": "echo"} for i in range(4)]
    (tmp_path / "big.json").write_bytes(orjson.dumps({"id": "big", "nodes": nodes, "output": "n0"}))
    backend = DictBackend()
    with pytest.raises(FlowValidationError) as info:
        await FlowStore(backend, executors, max_nodes=3).load_paths([str(tmp_path)])
    assert info.value.problems == [
        (
            f"{tmp_path / 'big.json'}: $.nodes",
            "the flow has 4 nodes, over flows.max_nodes (3); split it or raise flows.max_nodes",
        )
    ]
    with pytest.raises(FlowValidationError):
        await FlowStore(backend, executors, max_nodes=3).put(
            orjson.loads((tmp_path / "big.json").read_bytes())
        )
    assert backend.versions == {}
    assert await FlowStore(backend, executors, max_nodes=4).load_paths([str(tmp_path)]) == [
        ("big", 1)
    ]


class SlowBackend(DictBackend):
    """get_flow waits for ``opened``: calls that arrive meanwhile overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = trio.Event()

    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        await self.opened.wait()
        return await super().get_flow(flow_id, version)


async def test_a_burst_of_gets_of_one_version_costs_one_backend_call(
    executors: dict[str, Executor],
) -> None:
    backend = SlowBackend()
    backend.opened.set()
    await FlowStore(backend, executors).put(echo_flow())
    backend.opened = trio.Event()
    store = FlowStore(backend, executors)  # a worker's: nothing cached yet
    assert store.cached("f", 1) is None
    backend.gets = 0
    found: list[Any] = []

    async def get() -> None:
        found.append(await store.get("f", 1))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(get)
            await trio.testing.wait_all_tasks_blocked()
            backend.opened.set()
    assert backend.gets == 1
    assert len(found) == 20 and all(flow is found[0] for flow in found)
    assert found[0].version == 1
    # From then on without an await: the worker's path for every job.
    assert store.cached("f", 1) is found[0]
    assert backend.gets == 1
