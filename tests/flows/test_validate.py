"""Flow validation: every problem at once, each with its JSON path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowqd.errors import FlowValidationError
from flowqd.executors.base import Executor
from flowqd.flows import compile_flow, parse_flow_file
from flowqd.flows.model import NodeSource

TYPES = "condition, delay, echo, http, llm, template"


def flow(*nodes: dict[str, Any], output: Any = "a", **extra: Any) -> dict[str, Any]:
    return {"id": "f", "nodes": list(nodes), "output": output, **extra}


LLM = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}

BAD_FLOWS: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("not an object", [1], [("$", "expected a flow object with id, nodes and output, got [1]")]),
    (
        "everything missing",
        {},
        [
            ("$.id", 'missing; give the flow an id such as "greet"'),
            ("$.nodes", "missing; a flow needs at least one node"),
            ("$.output", "missing; name the node whose output is the flow's result"),
        ],
    ),
    (
        "unknown top-level key, bad id",
        flow({"id": "a", "type": "echo"}, id="no spaces", nodez=[]),
        [
            ("$.nodez", "unknown key; known keys: id, nodes, output, description, priority, queue"),
            (
                "$.id",
                "expected 1-128 letters, digits and _ . : - (not starting with . : -), "
                "got 'no spaces'",
            ),
        ],
    ),
    (
        "priority out of range, or not an integer",
        flow({"id": "a", "type": "echo"}, priority=1001),
        [
            (
                "$.priority",
                "expected an integer from -1000 to 1000 (higher runs first, 0 is the default), "
                "got 1001",
            )
        ],
    ),
    (
        "priority not an integer",
        flow({"id": "a", "type": "echo"}, priority=True),
        [
            (
                "$.priority",
                "expected an integer from -1000 to 1000 (higher runs first, 0 is the default), "
                "got True",
            )
        ],
    ),
    (
        "empty nodes",
        flow(),
        [
            ("$.nodes", "expected a non-empty list of nodes, got []"),
            ("$.output", "unknown node 'a'; nodes: none (job inputs start with $)"),
        ],
    ),
    (
        "unknown node type and node key",
        flow({"id": "a", "type": "nope", "color": "red"}),
        [
            (
                "$.nodes[0].color",
                "unknown key; known keys: id, type, label, params, inputs, timeout_s, when, "
                "tool, tools",
            ),
            ("$.nodes[0].type", f"unknown node type 'nope'; known types: {TYPES}"),
        ],
    ),
    (
        "params: wrong type, unknown key, missing, validator",
        flow(
            {"id": "a", "type": "echo"},
            {"id": "b", "type": "delay", "params": {"ms": "5", "extra": 1}},
            {"id": "c", "type": "template"},
            {"id": "d", "type": "delay", "params": {"ms": -1}},
        ),
        [
            ("$.nodes[1].params.ms", "expected an integer, got '5'"),
            ("$.nodes[1].params.extra", "unknown key; known keys: ms"),
            ("$.nodes[2].params.template", "missing (required)"),
            ("$.nodes[3].params.ms", "must be >= 0: -1"),
        ],
    ),
    (
        "nested params",
        flow({"id": "a", "type": "llm", "params": {**LLM, "messages": [{"role": "user"}, 3]}}),
        [
            ("$.nodes[0].params.messages[0].content", "missing (required)"),
            ("$.nodes[0].params.messages[1]", "expected an object"),
        ],
    ),
    (
        "unknown input node, bad source syntax, bad input name",
        flow(
            {
                "id": "a",
                "type": "template",
                "params": {"template": "x"},
                "inputs": {"x": "zzz", "y": "$", "z": "$overrideConfig.", "1a": "a", "w": 5},
            },
        ),
        [
            (
                "$.nodes[0].inputs.y",
                "expected a node id, or a job input as $name or $name.key "
                "(e.g. $question, $overrideConfig.temperature), got '$'",
            ),
            (
                "$.nodes[0].inputs.z",
                "expected a node id, or a job input as $name or $name.key "
                "(e.g. $question, $overrideConfig.temperature), got '$overrideConfig.'",
            ),
            (
                '$.nodes[0].inputs["1a"]',
                "input names are letters, digits and _ (not starting with a digit)",
            ),
            (
                "$.nodes[0].inputs.w",
                "expected a node id, or a job input as $name or $name.key "
                "(e.g. $question, $overrideConfig.temperature), got 5",
            ),
            ("$.nodes[0].inputs.x", "unknown node 'zzz'; nodes: a (job inputs start with $)"),
        ],
    ),
    (
        "cycle and self-loop",
        flow(
            {"id": "a", "type": "echo", "inputs": {"x": "c"}},
            {"id": "b", "type": "echo", "inputs": {"x": "a"}},
            {"id": "c", "type": "echo", "inputs": {"x": "b"}},
            {"id": "d", "type": "echo", "inputs": {"x": "d"}},
        ),
        [
            ("$.nodes[0].inputs", "cycle: a -> b -> c -> a"),
            ("$.nodes[3].inputs", "cycle: d -> d"),
        ],
    ),
    (
        "duplicate id, bad timeout, bad label",
        flow(
            {"id": "a", "type": "echo", "timeout_s": 0},
            {"id": "a", "type": "echo", "label": 3, "timeout_s": "1"},
        ),
        [
            ("$.nodes[0].timeout_s", "expected a number of seconds > 0, got 0"),
            ("$.nodes[1].label", "expected a string, got 3"),
            ("$.nodes[1].timeout_s", "expected a number of seconds > 0, got '1'"),
            ("$.nodes[1].id", "duplicate node id 'a' (first at $.nodes[0])"),
        ],
    ),
    (
        "missing output node",
        flow({"id": "a", "type": "echo"}, output="b"),
        [("$.output", "unknown node 'b'; nodes: a (job inputs start with $)")],
    ),
    (
        "executor checks: inputs, template syntax, URL",
        flow(
            {"id": "a", "type": "echo", "inputs": {"x": "$question", "y": "$question"}},
            {"id": "b", "type": "llm", "params": LLM},
            {"id": "c", "type": "template", "params": {"template": "{} and {x}"}},
            {"id": "d", "type": "http", "params": {"url": "ftp://x"}},
            {
                "id": "e",
                "type": "llm",
                "params": {**LLM, "base_url": "nope"},
                "inputs": {"prompt": "a", "other": "a"},
            },
            {"id": "f", "type": "template", "params": {"template": "a {"}},
        ),
        [
            ("$.nodes[0].inputs", "echo takes at most one input, got 2"),
            ("$.nodes[1].inputs", "llm needs an input named 'prompt' or params.messages"),
            (
                "$.nodes[2].params.template",
                "placeholder {} needs a name: use {question} or an "
                "input's name (write {{ and }} for literal braces)",
            ),
            (
                "$.nodes[5].params.template",
                "Single '{' encountered in format string (write {{ and }} for literal braces)",
            ),
            (
                "$.nodes[3].params.url",
                "expected an http:// or https:// URL with a host, got 'ftp://x'",
            ),
            (
                "$.nodes[4].params.base_url",
                "expected an http:// or https:// URL with a host, got 'nope'",
            ),
            ("$.nodes[4].inputs.other", "llm takes only an input named 'prompt'"),
        ],
    ),
    (
        "not a node object, params not an object",
        flow(7, {"id": "a", "type": "echo", "params": []}),
        [
            ("$.nodes[0]", "expected a node object, got 7"),
            ("$.nodes[1].params", "expected an object, got []"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("document", "expected"),
    [pytest.param(doc, problems, id=name) for name, doc, problems in BAD_FLOWS],
)
def test_bad_flows_report_every_problem(
    executors: dict[str, Executor], document: Any, expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(FlowValidationError) as info:
        compile_flow(document, executors)
    assert sorted(info.value.problems) == sorted(expected)


def test_good_flow_compiles_in_topological_order(executors: dict[str, Executor]) -> None:
    document = {
        "id": "greet",
        "description": "say hello",
        "nodes": [
            {
                "id": "answer",
                "type": "llm",
                "params": LLM,
                "inputs": {"prompt": "prompt"},
                "timeout_s": 30,
            },
            {
                "id": "prompt",
                "type": "template",
                "label": "Prompt",
                "params": {"template": "Say hello to {question} in {overrideConfig[lang]}"},
            },
            {"id": "lang", "type": "echo", "inputs": {"x": "$overrideConfig.lang"}},
        ],
        "output": "answer",
    }
    compiled = compile_flow(document, executors)
    assert [n.id for n in compiled.nodes] == ["prompt", "lang", "answer"]
    answer = compiled.nodes[2]
    assert answer.inputs == (("prompt", NodeSource(node="prompt")),)
    assert answer.timeout_s == 30.0 and answer.label == "answer"
    assert answer.params.model == "m" and answer.params.timeout_s == 120.0
    assert compiled.nodes[1].inputs == (("x", NodeSource(flow_path=("overrideConfig", "lang"))),)
    assert compiled.flow_inputs == {"overrideConfig"}
    assert compiled.document == document


def test_parse_json_and_toml(tmp_path: Path, executors: dict[str, Executor]) -> None:
    (tmp_path / "a.toml").write_text(
        'id = "t"\noutput = "a"\n[[nodes]]\nid = "a"\ntype = "delay"\n[nodes.params]\nms = 5\n'
    )
    (tmp_path / "a.json").write_text(
        '{"id": "t", "nodes": [{"id": "a", "type": "echo"}], "output": "a"}'
    )
    toml_doc = parse_flow_file(tmp_path / "a.toml")
    assert toml_doc == {
        "id": "t",
        "output": "a",
        "nodes": [{"id": "a", "type": "delay", "params": {"ms": 5}}],
    }
    assert compile_flow(toml_doc, executors).nodes[0].params.ms == 5
    assert parse_flow_file(tmp_path / "a.json")["nodes"] == [{"id": "a", "type": "echo"}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{", "not valid JSON: "),
        ("bad.toml", "id = ", "not valid TOML: "),
        ("list.json", "[]", "expected a flow object with id, nodes and output"),
        ("flow.yaml", "id: x", "flow files end in .json or .toml"),
    ],
)
def test_parse_errors_name_the_file(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(FlowValidationError) as info:
        parse_flow_file(tmp_path / name)
    [(where, text)] = info.value.problems
    assert where == str(tmp_path / name)
    assert text.startswith(message)


# ---- validation never raises anything but FlowValidationError ---------------

_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_ids = st.sampled_from(["a", "b", "c", "$question", "$overrideConfig.x", "", "a b", "-x", "$"])
_text = st.sampled_from(["{question}", "{", "{}", "{x.y}", "{0}", "hi", "http://127.0.0.1:1/v1"])
_param_keys = st.sampled_from(
    [
        "ms",
        "template",
        "url",
        "model",
        "base_url",
        "messages",
        "method",
        "headers",
        "json",
        "timeout_s",
        "allow_status",
        "temperature",
        "x",
    ]
)
_params = st.dictionaries(_param_keys, _json | _text | _ids, max_size=4) | _json
_node = st.fixed_dictionaries(
    {},
    optional={
        "id": _ids | _json,
        "type": st.sampled_from(["echo", "delay", "template", "http", "llm", "nope"]) | _json,
        "params": _params,
        "inputs": st.dictionaries(
            st.sampled_from(["prompt", "x", "1", "url"]) | st.text(max_size=3),
            _ids | _json,
            max_size=3,
        )
        | _json,
        "timeout_s": _json,
        "label": _json,
    },
)
_documents = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": _ids | _json,
            "nodes": st.lists(_node | _json, max_size=5) | _json,
            "output": _ids | _json,
            "extra": _json,
        },
    )
    | _json
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_documents)
def test_validation_only_raises_flow_validation_error(
    executors: dict[str, Executor], document: Any
) -> None:
    try:
        compiled = compile_flow(document, executors)
    except FlowValidationError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and isinstance(m, str) for p, m in exc.problems)
        assert all(p.startswith("$") for p, _m in exc.problems)
    else:
        assert compiled.output in {n.id for n in compiled.nodes}


# ---- size: linear validation, flows.max_nodes -------------------------------


def chain(length: int) -> dict[str, Any]:
    """``n0 -> n1 -> ...``: each node reads the one before it."""
    nodes = [{"id": "n0", "type": "echo", "inputs": {"x": "$question"}}]
    nodes += [
        {"id": f"n{i}", "type": "echo", "inputs": {"x": f"n{i - 1}"}} for i in range(1, length)
    ]
    return {"id": "chain", "nodes": nodes, "output": f"n{length - 1}"}


def test_long_chain_validates_and_the_node_limit_is_checked_first(
    executors: dict[str, Executor],
) -> None:
    # Listed last node first: ordering places one node per wave. It used to be
    # quadratic (30 s for these 10,000 nodes); now ~0.2 s (50,000: ~1.5 s).
    document = chain(10_000)
    document["nodes"].reverse()
    compiled = compile_flow(document, executors)
    assert [n.id for n in compiled.nodes] == [f"n{i}" for i in range(10_000)]
    assert compiled.sequential
    document["nodes"].append({"type": "nope"})  # other problems are not even looked at
    with pytest.raises(FlowValidationError) as info:
        compile_flow(document, executors, max_nodes=1000)
    assert info.value.problems == [
        (
            "$.nodes",
            "the flow has 10001 nodes, over flows.max_nodes (1000); "
            "split it or raise flows.max_nodes",
        )
    ]
    assert compile_flow(chain(1000), executors, max_nodes=1000).output == "n999"


def test_unknown_node_messages_stay_short_in_a_long_flow(executors: dict[str, Executor]) -> None:
    document = chain(500)
    document["nodes"] += [
        {"id": f"bad{i}", "type": "echo", "inputs": {"x": "gone"}} for i in range(500)
    ]
    with pytest.raises(FlowValidationError) as info:
        compile_flow(document, executors)
    assert len(info.value.problems) == 500
    assert info.value.problems[0] == (
        "$.nodes[500].inputs.x",
        "unknown node 'gone'; nodes: "
        + ", ".join(f"n{i}" for i in range(20))
        + ", ... (1000 in all) (job inputs start with $)",
    )


def _waves(document: dict[str, Any]) -> list[str]:
    """The order defined by passes: each takes every node whose upstream ran before it."""
    pending = [(n["id"], set(n.get("inputs", {}).values())) for n in document["nodes"]]
    done: list[str] = []
    while pending:
        ready = [node for node, upstream in pending if upstream <= set(done)]
        done += ready
        pending = [(node, upstream) for node, upstream in pending if node not in ready]
    return done


@settings(max_examples=200, deadline=None)
@given(data=st.data(), size=st.integers(1, 12))
def test_order_is_waves_in_document_order(
    executors: dict[str, Executor], data: st.DataObject, size: int
) -> None:
    rank = data.draw(st.permutations(range(size)))  # node i may read nodes of lower rank
    nodes = []
    for i in range(size):
        lower = [j for j in range(size) if rank[j] < rank[i]]
        reads = data.draw(st.lists(st.sampled_from(lower), unique=True) if lower else st.just([]))
        inputs = {f"i{j}": f"n{j}" for j in reads}
        nodes.append(
            {"id": f"n{i}", "type": "template", "params": {"template": "t"}, "inputs": inputs}
        )
    document = {"id": "f", "nodes": nodes, "output": "n0"}
    assert [n.id for n in compile_flow(document, executors).nodes] == _waves(document)
