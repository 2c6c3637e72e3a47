"""Flow documents -> CompiledFlow, reporting every problem with its JSON path.

Document shape::

    {"id": "greet",
     "nodes": [{"id": "prompt", "type": "template", "label": "Prompt",
                "params": {...}, "inputs": {"name": "<source>"}, "timeout_s": 10,
                "when": {"route": ["billing"]}}],
     "output": "prompt",
     "priority": 0, "queue": "bulk"}

``priority`` (optional) is the default priority of the flow's jobs (see
``queue.policy``); a job may set its own.

An input source is an upstream node id (``"prompt"``) or a job input written
``$name``, with dots reaching into objects: ``$question``,
``$overrideConfig.temperature``.

``when`` makes a node run only on some outcomes of branching nodes (a
``condition``, say); ``output`` may then list nodes, the first that ran
being the result (flows/branches.py checks every combination).

``queue`` (optional) names the queue the flow's jobs go to (the default
queue, ``queue.name``, when left out).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from flowqd.errors import FlowValidationError
from flowqd.executors.base import Executor, Tool
from flowqd.flows import branches
from flowqd.flows.model import CompiledFlow, CompiledNode, NodeSource
from flowqd.flows.params import Problem, key_path, show, structure_params
from flowqd.jobs import PRIORITY_MAX, PRIORITY_MIN

TOP_KEYS = ("id", "nodes", "output", "description", "priority", "queue")
NODE_KEYS = ("id", "type", "label", "params", "inputs", "timeout_s", "when", "tool", "tools")
TOOL_KEYS = ("description", "parameters")
FLOW_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
NODE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
FLOW_INPUT = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)((?:\.[^.]+)*)")


def parse_source(text: str) -> NodeSource | None:
    """``"node"`` or ``"$a.b"`` -> NodeSource; None when the syntax is wrong."""
    if text.startswith("$"):
        match = FLOW_INPUT.fullmatch(text)
        if match is None:
            return None
        rest = match.group(2)
        return NodeSource(flow_path=(match.group(1), *(rest[1:].split(".") if rest else ())))
    return NodeSource(node=text) if NODE_ID.fullmatch(text) else None


class _Draft:
    """One node as far as it could be read; None fields were invalid."""

    def __init__(self, index: int, raw: Mapping[str, Any]) -> None:
        self.index = index
        self.path = f"$.nodes[{index}]"
        self.raw = raw
        self.id: str | None = None
        self.type: str | None = None
        self.executor: Executor | None = None
        self.label: str | None = None
        self.params: Any = None
        self.params_ok = False
        self.inputs: dict[str, tuple[str, NodeSource]] = {}  # name -> (path, source)
        self.timeout_s: float | None = None
        self.when: dict[str, tuple[str, list[str]]] = {}  # node -> (path, outcomes)
        self.outcomes: tuple[str, ...] | None = None  # a branching node's, if readable
        self.tool: Tool | None = None  # set for a tool node
        self.tools: list[tuple[str, str]] = []  # (path, tool node id) it offers


def compile_flow(
    document: Mapping[str, Any],
    executors: Mapping[str, Executor],
    *,
    max_nodes: int | None = None,
    queues: Collection[str] | None = None,
) -> CompiledFlow:
    """Validate a flow document against the known executors.

    ``queues``: the configured queues, one of which a ``queue`` key must name
    (None: any well-formed name, for flows already registered).

    ``max_nodes`` (``flows.max_nodes``) is checked before anything else, so an
    oversized flow costs nothing more. Raises FlowValidationError listing every
    problem as ``(json_path, message)``; never raises anything else.
    """
    problems: list[Problem] = []
    if not isinstance(document, Mapping):
        raise FlowValidationError(
            [("$", f"expected a flow object with id, nodes and output, got {show(document)}")]
        )
    nodes = document.get("nodes")
    if max_nodes is not None and isinstance(nodes, list) and len(nodes) > max_nodes:
        raise FlowValidationError(
            [
                (
                    "$.nodes",
                    f"the flow has {len(nodes)} nodes, over flows.max_nodes ({max_nodes}); "
                    "split it or raise flows.max_nodes",
                )
            ]
        )
    for key in document:
        if key not in TOP_KEYS:
            problems.append((key_path("$", key), f"unknown key; known keys: {', '.join(TOP_KEYS)}"))
    flow_id = _flow_id(document, problems)
    priority = _priority(document, problems)
    queue = _queue(document, queues, problems)
    drafts = _nodes(document, executors, problems)
    by_id: dict[str, _Draft] = {}
    for draft in drafts:
        if draft.id is None:
            continue
        if draft.id in by_id:
            problems.append(
                (
                    f"{draft.path}.id",
                    f"duplicate node id {draft.id!r} (first at {by_id[draft.id].path})",
                )
            )
        else:
            by_id[draft.id] = draft
    for draft in drafts:
        for name, (path, source) in list(draft.inputs.items()):
            if source.node is not None and source.node not in by_id:
                problems.append((path, _unknown_node(source.node, by_id)))
                del draft.inputs[name]
    problems.extend(_when_refs(drafts, by_id))
    problems.extend(_tool_uses(drafts, by_id))
    problems.extend(_cycles(drafts, by_id))
    output = _output(document, by_id, problems)
    for index, node in enumerate(output or ()):
        if "tool" in by_id[node].raw:
            where = f"$.output[{index}]" if isinstance(document["output"], list) else "$.output"
            problems.append((where, _is_tool(node)))
    for draft in drafts:
        problems.extend(_executor_check(draft))
    if problems:
        raise FlowValidationError(problems)
    assert flow_id is not None and output is not None
    flow = _compiled(flow_id, drafts, output, document, priority)
    if flow.branching is not None or len(flow.outputs) > 1:
        problems = branches.check(
            flow,
            {d.id: d.path for d in drafts if d.id is not None},
            {n: by_id[n].outcomes or () for d in drafts for n in d.when},
        )
        if problems:
            raise FlowValidationError(problems)
    return attrs.evolve(flow, queue=queue)


def _priority(document: Mapping[str, Any], problems: list[Problem]) -> int:
    priority = document.get("priority", 0)
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not PRIORITY_MIN <= priority <= PRIORITY_MAX
    ):
        problems.append(
            (
                "$.priority",
                f"expected an integer from {PRIORITY_MIN} to {PRIORITY_MAX} (higher runs "
                f"first, 0 is the default), got {show(priority)}",
            )
        )
        return 0
    return priority


def _queue(
    document: Mapping[str, Any], queues: Collection[str] | None, problems: list[Problem]
) -> str | None:
    queue = document.get("queue")
    if queue is None:
        return None
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        problems.append(
            ("$.queue", f"expected a queue name (letters, digits and _ . : -), got {show(queue)}")
        )
        return None
    if queues is not None and queue not in queues:
        problems.append(
            (
                "$.queue",
                f"unknown queue {queue!r}; configured queues: {', '.join(queues)} "
                f"(declare one with a [queues.{queue}] table in flowqd.toml)",
            )
        )
        return None
    return queue


def _flow_id(document: Mapping[str, Any], problems: list[Problem]) -> str | None:
    if "id" not in document:
        problems.append(("$.id", 'missing; give the flow an id such as "greet"'))
        return None
    flow_id = document["id"]
    if not isinstance(flow_id, str) or not FLOW_ID.fullmatch(flow_id):
        problems.append(
            (
                "$.id",
                f"expected 1-128 letters, digits and _ . : - (not starting with . : -), "
                f"got {show(flow_id)}",
            )
        )
        return None
    return flow_id


def _nodes(
    document: Mapping[str, Any], executors: Mapping[str, Executor], problems: list[Problem]
) -> list[_Draft]:
    raw_nodes = document.get("nodes")
    if "nodes" not in document:
        problems.append(("$.nodes", "missing; a flow needs at least one node"))
        return []
    if not isinstance(raw_nodes, list) or not raw_nodes:
        problems.append(("$.nodes", f"expected a non-empty list of nodes, got {show(raw_nodes)}"))
        return []
    drafts = []
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, Mapping):
            problems.append((f"$.nodes[{index}]", f"expected a node object, got {show(raw)}"))
            continue
        draft = _Draft(index, raw)
        _read_node(draft, executors, problems)
        drafts.append(draft)
    return drafts


def _read_node(draft: _Draft, executors: Mapping[str, Executor], problems: list[Problem]) -> None:
    raw, path = draft.raw, draft.path
    for key in raw:
        if key not in NODE_KEYS:
            problems.append(
                (key_path(path, key), f"unknown key; known keys: {', '.join(NODE_KEYS)}")
            )
    node_id = raw.get("id")
    if "id" not in raw:
        problems.append((f"{path}.id", "missing"))
    elif not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        problems.append(
            (
                f"{path}.id",
                f"expected 1-128 letters, digits, _ and - (not starting with -), "
                f"got {show(node_id)}",
            )
        )
    else:
        draft.id = node_id
    node_type = raw.get("type")
    if "type" not in raw:
        problems.append((f"{path}.type", "missing; known types: " + _known(executors)))
    elif not isinstance(node_type, str) or node_type not in executors:
        problems.append(
            (
                f"{path}.type",
                f"unknown node type {show(node_type)}; known types: {_known(executors)}",
            )
        )
    else:
        draft.type = node_type
        draft.executor = executors[node_type]
    label = raw.get("label", draft.id)
    if label is not None and not isinstance(label, str):
        problems.append((f"{path}.label", f"expected a string, got {show(label)}"))
    else:
        draft.label = label
    timeout = raw.get("timeout_s")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            problems.append(
                (f"{path}.timeout_s", f"expected a number of seconds > 0, got {show(timeout)}")
            )
        else:
            draft.timeout_s = float(timeout)
    if draft.executor is not None:
        params, params_problems = structure_params(
            draft.executor.params, raw.get("params", {}), f"{path}.params"
        )
        problems.extend(params_problems)
        draft.params, draft.params_ok = params, not params_problems
    elif "params" in raw and not isinstance(raw["params"], Mapping):
        problems.append((f"{path}.params", f"expected an object, got {show(raw['params'])}"))
    _read_inputs(draft, problems)
    if draft.executor is not None and draft.executor.branches is not None and draft.params_ok:
        draft.outcomes = _outcomes(draft, draft.executor, problems)
    if "when" in raw:
        _read_when(draft, problems)
    if "tool" in raw or "tools" in raw:
        _read_tool(draft, problems)


def _read_inputs(draft: _Draft, problems: list[Problem]) -> None:
    inputs = draft.raw.get("inputs", {})
    path = f"{draft.path}.inputs"
    if not isinstance(inputs, Mapping):
        problems.append((path, f"expected an object of input name -> source, got {show(inputs)}"))
        return
    for name, text in inputs.items():
        item_path = key_path(path, name)
        if not isinstance(name, str) or not INPUT_NAME.fullmatch(name):
            problems.append(
                (item_path, "input names are letters, digits and _ (not starting with a digit)")
            )
            continue
        source = parse_source(text) if isinstance(text, str) else None
        if source is None:
            problems.append(
                (
                    item_path,
                    "expected a node id, or a job input as $name or $name.key "
                    f"(e.g. $question, $overrideConfig.temperature), got {show(text)}",
                )
            )
            continue
        draft.inputs[name] = (item_path, source)


SHOWN_NODE_IDS = 20  # a long flow's every bad reference must not list every node


def _unknown_node(node: str, by_id: Mapping[str, _Draft]) -> str:
    shown = ", ".join(itertools.islice(by_id, SHOWN_NODE_IDS)) or "none"
    if len(by_id) > SHOWN_NODE_IDS:
        shown += f", ... ({len(by_id)} in all)"
    return f"unknown node {node!r}; nodes: {shown} (job inputs start with $)"


def _cycles(drafts: list[_Draft], by_id: Mapping[str, _Draft]) -> list[Problem]:
    """One problem per cycle (strongly connected component), at its first node."""
    edges = {
        d.id: [s.node for _p, s in d.inputs.values() if s.node is not None] + list(d.when)
        for d in drafts
        if d.id is not None and by_id[d.id] is d
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    # Iterative Tarjan: flows come from users, recursion depth must not.
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    components.append(component)
    problems = []
    for component in components:
        members = sorted(component, key=lambda n: by_id[n].index)
        first = by_id[members[0]]
        problems.append(
            (f"{first.path}.inputs", "cycle: " + _cycle_text(members[0], set(members), edges))
        )
    problems.sort(key=lambda p: p[0])
    return problems


def _cycle_text(start: str, members: set[str], edges: Mapping[str, list[str]]) -> str:
    """``a -> b -> a``, following input edges backwards (b is an input of a...)."""
    # Walk data flow direction: from a producer to its consumer.
    consumers: dict[str, list[str]] = {m: [] for m in members}
    for node in members:
        for upstream in edges[node]:
            if upstream in members:
                consumers[upstream].append(node)
    path = [start]
    seen = {start}
    while True:
        nxt = consumers[path[-1]][0]
        if nxt in seen:
            path.append(nxt)
            return " -> ".join(path[path.index(nxt) :])
        path.append(nxt)
        seen.add(nxt)


def _output(
    document: Mapping[str, Any], by_id: Mapping[str, _Draft], problems: list[Problem]
) -> tuple[str, ...] | None:
    """The output node, or the output nodes of a list (the first that ran is the result)."""
    if "output" not in document:
        problems.append(("$.output", "missing; name the node whose output is the flow's result"))
        return None
    output = document["output"]
    if isinstance(output, list) and output:
        return _outputs(output, by_id, problems)
    if not isinstance(output, str):
        problems.append(
            ("$.output", f"expected a node id or a non-empty list of node ids, got {show(output)}")
        )
        return None
    if output not in by_id:
        problems.append(("$.output", _unknown_node(output, by_id)))
        return None
    return (output,)


def _outputs(
    output: list[Any], by_id: Mapping[str, _Draft], problems: list[Problem]
) -> tuple[str, ...] | None:
    found: dict[str, str] = {}
    ok = True
    for index, item in enumerate(output):
        path = f"$.output[{index}]"
        if not isinstance(item, str):
            problems.append((path, f"expected a node id, got {show(item)}"))
        elif item not in by_id:
            problems.append((path, _unknown_node(item, by_id)))
        elif item in found:
            problems.append((path, f"node {item!r} is listed twice (first at {found[item]})"))
        else:
            found[item] = path
            continue
        ok = False
    return tuple(found) if ok else None


def _executor_check(draft: _Draft) -> list[Problem]:
    executor = draft.executor
    if executor is None or executor.check is None or not draft.params_ok:
        return []
    if draft.tool is not None:
        return _tool_check(draft, executor)
    try:
        return [
            (f"{draft.path}.{relative}" if relative else draft.path, message)
            for relative, message in executor.check(draft.params, frozenset(draft.inputs))
        ]
    except Exception as exc:
        return [(draft.path, f"the {executor.type!r} executor's check failed: {exc!r}")]


def _outcomes(draft: _Draft, executor: Executor, problems: list[Problem]) -> tuple[str, ...] | None:
    """What a branching node can choose (its executor's ``branches``), checked."""
    assert executor.branches is not None
    try:
        outcomes = tuple(executor.branches(draft.params))
    except Exception as exc:
        problems.append((draft.path, f"the {executor.type!r} executor's branches failed: {exc!r}"))
        return None
    if not outcomes or not all(isinstance(o, str) for o in outcomes):
        problems.append(
            (
                draft.path,
                f"the {executor.type!r} executor's branches gave {show(outcomes)}, "
                "not a non-empty list of outcome names",
            )
        )
        return None
    return outcomes


def _read_when(draft: _Draft, problems: list[Problem]) -> None:
    """``"when": {"route": "billing"}`` or ``{"route": ["billing", "refund"]}``: its shape."""
    when, path = draft.raw["when"], f"{draft.path}.when"
    if not isinstance(when, Mapping) or not when:
        problems.append(
            (
                path,
                "expected an object of branching node id -> the outcome (or list of outcomes) "
                f'on which this node runs, such as {{"route": "billing"}}, got {show(when)}',
            )
        )
        return
    for node, outcomes in when.items():
        item = key_path(path, node)
        if not isinstance(node, str) or not NODE_ID.fullmatch(node):
            problems.append((item, f"expected a branching node's id as the key, got {show(node)}"))
            continue
        values = outcomes if isinstance(outcomes, list) else [outcomes]
        if not values or not all(isinstance(v, str) for v in values):
            problems.append(
                (
                    item,
                    f"expected an outcome name or a non-empty list of them, got {show(outcomes)}",
                )
            )
            continue
        draft.when[node] = (item, values)


def _when_refs(drafts: list[_Draft], by_id: Mapping[str, _Draft]) -> list[Problem]:
    """Each ``when`` names a branching node and outcomes it can choose."""
    problems: list[Problem] = []
    for draft in drafts:
        for node, (path, values) in list(draft.when.items()):
            target = by_id.get(node)
            if target is None:
                problems.append((path, _unknown_node(node, by_id)))
                del draft.when[node]
            elif "tool" in target.raw:
                problems.append((path, _is_tool(node)))
                del draft.when[node]
            elif target.executor is not None and target.executor.branches is None:
                problems.append(
                    (
                        path,
                        f"node {node!r} is a {target.type} node, which does not choose a branch; "
                        "when names a node of a branching type such as condition",
                    )
                )
                del draft.when[node]
            elif target.outcomes is not None:
                for value in values:
                    if value not in target.outcomes:
                        problems.append(
                            (
                                path,
                                f"{node!r} has no outcome {value!r}; its outcomes: "
                                f"{', '.join(target.outcomes)}",
                            )
                        )
    return problems


def _read_tool(draft: _Draft, problems: list[Problem]) -> None:
    """The ``tool`` field (this node is a tool) and the ``tools`` field (it calls some)."""
    raw, path = draft.raw, draft.path
    if "tool" in raw:
        draft.tool = _tool(draft, raw["tool"], f"{path}.tool", problems)
        if "inputs" in raw:
            problems.append(
                (
                    f"{path}.inputs",
                    "a tool node takes its inputs from the arguments the model sends "
                    "(tool.parameters), not from inputs; remove inputs",
                )
            )
        if "when" in raw:
            problems.append(
                (
                    f"{path}.when",
                    "a tool node runs whenever a node offered it calls it; remove when "
                    "(give the calling node the when instead)",
                )
            )
        if "tools" in raw:
            problems.append(
                (f"{path}.tools", "a tool node cannot offer tools itself; remove tools")
            )
            return
    if "tools" not in raw:
        return
    tools = raw["tools"]
    if not isinstance(tools, list) or not tools:
        problems.append(
            (f"{path}.tools", f"expected a non-empty list of tool node ids, got {show(tools)}")
        )
        return
    seen: set[str] = set()
    for index, name in enumerate(tools):
        item = f"{path}.tools[{index}]"
        if not isinstance(name, str) or not NODE_ID.fullmatch(name):
            problems.append((item, f"expected a tool node's id, got {show(name)}"))
        elif name in seen:
            problems.append((item, f"tool {name!r} is listed twice"))
        else:
            seen.add(name)
            draft.tools.append((item, name))


def _tool(draft: _Draft, raw: Any, path: str, problems: list[Problem]) -> Tool | None:
    if not isinstance(raw, Mapping):
        problems.append(
            (path, f"expected an object with description and parameters, got {show(raw)}")
        )
        return None
    ok = True
    for key in raw:
        if key not in TOOL_KEYS:
            problems.append(
                (key_path(path, key), f"unknown key; known keys: {', '.join(TOOL_KEYS)}")
            )
            ok = False
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        problems.append(
            (
                f"{path}.description",
                "missing or empty: say what the tool does, the model reads it to choose "
                f"(got {show(description)})",
            )
        )
        ok = False
    parameters = raw.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        problems.append(
            (
                f"{path}.parameters",
                'expected a JSON schema of an object, {"type": "object", "properties": '
                f"{{...}}}}, got {show(parameters)}",
            )
        )
        ok = False
    elif not isinstance(parameters.get("properties", {}), Mapping):
        problems.append(
            (
                f"{path}.parameters.properties",
                f"expected an object of argument name -> schema, got "
                f"{show(parameters['properties'])}",
            )
        )
        ok = False
    if not ok or draft.id is None or not isinstance(description, str):
        return None
    return Tool(draft.id, description.strip(), dict(parameters))


def _is_tool(node: str) -> str:
    return (
        f"node {node!r} is a tool: it runs only when a node offered it calls it, so it "
        "has no output here; read the output of the node that calls it"
    )


def _tool_uses(drafts: list[_Draft], by_id: Mapping[str, _Draft]) -> list[Problem]:
    """Tools offered must be tool nodes; tool nodes are never another node's input.

    A node with a "tool" field counts as a tool here even when the field is
    wrong: that is reported once, where it is wrong.
    """
    problems: list[Problem] = []
    for draft in drafts:
        for path, source in draft.inputs.values():
            if source.node is not None and "tool" in by_id[source.node].raw:
                problems.append((path, _is_tool(source.node)))
        for path, name in draft.tools:
            if name not in by_id:
                problems.append((path, _unknown_node(name, by_id)))
            elif "tool" not in by_id[name].raw:
                problems.append(
                    (
                        path,
                        f'node {name!r} is not a tool: give it a "tool" field with a '
                        "description and parameters",
                    )
                )
    return problems


def _tool_check(draft: _Draft, executor: Executor) -> list[Problem]:
    """The executor's check, as if the tool's arguments were its inputs."""
    assert draft.tool is not None and executor.check is not None
    properties = draft.tool.parameters.get("properties", {})
    where = f"{draft.path}.tool.parameters.properties"

    def at(relative: str) -> str:
        if relative.startswith("inputs"):  # "inputs", "inputs.x": the arguments
            return where + relative.removeprefix("inputs")
        return f"{draft.path}.{relative}" if relative else draft.path

    try:
        return [
            (at(relative), message)
            for relative, message in executor.check(draft.params, frozenset(properties))
        ]
    except Exception as exc:
        return [(draft.path, f"the {executor.type!r} executor's check failed: {exc!r}")]


def _known(executors: Mapping[str, Executor]) -> str:
    return ", ".join(sorted(executors)) or "none (no executor plugins loaded)"


def _compiled(
    flow_id: str,
    drafts: list[_Draft],
    output: tuple[str, ...],
    document: Mapping[str, Any],
    priority: int,
) -> CompiledFlow:
    nodes = {}
    flow_inputs: set[str] = set()
    tools = {d.id: d.tool for d in drafts if d.tool is not None}
    for draft in drafts:
        assert draft.id is not None and draft.type is not None and draft.executor is not None
        inputs = tuple((name, source) for name, (_p, source) in draft.inputs.items())
        flow_inputs.update(s.flow_path[0] for _n, s in inputs if s.node is None)
        executor = draft.executor
        if draft.outcomes is not None:  # its output must be one of them
            executor = branches.choosing(executor, draft.outcomes)
        nodes[draft.id] = CompiledNode(
            id=draft.id,
            type=draft.type,
            label=draft.label if draft.label is not None else draft.id,
            executor=executor,
            params=draft.params,
            inputs=inputs,
            timeout_s=draft.timeout_s,
            when={node: frozenset(values) for node, (_p, values) in draft.when.items()},
            tool=draft.tool,
            tools=tuple(tools[name] for _p, name in draft.tools),
        )
    # Tool nodes run only when called: the graph, and its branches, leave them out.
    ordered = _topological([n for n in nodes.values() if n.tool is None])
    return CompiledFlow(
        id=flow_id,
        nodes=ordered,
        output=output[0],
        document=dict(document),
        flow_inputs=frozenset(flow_inputs),
        outputs=output,
        branching=branches.plan(ordered),
        tools={n.id: n for n in nodes.values() if n.tool is not None},
        priority=priority,
    )


def _topological(nodes: list[CompiledNode]) -> tuple[CompiledNode, ...]:
    """Nodes in waves, document order within a wave.

    A wave holds every node whose upstream nodes all sit in earlier waves, so
    a node's wave is its depth: the longest input path back to a node without
    upstream. One pass over the edges (Kahn's algorithm) finds every depth.
    """
    consumers: dict[str, list[str]] = {node.id: [] for node in nodes}
    waiting: dict[str, int] = {}
    for node in nodes:
        waiting[node.id] = len(node.upstream)
        for upstream in node.upstream:
            consumers[upstream].append(node.id)
    depth = dict.fromkeys(consumers, 0)
    ready = [node.id for node in nodes if not node.upstream]
    for node_id in ready:  # validation ruled out cycles, so every node gets here once
        for consumer in consumers[node_id]:
            depth[consumer] = max(depth[consumer], depth[node_id] + 1)
            waiting[consumer] -= 1
            if not waiting[consumer]:
                ready.append(consumer)
    return tuple(sorted(nodes, key=lambda node: depth[node.id]))  # stable: document order
