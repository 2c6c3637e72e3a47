"""Branching: ``when``, output lists, skipped nodes, and the checks at registration.

Timing tests run on trio's autojump clock: virtual time, no wall-clock sleeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.lowlevel
import trio.testing

from flowqd import Executor, NodeContext
from flowqd.errors import FlowValidationError
from flowqd.flows import CompiledFlow, NodeFailed, compile_flow, run_flow
from flowqd.flows.branches import MAX_CHECKS, MAX_COMBINATIONS
from tests.flows.test_runner import Recorder, no_credentials


@attrs.frozen
class NoParams:
    pass


class Calls:
    """An executor that records every node it runs: a skipped node must never be in it."""

    def __init__(self) -> None:
        self.nodes: list[str] = []

    async def __call__(self, ctx: NodeContext) -> str:
        self.nodes.append(ctx.node_id)
        await trio.lowlevel.checkpoint()
        return f"{ctx.node_id}({','.join(map(str, ctx.inputs.values()))})"


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def kinds(executors: dict[str, Executor], calls: Calls) -> dict[str, Executor]:
    return {
        **executors,
        "call": Executor(type="call", params=NoParams, run=calls, description="records calls"),
    }


def route(node_id: str = "route", *, value: str = "$question", **extra: Any) -> dict[str, Any]:
    """A condition on the question: billing, refund, else other."""
    return {
        "id": node_id,
        "type": "condition",
        "params": {
            "cases": [
                {"name": "billing", "regex": "bill"},
                {"name": "refund", "regex": "refund"},
            ],
            "default": "other",
        },
        "inputs": {"value": value},
        **extra,
    }


def call(node_id: str, *, when: Any = None, **inputs: str) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "type": "call", "inputs": inputs}
    if when is not None:
        node["when"] = when
    return node


def flow(*nodes: dict[str, Any], output: Any) -> dict[str, Any]:
    return {"id": "f", "nodes": list(nodes), "output": output}


HELPDESK = flow(
    route(),
    call("bill", when={"route": "billing"}, q="$question"),
    call("bill_reply", text="bill"),
    call("refund", when={"route": ["refund"]}, q="$question"),
    call("fallback", when={"route": "other"}),
    output=["bill_reply", "refund", "fallback"],
)


async def run(flow: CompiledFlow, recorder: Recorder, question: str, **kw: Any) -> Any:
    return await run_flow(
        flow,
        job_id="j1",
        inputs={"question": question},
        emit=recorder,
        credential=no_credentials,
        **kw,
    )


def problems(document: Any, executors: dict[str, Executor]) -> list[tuple[str, str]]:
    with pytest.raises(FlowValidationError) as info:
        compile_flow(document, executors)
    return info.value.problems


# ---- running ------------------------------------------------------------------


async def test_the_branch_taken_runs_and_the_others_are_skipped_never_run(
    kinds: dict[str, Executor], calls: Calls
) -> None:
    compiled = compile_flow(HELPDESK, kinds)
    recorder = Recorder()
    result = await run(compiled, recorder, "my bill")
    assert result.output == "bill_reply(bill(my bill))"
    assert calls.nodes == ["bill", "bill_reply"]
    assert recorder.names() == [
        ("node_start", "route"),
        ("node_end", "route"),
        # Decided when route ended, before the branch taken runs.
        ("node_skipped", "refund"),
        ("node_skipped", "fallback"),
        ("node_start", "bill"),
        ("node_end", "bill"),
        ("node_start", "bill_reply"),
        ("node_end", "bill_reply"),
    ]
    skipped = [d for _t, n, d in recorder.events if n == "node_skipped"]
    assert skipped[0] == {
        "node": "refund",
        "type": "call",
        "label": "refund",
        "reason": "route chose 'billing'",
    }
    records = {r["nodeId"]: r for r in result.nodes}
    assert records["route"]["output"] == "billing"
    refund = records["refund"]
    assert {k: v for k, v in refund.items() if k != "finishedAt"} == {
        "nodeId": "refund",
        "nodeLabel": "refund",
        "type": "call",
        "status": "SKIPPED",
        "reason": "route chose 'billing'",
        "input": {},
        "output": None,
        "previousNodeIds": ["route"],
    }
    assert refund["finishedAt"] <= records["bill"]["startedAt"]


async def test_skips_spread_downstream_and_the_first_output_that_ran_is_the_result(
    kinds: dict[str, Executor], calls: Calls
) -> None:
    compiled = compile_flow(HELPDESK, kinds)
    recorder = Recorder()
    result = await run(compiled, recorder, "refund me")
    assert result.output == "refund(refund me)"
    assert calls.nodes == ["refund"]
    reasons = {r["nodeId"]: r.get("reason") for r in result.nodes if r["status"] == "SKIPPED"}
    assert reasons == {
        "bill": "route chose 'refund'",
        "bill_reply": "its input 'text' comes from 'bill', which was skipped",
        "fallback": "route chose 'refund'",
    }
    recorder = Recorder()
    result = await run(compiled, recorder, "hello")
    assert result.output == "fallback()"
    assert calls.nodes == ["refund", "fallback"]


async def test_nested_branches_skip_the_nodes_of_a_skipped_condition(
    kinds: dict[str, Executor], calls: Calls
) -> None:
    document = flow(
        route(),
        {
            "id": "urgency",
            "type": "condition",
            "params": {"cases": [{"name": "now", "regex": "urgent"}], "default": "later"},
            "when": {"route": "billing"},
        },
        call("now", when={"urgency": "now"}),
        call("later", when={"urgency": ["later"]}),
        call("other", when={"route": ["refund", "other"]}),
        output=["now", "later", "other"],
    )
    compiled = compile_flow(document, kinds)
    result = await run(compiled, Recorder(), "refund")
    assert result.output == "other()"
    assert calls.nodes == ["other"]
    reasons = {r["nodeId"]: r.get("reason") for r in result.nodes if r["status"] == "SKIPPED"}
    assert reasons == {
        "urgency": "route chose 'refund'",
        "now": "'urgency' was skipped",
        "later": "'urgency' was skipped",
    }
    result = await run(compiled, Recorder(), "urgent bill")
    assert result.output == "now()"
    assert calls.nodes == ["other", "now"]


async def test_branches_that_run_keep_running_concurrently_and_skips_wait_for_nothing(
    kinds: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    document = flow(
        route(),
        {"id": "slow", "type": "delay", "params": {"ms": 5000}, "inputs": {"x": "$question"}},
        {"id": "a", "type": "delay", "params": {"ms": 1000}, "when": {"route": "billing"}},
        {"id": "b", "type": "delay", "params": {"ms": 1000}, "when": {"route": "billing"}},
        {
            "id": "c",
            "type": "delay",
            "params": {"ms": 1000},
            "when": {"route": ["refund", "other"]},
        },
        {
            "id": "join",
            "type": "template",
            "params": {"template": "{a}+{b}+{s}"},
            "inputs": {"a": "a", "b": "b", "s": "slow"},
        },
        {"id": "alt", "type": "template", "params": {"template": "{c}"}, "inputs": {"c": "c"}},
        output=["join", "alt"],
    )
    compiled = compile_flow(document, kinds)
    start = trio.current_time()
    recorder = Recorder()
    result = await run(compiled, recorder, "bill")
    assert result.output == "bill+bill+bill"
    assert recorder.at("node_start", "a") == recorder.at("node_start", "b") == start
    assert recorder.at("node_end", "b") - start == pytest.approx(1.0)
    # c and alt are skipped when route ends, not when the slow node does.
    assert recorder.at("node_skipped", "c") == recorder.at("node_skipped", "alt") == start
    assert recorder.at("node_start", "join") - start == pytest.approx(5.0)
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_an_encoded_run_gives_the_same_result_and_records(kinds: dict[str, Executor]) -> None:
    compiled = compile_flow(HELPDESK, kinds)
    plain = await run(compiled, Recorder(), "hello")
    encoded = await run(compiled, Recorder(), "hello", encoded=True)
    assert orjson.dumps(encoded.output) == orjson.dumps(plain.output) == b'"fallback()"'
    strip = [{k: v for k, v in r.items() if not k.endswith("At")} for r in plain.nodes]
    assert (
        orjson.loads(
            orjson.dumps(
                [{k: v for k, v in r.items() if not k.endswith("At")} for r in encoded.nodes]
            )
        )
        == strip
    )


async def test_a_failure_in_the_branch_taken_fails_the_flow_with_the_skips_recorded(
    kinds: dict[str, Executor],
) -> None:
    document = flow(
        route(),
        {
            "id": "bad",
            "type": "template",
            "params": {"template": "{x}"},
            "inputs": {"x": "$nope"},
            "when": {"route": "billing"},
        },
        call("side", when={"route": ["refund", "other"]}),
        output=["bad", "side"],
    )
    compiled = compile_flow(document, kinds)
    with pytest.raises(NodeFailed) as failed:
        await run(compiled, Recorder(), "bill")
    assert failed.value.node_id == "bad"
    statuses = [(r["nodeId"], r["status"]) for r in failed.value.nodes]
    assert statuses == [("route", "FINISHED"), ("side", "SKIPPED"), ("bad", "ERROR")]


async def test_a_branching_executor_that_returns_no_outcome_fails_its_node(
    executors: dict[str, Executor],
) -> None:
    async def wrong(ctx: NodeContext) -> Any:
        return ctx.flow_inputs["question"]

    picky = Executor(
        type="picky",
        params=NoParams,
        run=wrong,
        description="chooses yes or no, in theory",
        branches=lambda _params: ["yes", "no"],
    )
    document = flow(
        {"id": "p", "type": "picky"},
        {"id": "y", "type": "echo", "when": {"p": "yes"}},
        {"id": "n", "type": "echo", "when": {"p": "no"}},
        output=["y", "n"],
    )
    compiled = compile_flow(document, {**executors, "picky": picky})
    result = await run(compiled, Recorder(), "no")
    assert result.output == "no"
    assert [r["status"] for r in result.nodes] == ["FINISHED", "SKIPPED", "FINISHED"]
    with pytest.raises(NodeFailed) as failed:
        await run(compiled, Recorder(), "maybe")
    assert failed.value.message == (
        "a picky node's output is the outcome it chose, one of yes, no; it returned 'maybe'"
    )


async def test_flows_without_when_take_the_paths_they_took_before(
    kinds: dict[str, Executor],
) -> None:
    chain = compile_flow(flow(route(), call("c", r="route"), output="c"), kinds)
    assert chain.branching is None and chain.sequential
    result = await run(chain, Recorder(), "bill")
    assert result.output == "c(billing)"
    parallel = compile_flow(flow(route(), call("c"), output=["c"]), kinds)
    assert parallel.branching is None and not parallel.sequential
    assert parallel.outputs == ("c",)
    # A chain with a when is run as a branching flow.
    chained = compile_flow(
        flow(route(), call("c", when={"route": ["billing", "refund", "other"]}), output="c"),
        kinds,
    )
    assert chained.branching is not None and not chained.sequential
    assert (await run(chained, Recorder(), "x")).output == "c()"


# ---- registration -----------------------------------------------------------------


def nodes_for(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [route(), call("b", when={"route": "billing"}), call("o"), *extra]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            flow(*nodes_for(call("x", when=["route"])), output="o"),
            [
                (
                    "$.nodes[3].when",
                    "expected an object of branching node id -> the outcome (or list of "
                    'outcomes) on which this node runs, such as {"route": "billing"}, '
                    "got ['route']",
                )
            ],
        ),
        (
            flow(*nodes_for(call("x", when={"route": [], "o": 3, "bad id": "x"})), output="o"),
            [
                (
                    "$.nodes[3].when.route",
                    "expected an outcome name or a non-empty list of them, got []",
                ),
                (
                    "$.nodes[3].when.o",
                    "expected an outcome name or a non-empty list of them, got 3",
                ),
                (
                    '$.nodes[3].when["bad id"]',
                    "expected a branching node's id as the key, got 'bad id'",
                ),
            ],
        ),
        (
            flow(
                *nodes_for(call("x", when={"nope": "a", "o": "a", "route": ["refund", "bill"]})),
                output="o",
            ),
            [
                (
                    "$.nodes[3].when.nope",
                    "unknown node 'nope'; nodes: route, b, o, x (job inputs start with $)",
                ),
                (
                    "$.nodes[3].when.o",
                    "node 'o' is a call node, which does not choose a branch; when names a "
                    "node of a branching type such as condition",
                ),
                (
                    "$.nodes[3].when.route",
                    "'route' has no outcome 'bill'; its outcomes: billing, refund, other",
                ),
            ],
        ),
        (
            flow(route(value="x"), call("x", when={"route": "billing"}), output="x"),
            [("$.nodes[0].inputs", "cycle: route -> x -> route")],
        ),
        (
            flow(*nodes_for(), output=[]),
            [("$.output", "expected a node id or a non-empty list of node ids, got []")],
        ),
        (
            flow(*nodes_for(), output=["b", 1, "zz", "b"]),
            [
                ("$.output[1]", "expected a node id, got 1"),
                ("$.output[2]", "unknown node 'zz'; nodes: route, b, o (job inputs start with $)"),
                ("$.output[3]", "node 'b' is listed twice (first at $.output[0])"),
            ],
        ),
        (
            flow(*nodes_for(), output="b"),
            [
                (
                    "$.output",
                    "when route is 'refund', or when route is 'other': the output node 'b' is "
                    "skipped, so the flow has no result; make output a list that adds a node "
                    'for that branch, e.g. ["b", "other_answer"]',
                )
            ],
        ),
        (
            flow(*nodes_for(call("r", when={"route": "refund"})), output=["b", "r"]),
            [
                (
                    "$.output",
                    "when route is 'other': none of the output nodes (b, r) runs; add a node "
                    "for that branch to output",
                )
            ],
        ),
        (
            flow(*nodes_for(call("r", when={"route": "refund"})), output=["b", "o", "r"]),
            [
                (
                    "$.output[2]",
                    "'r' is never the result: whenever it runs, a node before it in output "
                    "runs too; remove it or move it forward",
                )
            ],
        ),
        (
            flow(
                *nodes_for(
                    call("r", when={"route": "refund"}),
                    call("join", x="b", y="r"),
                    call("after", j="join"),
                ),
                output="o",
            ),
            [
                (
                    "$.nodes[4].inputs.y",
                    "node 'join' never runs: no combination of branch outcomes runs every node "
                    "it reads and satisfies its when (when route is 'billing': its input 'y' "
                    "comes from 'r', which is skipped); read nodes that run together, or list "
                    "alternatives in output",
                )
            ],
        ),
        (
            flow(
                *nodes_for(
                    route("inner", when={"route": "refund"}),
                    call("x", when={"route": "billing", "inner": "other"}),
                ),
                output="o",
            ),
            [
                (
                    "$.nodes[4].when.inner",
                    "node 'x' never runs: no combination of branch outcomes runs every node "
                    "it reads and satisfies its when (when route is 'billing': 'inner' is "
                    "skipped); read nodes that run together, or list alternatives in output",
                )
            ],
        ),
    ],
)
def test_bad_branching_is_reported_at_its_path(
    kinds: dict[str, Executor], document: Any, expected: list[tuple[str, str]]
) -> None:
    assert sorted(problems(document, kinds)) == sorted(expected)


def test_combinations_name_every_branch_and_stop_after_three(kinds: dict[str, Executor]) -> None:
    document = flow(
        route(),
        route("lang", when={"route": ["billing", "refund"]}),
        call("b", when={"route": "billing", "lang": "billing"}),
        call("o", when={"route": "other"}),
        output=["b", "o"],
    )
    [(path, message)] = problems(document, kinds)
    assert path == "$.output"
    assert message == (
        "when route is 'billing' and lang is 'refund', or when route is 'billing' and lang is "
        "'other', or when route is 'refund' and lang is 'billing' (and 2 more combinations): "
        "none of the output nodes (b, o) runs; add a node for that branch to output"
    )


def test_too_many_combinations_are_refused(kinds: dict[str, Executor]) -> None:
    conditions = 13  # 3**13 combinations, well past the limit
    nodes = [route(f"r{i}") for i in range(conditions)]
    nodes += [call(f"c{i}", when={f"r{i}": "billing"}) for i in range(conditions)]
    nodes.append(call("out"))
    assert problems(flow(*nodes, output="out"), kinds) == [
        (
            "$.nodes",
            "the flow has too many combinations of branch outcomes to check (over 4096, or "
            "over 1,000,000 checks of a node in them all); split it into smaller flows or use "
            "fewer branching nodes",
        )
    ]
    # Seven conditions (2,187 combinations) are checked, and pass.
    fine = [*nodes[:7], *nodes[conditions : conditions + 7], nodes[-1]]
    assert compile_flow(flow(*fine, output="out"), kinds).branching is not None


def test_many_nodes_under_many_combinations_are_refused_too(kinds: dict[str, Executor]) -> None:
    def yes_no(node_id: str) -> dict[str, Any]:
        cases = [{"name": "yes", "equals": "y"}]
        return {"id": node_id, "type": "condition", "params": {"cases": cases, "default": "no"}}

    conditions = 10  # 1,024 combinations, under MAX_COMBINATIONS
    nodes = [yes_no(f"r{i}") for i in range(conditions)]
    nodes += [call(f"c{i}", when={f"r{i}": "yes"}) for i in range(conditions)]
    under = MAX_CHECKS // 2**conditions  # nodes downstream of c0: checked in each combination
    nodes += [call(f"d{i}", x="c0") for i in range(under)]
    nodes.append(call("out"))
    assert 2**conditions <= MAX_COMBINATIONS
    [(path, message)] = problems(flow(*nodes, output="out"), kinds)
    assert path == "$.nodes" and message.startswith("the flow has too many combinations")
    # Nodes no when reaches are not checked in each combination: many of them are fine.
    nodes = nodes[: 2 * conditions] + [call(f"e{i}") for i in range(under)]
    assert compile_flow(flow(*nodes, output="e0"), kinds).branching is not None


def test_a_plugins_branches_function_is_checked(executors: dict[str, Executor]) -> None:
    def make(branches: Any) -> dict[str, Executor]:
        async def run(_ctx: NodeContext) -> str:
            return "a"

        kind = Executor(type="b", params=NoParams, run=run, description="d", branches=branches)
        return {**executors, "b": kind}

    def boom(_params: Any) -> Sequence[str]:
        raise RuntimeError("no")

    document = flow({"id": "x", "type": "b"}, {"id": "y", "type": "echo"}, output="y")
    assert problems(document, make(boom)) == [
        ("$.nodes[0]", "the 'b' executor's branches failed: RuntimeError('no')")
    ]
    assert problems(document, make(lambda _p: [])) == [
        (
            "$.nodes[0]",
            "the 'b' executor's branches gave (), not a non-empty list of outcome names",
        )
    ]


DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


async def test_the_docs_example_runs_and_its_quoted_message_is_real(
    executors: dict[str, Executor],
) -> None:
    section = DOC.read_text().split("### Branches", 1)[1]
    document = orjson.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    compiled = compile_flow(document, executors)
    result = await run(compiled, Recorder(), "An invoice?")
    assert result.output == "Billing: An invoice?"
    result = await run(compiled, Recorder(), '{"order": {"id": 7}}')
    assert result.output == '{"order": {"id": 7}}'
    assert [r["status"] for r in result.nodes] == ["FINISHED", "SKIPPED", "FINISHED"]
    document["nodes"][2]["when"] = {"route": "order"}
    [(path, message)] = problems(document, executors)
    assert f'(`{path}`: "{message}")' in " ".join(section.split())


async def test_a_traced_run_has_spans_for_the_nodes_that_ran_only(
    kinds: dict[str, Executor], calls: Calls
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flowqd import tracing
    from tests.test_tracing import _job

    exporter = InMemorySpanExporter()
    tracing.current = traced = tracing.Tracing.start("all", [exporter])
    try:
        job_span = traced.start_job(_job("f"), "w1", "q")
        result = await run(compile_flow(HELPDESK, kinds), Recorder(), "my bill", trace=job_span)
        tracing.end_job(job_span, None)
        traced.provider.force_flush()
    finally:
        tracing.shutdown()
    assert result.output == "bill_reply(bill(my bill))"
    names = sorted(s.name for s in exporter.get_finished_spans() if s.name.startswith("node "))
    assert names == ["node bill", "node bill_reply", "node route"]
