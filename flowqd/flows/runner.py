"""Running a compiled flow: each node as soon as its inputs are ready."""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from flowqd.errors import FlowqdError
from flowqd.executors.base import NodeContext
from flowqd.flows.model import CompiledFlow, CompiledNode, FlowResult, NodeFailed, NodeSource

Emit = Callable[[str, Any], None]
Credential = Callable[[str], Awaitable[str]]


async def run_flow(
    flow: CompiledFlow,
    *,
    job_id: str,
    inputs: Mapping[str, Any],
    emit: Emit,
    credential: Credential,
) -> FlowResult:
    """Run every node of ``flow``; return the output node's value and per-node records.

    Independent branches run concurrently. Events go to ``emit`` in order:
    ``node_start`` and ``node_end`` around each node, the executor's own in
    between. A node that raises or exceeds its ``timeout_s`` stops the other
    nodes and raises NodeFailed. The job timeout is the caller's cancel
    scope: cancellation stops every running node at once.
    """
    run = _Run(flow, job_id, inputs, emit, credential)
    if flow.sequential:
        # A chain (one node, say): no nursery, no task per node. Same events,
        # same records, same outcome as below, at a fraction of the cost.
        for node in flow.nodes:
            await run.node(node)
            if run.failure is not None:
                break
    else:
        await run.concurrently()
    # A failure racing the caller's cancellation: the cancellation wins, so
    # a job timeout is reported as a timeout.
    await trio.lowlevel.checkpoint_if_cancelled()
    if run.failure is not None:
        raise run.failure
    return FlowResult(output=run.outputs[flow.output], nodes=run.records)


class _Run:
    def __init__(
        self,
        flow: CompiledFlow,
        job_id: str,
        inputs: Mapping[str, Any],
        emit: Emit,
        credential: Credential,
    ) -> None:
        self.flow = flow
        self.job_id = job_id
        self.inputs = inputs
        self.emit = emit
        self.credential = credential
        self.outputs: dict[str, Any] = {}
        self.done: dict[str, trio.Event] = {}
        self.records: list[dict[str, Any]] = []
        self.failure: NodeFailed | None = None
        self.nursery: trio.Nursery | None = None

    async def concurrently(self) -> None:
        """Each node in a task of its own, started once its inputs are ready."""
        self.done = {node.id: trio.Event() for node in self.flow.nodes}
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                for node in self.flow.nodes:
                    nursery.start_soon(self.node, node, name=f"flow {self.flow.id} node {node.id}")
        except BaseExceptionGroup as group:
            # Node tasks turn every Exception into NodeFailed, so a group here is
            # normally the caller's cancellation arriving in several nodes: hand
            # the caller one Cancelled, as a plain ``await`` would.
            cancelled, rest = group.split(trio.Cancelled)
            if rest is not None or cancelled is None:
                raise
            raise _first_leaf(cancelled) from None

    async def node(self, node: CompiledNode) -> None:
        if self.done:
            for upstream in node.upstream:
                await self.done[upstream].wait()
        identity = {"node": node.id, "type": node.type, "label": node.label}
        self.emit("node_start", identity)
        started = time.time()
        values: dict[str, Any] = {}
        error: str | None = None
        trace = ""
        output: Any = None
        # No scope at all without a node timeout: most nodes have none.
        scope = trio.move_on_after(node.timeout_s) if node.timeout_s is not None else _NO_SCOPE
        with scope:
            try:
                if node.inputs:
                    values = {name: self._value(source) for name, source in node.inputs}
                # Positional (job_id, node_id, inputs, params, flow_inputs, emit,
                # credential): this runs for every node of every job.
                ctx = NodeContext(self.job_id, node.id, values, node.params, self.inputs,
                                  self.emit, self.credential)
                output = await node.executor.run(ctx)
            except Exception as exc:
                error = describe_exception(exc)
                trace = "".join(traceback.format_exception(exc))
        if scope.cancelled_caught and error is None:
            error = (
                f"timed out after {node.timeout_s:g} s (the node's timeout_s); "
                "raise timeout_s or make the node faster"
            )
        record: dict[str, Any] = {
            "nodeId": node.id,
            "nodeLabel": node.label,
            "type": node.type,
            "status": "ERROR" if error is not None else "FINISHED",
            "input": values,
            "output": output if error is None else None,
            "previousNodeIds": list(node.upstream),
            "startedAt": started,
            "finishedAt": time.time(),
        }
        if error is not None:
            record["error"] = error
            self.records.append(record)
            self.emit("node_end", {**identity, "status": "ERROR", "error": error})
            if self.failure is None:
                self.failure = NodeFailed(node.id, error, trace, list(self.records))
                if self.nursery is not None:
                    self.nursery.cancel_scope.cancel()
            return
        self.records.append(record)
        self.outputs[node.id] = output
        self.emit("node_end", {**identity, "status": "FINISHED", "output": output})
        if self.done:
            self.done[node.id].set()

    def _value(self, source: NodeSource) -> Any:
        if source.node is not None:
            return self.outputs[source.node]
        value: Any = self.inputs
        for depth, key in enumerate(source.flow_path):
            if not isinstance(value, Mapping) or key not in value:
                if depth == 0:
                    where = "the job's inputs have"
                else:
                    where = "$" + ".".join(source.flow_path[:depth]) + " has"
                have = ", ".join(map(str, value)) if isinstance(value, Mapping) else "not an object"
                raise FlowqdError(
                    f"job input {source.text} was not given ({where}: {have or 'nothing'})"
                )
            value = value[key]
        return value


class _NoScope:
    """Stands in for a node's ``move_on_after`` when the node has no timeout."""

    cancelled_caught = False

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


_NO_SCOPE = _NoScope()

# _Run.node builds NodeContext positionally, in this order.
assert [a.name for a in attrs.fields(NodeContext)] == [
    "job_id", "node_id", "inputs", "params", "flow_inputs", "_emit", "_credential"
]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def describe_exception(exc: BaseException) -> str:
    """A one-line message for people: flowqd's own errors as they are, others with their type."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_exception(sub) for sub in exc.exceptions)
    text = str(exc)
    if isinstance(exc, FlowqdError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
