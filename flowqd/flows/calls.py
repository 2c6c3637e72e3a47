"""Tool calls: a node running a tool node of its flow through ``ctx.call_tool``.

A call is a node run of its own (the tool node's executor, params, timeout_s,
output limits and credential redaction), recorded on the job with
``calledBy`` and wrapped in ``node_start``/``node_end`` events that say
``calledBy`` too. Unlike a node of the graph, a failing call does not fail the
job: it raises NodeError in the caller, which may carry on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from flowqd.errors import NodeError
from flowqd.executors.base import NodeContext, Tool
from flowqd.flows.model import CompiledNode
from flowqd.flows.outputs import JSON_KINDS, not_json
from flowqd.flows.params import show

if TYPE_CHECKING:
    from flowqd.flows.runner import _Run


@attrs.frozen
class ToolingContext(NodeContext):
    """The context of a node offered tools: ``tools`` and ``call_tool`` work."""

    _tools: tuple[Tool, ...] = ()
    _call: Callable[[str, Mapping[str, Any]], Awaitable[Any]] | None = attrs.field(
        default=None, repr=False
    )

    @property
    def tools(self) -> tuple[Tool, ...]:
        return self._tools

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> Any:
        assert self._call is not None
        return await self._call(name, arguments)


def offer(run: _Run, node: CompiledNode, ctx: NodeContext) -> NodeContext:
    """``ctx`` with the node's tools and the means to call them."""
    return ToolingContext(
        ctx.job_id,
        ctx.node_id,
        ctx.inputs,
        ctx.params,
        ctx.flow_inputs,
        run.node_emit,
        run.open_credential,
        run.history,
        tools=node.tools,
        call=partial(call_tool, run, node),
    )


async def call_tool(
    run: _Run, caller: CompiledNode, name: str, arguments: Mapping[str, Any]
) -> Any:
    """Run tool node ``name`` for ``caller``; its output, or NodeError saying why not."""
    if not any(tool.name == name for tool in caller.tools):
        offered = ", ".join(tool.name for tool in caller.tools)
        raise NodeError(f"unknown tool {name!r}: node {caller.id!r} offers {offered}")
    if not isinstance(arguments, Mapping):
        raise NodeError(f"the arguments of tool {name!r} must be an object, got {show(arguments)}")
    try:
        orjson.dumps(arguments)  # they go on the job record
    except TypeError as exc:
        raise NodeError(
            f"the arguments of tool {name!r} are not JSON: {not_json(arguments, exc)}"
        ) from None
    node = run.flow.tools[name]
    # Imported here: the runner imports this module.
    from flowqd.flows.runner import _exact, _storable, describe_exception

    identity = {"node": node.id, "type": node.type, "label": node.label, "calledBy": caller.id}
    run.emit("node_start", identity)
    started = time.time()
    values = dict(arguments)
    error: str | None = None
    output: Any = None
    doc: Any = None
    ctx = NodeContext(
        run.job_id,
        node.id,
        values,
        node.params,
        run.inputs,
        run.node_emit,
        run.open_credential,
        run.history,
    )
    timeout = node.timeout_s if node.timeout_s is not None else float("inf")
    with trio.move_on_after(timeout) as scope:
        try:
            output = await node.executor.run(ctx)
        except Exception as exc:
            # The message goes back to the caller (and the model): no traceback.
            error = _storable(describe_exception(exc))
    if error is None:
        if scope.cancelled_caught:
            error = (
                f"timed out after {node.timeout_s:g} s (the tool node's timeout_s); "
                "raise timeout_s or make the tool faster"
            )
        else:
            if run.redactor is not None:
                output = run.redactor.value(output)
            try:
                data = orjson.dumps(output)
            except TypeError as exc:
                error = (
                    f"output is not JSON: {not_json(output, exc)}; return "
                    f"JSON-compatible data ({JSON_KINDS})"
                )
            else:
                if len(data) > run.small_enough:
                    # A tool is never the output node: only the node limit applies.
                    error = run._too_large(node, len(data))
                doc = orjson.Fragment(_exact(data)) if run.encoded else output
    if run.redactor is not None:
        error = run.redactor.text(error) if error is not None else None
        values = run.redactor.value(values)
    record: dict[str, Any] = {
        "nodeId": node.id,
        "nodeLabel": node.label,
        "type": node.type,
        "status": "ERROR" if error is not None else "FINISHED",
        "input": values,
        "output": doc if error is None else None,
        "previousNodeIds": [caller.id],
        "calledBy": caller.id,
        "startedAt": started,
        "finishedAt": time.time(),
    }
    # With its input: a Flowise stream shows the call's arguments as the job does.
    end: dict[str, Any] = {**identity, "status": record["status"], "input": values}
    if ctx._usage is not None:
        record["usage"] = end["usage"] = ctx._usage
    if error is not None:
        record["error"] = end["error"] = error
        run.records.append(record)
        run.emit("node_end", end)
        raise NodeError(f"tool {name!r} failed: {error}")
    run.records.append(record)
    end["output"] = doc
    run.emit("node_end", end)
    return output
