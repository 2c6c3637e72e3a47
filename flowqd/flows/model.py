"""Compiled flows: what validation produces and the runner executes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from flowqd.errors import FlowqdError
from flowqd.executors.base import Executor, Tool


@attrs.frozen
class NodeSource:
    """Where one input of a node comes from: ``"node_id"`` or ``"$name.key..."``."""

    node: str | None = None  # an upstream node's output
    flow_path: tuple[str, ...] = ()  # a job input: ("question",), ("overrideConfig", "k")

    @property
    def text(self) -> str:
        return self.node if self.node is not None else "$" + ".".join(self.flow_path)


def _upstream(node: CompiledNode) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for _name, source in node.inputs:
        if source.node is not None:
            seen[source.node] = None
    for branch_node in node.when:  # it runs once these chose
        seen[branch_node] = None
    return tuple(seen)


def _identity(node: CompiledNode) -> bytes:
    return orjson.dumps({"node": node.id, "type": node.type, "label": node.label})


@attrs.frozen(eq=False)
class CompiledNode:
    id: str
    type: str
    label: str
    executor: Executor
    params: Any
    inputs: tuple[tuple[str, NodeSource], ...]
    timeout_s: float | None
    # Its "when": branching node id -> the outcomes on which this node runs.
    when: Mapping[str, frozenset[str]] = attrs.Factory(dict)
    # A tool node's description and parameters (it runs only when called);
    # the tools this node may call (its "tools" field).
    tool: Tool | None = None
    tools: tuple[Tool, ...] = ()
    # Upstream node ids, in input order, without repeats, then the nodes of
    # its "when". Computed once: the runner reads it for every node of every job.
    upstream: tuple[str, ...] = attrs.field(
        init=False, default=attrs.Factory(_upstream, takes_self=True)
    )
    # Its node_start event's data as JSON, and its node_end event's up to the
    # output, when finished: the runner writes them for every node of every job.
    start_doc: orjson.Fragment = attrs.field(
        init=False, default=attrs.Factory(lambda n: orjson.Fragment(_identity(n)), takes_self=True)
    )
    finished_prefix: bytes = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda n: _identity(n)[:-1] + b',"status":"FINISHED","output":', takes_self=True
        ),
    )


@attrs.frozen(eq=False)
class Branching:
    """How a flow whose nodes have ``when`` runs (flows/branches.py): made at registration."""

    roots: tuple[CompiledNode, ...]  # the nodes without upstream
    # Node id -> the nodes that read it or name it in their "when".
    consumers: Mapping[str, tuple[CompiledNode, ...]]


def _is_chain(flow: CompiledFlow) -> bool:
    if flow.branching is not None:
        return False
    return all(flow.nodes[i - 1].id in node.upstream for i, node in enumerate(flow.nodes) if i > 0)


@attrs.frozen(eq=False)
class CompiledFlow:
    """A validated flow. ``nodes`` are in a topological order (document order among peers)."""

    id: str
    nodes: tuple[CompiledNode, ...]
    output: str
    document: dict[str, Any]  # as registered, for GET /flows/{id}
    # Top-level job inputs the nodes read through ``$name`` sources
    # (e.g. {"question"}); executors may also read ``ctx.flow_inputs`` directly.
    flow_inputs: frozenset[str]
    version: int | None = None
    # "output" as a list: the first of these that ran is the result (output is
    # the first). A flow with "when" gets ``branching``: skips, not the paths below.
    outputs: tuple[str, ...] = attrs.Factory(lambda self: (self.output,), takes_self=True)
    branching: Branching | None = None
    # Tool nodes by id: not in ``nodes``, the graph never runs them on its own.
    tools: dict[str, CompiledNode] = attrs.Factory(dict)
    # The default priority of its jobs (the document's "priority"; 0: none).
    priority: int = 0
    # The queue its jobs go to (the document's "queue"); None: the default queue.
    queue: str | None = None
    # Every node needs the one before it: no two nodes can ever run at the
    # same time, so the runner runs them one after another without a nursery.
    sequential: bool = attrs.field(init=False, default=attrs.Factory(_is_chain, takes_self=True))


@attrs.frozen
class FlowResult:
    """A finished run: the output node's value and per-node records in finish order
    (a skipped node's when it was skipped)."""

    output: Any
    nodes: list[dict[str, Any]]


class NodeFailed(FlowqdError):
    """Raised by ``run_flow`` when a node raised or exceeded its ``timeout_s``.

    ``message`` is for people (job error, HTTP answers); ``traceback`` is for
    the job record and the log only; ``nodes`` holds the per-node records so
    far, the failed node's last. Fix the node's params or the service it calls.
    """

    def __init__(
        self, node_id: str, message: str, traceback: str, nodes: list[dict[str, Any]]
    ) -> None:
        self.node_id = node_id
        self.message = message
        self.traceback = traceback
        self.nodes = nodes
        super().__init__(f"node {node_id!r} failed: {message}")
