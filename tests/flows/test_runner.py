"""The runner: readiness, concurrency, timeouts, failures and cancellation.

Timing tests run on trio's autojump clock: virtual time, no wall-clock sleeps.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from flowqd import Executor, NodeContext, NodeError
from flowqd.config import LimitsConfig
from flowqd.errors import CredentialError
from flowqd.flows import CompiledFlow, NodeFailed, compile_flow, run_flow
from flowqd.testing import run_executor


def delay(node_id: str, ms: int, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "delay", "params": {"ms": ms}, **extra}


class Recorder:
    """An ``emit`` that keeps (virtual time, name, data)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, Any]] = []

    def __call__(self, name: str, data: Any) -> None:
        self.events.append((trio.current_time(), name, data))

    def names(self) -> list[tuple[str, Any]]:
        return [
            (name, data.get("node") if isinstance(data, dict) else data)
            for _t, name, data in self.events
        ]

    def at(self, name: str, node: str) -> float:
        return next(t for t, n, d in self.events if n == name and d["node"] == node)


async def no_credentials(name: str) -> str:
    raise CredentialError(f"credential {name!r} is not stored")


async def run(flow: CompiledFlow, recorder: Recorder, **inputs: Any) -> Any:
    return await run_flow(
        flow, job_id="j1", inputs=inputs, emit=recorder, credential=no_credentials
    )


@attrs.frozen
class NoParams:
    pass


def executor(type_name: str, fn: Any) -> Executor:
    return Executor(type=type_name, params=NoParams, run=fn, description="test")


async def test_chain_events_and_records(executors: dict[str, Executor]) -> None:
    flow = compile_flow(
        {
            "id": "f",
            "nodes": [
                {
                    "id": "prompt",
                    "type": "template",
                    "label": "Prompt",
                    "params": {"template": "Hi {question} ({overrideConfig[lang]})"},
                },
                {"id": "out", "type": "echo", "inputs": {"text": "prompt"}},
            ],
            "output": "out",
        },
        executors,
    )
    recorder = Recorder()
    result = await run(flow, recorder, question="Ann", overrideConfig={"lang": "fr"})
    assert result.output == "Hi Ann (fr)"
    assert [(n, d) for _t, n, d in recorder.events] == [
        ("node_start", {"node": "prompt", "type": "template", "label": "Prompt"}),
        (
            "node_end",
            {
                "node": "prompt",
                "type": "template",
                "label": "Prompt",
                "status": "FINISHED",
                "output": "Hi Ann (fr)",
            },
        ),
        ("node_start", {"node": "out", "type": "echo", "label": "out"}),
        (
            "node_end",
            {
                "node": "out",
                "type": "echo",
                "label": "out",
                "status": "FINISHED",
                "output": "Hi Ann (fr)",
            },
        ),
    ]
    first, second = result.nodes
    assert {k: v for k, v in second.items() if k not in ("startedAt", "finishedAt")} == {
        "nodeId": "out",
        "nodeLabel": "out",
        "type": "echo",
        "status": "FINISHED",
        "input": {"text": "Hi Ann (fr)"},
        "output": "Hi Ann (fr)",
        "previousNodeIds": ["prompt"],
    }
    assert first["previousNodeIds"] == [] and first["input"] == {}
    assert first["startedAt"] <= first["finishedAt"] <= second["startedAt"]


async def test_branches_run_concurrently(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    flow = compile_flow(
        {
            "id": "f",
            "nodes": [
                delay("a", 1000, inputs={"x": "$question"}),
                delay("b", 1000, inputs={"x": "$question"}),
                {
                    "id": "c",
                    "type": "template",
                    "params": {"template": "{x}+{y}"},
                    "inputs": {"x": "a", "y": "b"},
                },
            ],
            "output": "c",
        },
        executors,
    )
    start = trio.current_time()
    recorder = Recorder()
    result = await run(flow, recorder, question="q")
    assert result.output == "q+q"
    assert trio.current_time() - start == pytest.approx(1.0)
    assert recorder.at("node_start", "a") == recorder.at("node_start", "b") == start


async def test_node_starts_when_its_own_inputs_are_ready(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    flow = compile_flow(
        {
            "id": "f",
            "nodes": [
                delay("slow", 5000),
                delay("fast", 100),
                delay("after_fast", 100, inputs={"x": "fast"}),
                {
                    "id": "join",
                    "type": "template",
                    "params": {"template": "{a}{b}"},
                    "inputs": {"a": "slow", "b": "after_fast"},
                },
            ],
            "output": "join",
        },
        executors,
    )
    start = trio.current_time()
    recorder = Recorder()
    result = await run(flow, recorder, question="x")
    assert result.output == "xx"
    assert recorder.at("node_end", "after_fast") - start == pytest.approx(0.2)
    assert recorder.at("node_start", "join") - start == pytest.approx(5.0)
    assert [r["nodeId"] for r in result.nodes] == ["fast", "after_fast", "slow", "join"]


async def test_node_timeout_fails_the_flow_and_stops_siblings(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    flow = compile_flow(
        {"id": "f", "nodes": [delay("a", 5000, timeout_s=1), delay("b", 60_000)], "output": "b"},
        executors,
    )
    start = trio.current_time()
    recorder = Recorder()
    with pytest.raises(NodeFailed) as info:
        await run(flow, recorder, question="q")
    assert trio.current_time() - start == pytest.approx(1.0)
    failure = info.value
    assert failure.node_id == "a"
    assert failure.message == (
        "timed out after 1 s (the node's timeout_s); raise timeout_s or make the node faster"
    )
    assert str(failure) == f"node 'a' failed: {failure.message}"
    assert [(r["nodeId"], r["status"], r["error"]) for r in failure.nodes] == [
        ("a", "ERROR", failure.message)
    ]
    assert recorder.events[-1][1:] == (
        "node_end",
        {"node": "a", "type": "delay", "label": "a", "status": "ERROR", "error": failure.message},
    )


async def test_job_timeout_is_the_callers_cancel_scope(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    flow = compile_flow(
        {"id": "f", "nodes": [delay("a", 60_000), delay("b", 60_000)], "output": "a"}, executors
    )
    start = trio.current_time()
    recorder = Recorder()
    raised: list[BaseException] = []
    with trio.move_on_after(2) as scope:
        try:
            await run(flow, recorder, question="q")
        except BaseException as exc:
            raised.append(exc)
            raise
    assert scope.cancelled_caught
    # One Cancelled, as from a plain await, not a group of one per running node.
    assert [type(exc) for exc in raised] == [trio.Cancelled]
    assert trio.current_time() - start == pytest.approx(2.0)
    assert [n for _t, n, _d in recorder.events] == ["node_start", "node_start"]


async def test_cancellation_mid_node_runs_cleanup_and_stops() -> None:
    started = trio.Event()
    cleaned_up = trio.Event()

    async def forever(ctx: NodeContext) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cleaned_up.set()

    flow = compile_flow(
        {"id": "f", "nodes": [{"id": "a", "type": "forever"}], "output": "a"},
        {"forever": executor("forever", forever)},
    )
    recorder = Recorder()
    job_scope = trio.CancelScope()

    async def job() -> None:
        with job_scope:
            await run(flow, recorder)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job)
            await started.wait()
            job_scope.cancel()
    assert cleaned_up.is_set()
    assert [n for _t, n, _d in recorder.events] == ["node_start"]


async def test_failing_node_reports_message_traceback_and_stops_others(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    async def boom(ctx: NodeContext) -> None:
        await trio.sleep(1)
        raise ValueError("boom")

    async def polite(ctx: NodeContext) -> None:
        raise NodeError("the service said no")

    all_executors = {
        **executors,
        "boom": executor("boom", boom),
        "polite": executor("polite", polite),
    }
    flow = compile_flow(
        {"id": "f", "nodes": [{"id": "x", "type": "boom"}, delay("slow", 60_000)], "output": "x"},
        all_executors,
    )
    start = trio.current_time()
    with pytest.raises(NodeFailed) as info:
        await run(flow, Recorder(), question="q")
    assert trio.current_time() - start == pytest.approx(1.0)
    assert info.value.node_id == "x"
    assert info.value.message == "ValueError: boom"
    assert 'raise ValueError("boom")' in info.value.traceback

    flow = compile_flow(
        {"id": "f", "nodes": [{"id": "p", "type": "polite"}], "output": "p"}, all_executors
    )
    with pytest.raises(NodeFailed) as info:
        await run(flow, Recorder())
    assert info.value.message == "the service said no"


async def test_missing_job_input_fails_the_node(executors: dict[str, Executor]) -> None:
    flow = compile_flow(
        {
            "id": "f",
            "nodes": [{"id": "a", "type": "echo", "inputs": {"x": "$overrideConfig.lang"}}],
            "output": "a",
        },
        executors,
    )
    with pytest.raises(NodeFailed) as info:
        await run(flow, Recorder(), question="q", overrideConfig={"temperature": 1})
    assert info.value.message == (
        "job input $overrideConfig.lang was not given ($overrideConfig has: temperature)"
    )
    with pytest.raises(NodeFailed) as info:
        await run(flow, Recorder(), question="q")
    assert info.value.message == (
        "job input $overrideConfig.lang was not given (the job's inputs have: question)"
    )


async def test_executor_events_between_node_events_and_reserved_names() -> None:
    async def chatty(ctx: NodeContext) -> str:
        ctx.emit("progress", 1)
        ctx.emit("token", "a")
        ctx.emit("my_event", {"k": ctx.job_id})
        return "done"

    async def rogue(ctx: NodeContext) -> str:
        ctx.emit("end", "fake")
        return "never"

    execs = {"chatty": executor("chatty", chatty), "rogue": executor("rogue", rogue)}
    flow = compile_flow({"id": "f", "nodes": [{"id": "c", "type": "chatty"}], "output": "c"}, execs)
    recorder = Recorder()
    await run(flow, recorder)
    assert recorder.names() == [
        ("node_start", "c"),
        ("progress", 1),
        ("token", "a"),
        ("my_event", None),
        ("node_end", "c"),
    ]
    assert recorder.events[3][2] == {"k": "j1"}
    flow = compile_flow({"id": "f", "nodes": [{"id": "r", "type": "rogue"}], "output": "r"}, execs)
    with pytest.raises(NodeFailed, match="executors may not emit 'end'"):
        await run(flow, Recorder())


async def test_credentials_reach_the_executor() -> None:
    async def uses_secret(ctx: NodeContext) -> str:
        return (await ctx.credential("key"))[::-1]

    async def store(name: str) -> str:
        if name == "key":
            return "terces"
        raise CredentialError("no")

    flow = compile_flow(
        {"id": "f", "nodes": [{"id": "s", "type": "s"}], "output": "s"},
        {"s": executor("s", uses_secret)},
    )
    result = await run_flow(flow, job_id="j", inputs={}, emit=Recorder(), credential=store)
    assert result.output == "secret"
    with pytest.raises(NodeFailed, match="credential 'key' is not stored"):
        await run(flow, Recorder())


@attrs.frozen
class JoinParams:
    ms: int = 0
    name: str = ""


async def join(ctx: NodeContext) -> str:
    await trio.sleep(ctx.params.ms / 1000)
    return "(" + "".join(ctx.inputs[k] for k in sorted(ctx.inputs)) + ")" + ctx.params.name


JOIN = Executor(type="join", params=JoinParams, run=join, description="test")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_dags_start_each_node_when_its_inputs_are_done(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 8), label="size")
    deps = [
        data.draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set() for i in range(size)
    ]
    delays = data.draw(st.lists(st.integers(0, 50), min_size=size, max_size=size))
    order = data.draw(st.permutations(range(size)), label="document order")
    document = {
        "id": "dag",
        "nodes": [
            {
                "id": f"n{i}",
                "type": "join",
                "params": {"ms": delays[i], "name": str(i)},
                "inputs": {f"i{j}": f"n{j}" for j in deps[i]},
            }
            for i in order
        ],
        "output": f"n{size - 1}",
    }
    flow = compile_flow(document, {"join": JOIN})

    def expected(i: int) -> str:
        return "(" + "".join(expected(j) for j in sorted(deps[i], key=lambda j: f"i{j}")) + f"){i}"

    recorder = Recorder()

    async def main() -> Any:
        return await run(flow, recorder)

    result = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert result.output == expected(size - 1)
    assert sorted(r["nodeId"] for r in result.nodes) == sorted(f"n{i}" for i in range(size))
    for i in range(size):
        ready = max((recorder.at("node_end", f"n{j}") for j in deps[i]), default=0.0)
        assert recorder.at("node_start", f"n{i}") == pytest.approx(ready)
        assert recorder.at("node_end", f"n{i}") == pytest.approx(ready + delays[i] / 1000)


async def test_an_encoded_run_writes_the_same_json_as_a_plain_one(
    executors: dict[str, Executor],
) -> None:
    # The worker's runs carry outputs and event data as orjson Fragments; what
    # they write must be byte for byte what the plain values encode to.
    async def chatty(ctx: NodeContext) -> Any:
        ctx.emit("progress", {"step": [1, 2.5, None, "ü"]})
        return {"text": ctx.inputs["text"], "n": 3}

    flow = compile_flow(
        {
            "id": "f",
            "output": "out",
            "nodes": [
                {"id": "p", "type": "template", "params": {"template": "Hi {question}"}},
                {"id": "c", "type": "chatty", "inputs": {"text": "p"}},
                {"id": "out", "type": "echo", "inputs": {"text": "c"}},
            ],
        },
        {**executors, "chatty": executor("chatty", chatty)},
    )

    def written(result: Any, recorder: Recorder) -> bytes:
        nodes = [{k: v for k, v in r.items() if not k.endswith("At")} for r in result.nodes]
        return orjson.dumps([result.output, nodes, [(n, d) for _t, n, d in recorder.events]])

    plain, encoded = Recorder(), Recorder()
    first = await run_flow(
        flow, job_id="j", inputs={"question": "Ann"}, emit=plain, credential=no_credentials
    )
    second = await run_flow(
        flow,
        job_id="j",
        inputs={"question": "Ann"},
        emit=encoded,
        credential=no_credentials,
        encoded=True,
    )
    assert isinstance(second.output, orjson.Fragment)
    assert written(first, plain) == written(second, encoded)
    assert first.output == {"text": "Hi Ann", "n": 3}


async def test_outputs_and_events_are_checked_without_a_worker_too() -> None:
    async def returns_set(ctx: NodeContext) -> Any:
        return {"tags": {"a"}}

    async def emits_much(ctx: NodeContext) -> Any:
        ctx.emit("token", "x" * 100)
        return "x" * 100

    execs = {"s": executor("s", returns_set), "m": executor("m", emits_much)}
    flow = compile_flow({"id": "f", "nodes": [{"id": "s", "type": "s"}], "output": "s"}, execs)
    with pytest.raises(NodeFailed, match=r"output is not JSON: set at \$\.tags; ") as failed:
        await run(flow, Recorder())
    assert failed.value.node_id == "s"
    flow = compile_flow({"id": "f", "nodes": [{"id": "m", "type": "m"}], "output": "m"}, execs)
    with pytest.raises(NodeFailed, match=r"over limits\.max_event_bytes \(50\)"):
        await run_flow(
            flow,
            job_id="j",
            inputs={},
            emit=Recorder(),
            credential=no_credentials,
            limits=LimitsConfig(max_event_bytes=50),
        )
    with pytest.raises(NodeFailed, match=r"102 bytes of JSON, over limits\.max_result_bytes"):
        await run_flow(
            flow,
            job_id="j",
            inputs={},
            emit=Recorder(),
            credential=no_credentials,
            limits=LimitsConfig(max_result_bytes=101),
        )


async def test_run_executor_checks_emitted_events_as_the_runner_does() -> None:
    # A plugin's own tests (flowqd.testing) see the error a worker would give.
    async def emits_a_set(ctx: NodeContext) -> Any:
        ctx.emit("progress", {"seen": {1}})
        return "done"

    with pytest.raises(
        NodeError, match=r"'progress' event whose data is not JSON: set at \$\.seen"
    ):
        await run_executor(executor("e", emits_a_set))


async def test_an_encoded_run_writes_node_events_as_a_plain_one_with_labels(
    executors: dict[str, Executor],
) -> None:
    # node_start and node_end are written from JSON made once per node (with its label).
    flow = compile_flow(
        {
            "id": "f",
            "output": "out",
            "nodes": [{"id": "out", "type": "echo", "label": 'Grüße "à" {x}'}],
        },
        executors,
    )
    plain, encoded = Recorder(), Recorder()
    for recorder, flag in ((plain, False), (encoded, True)):
        await run_flow(
            flow,
            job_id="j",
            inputs={"question": "Ann"},
            emit=recorder,
            credential=no_credentials,
            encoded=flag,
        )
    assert [n for _t, n, _d in encoded.events] == ["node_start", "node_end"]
    assert orjson.dumps([d for _t, _n, d in encoded.events]) == orjson.dumps(
        [d for _t, _n, d in plain.events]
    )
    assert plain.events[0][2]["label"] == 'Grüße "à" {x}'
