"""Running a compiled flow: each node as soon as its inputs are ready."""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import orjson
import trio

from flowqd import tracing
from flowqd.config import LimitsConfig
from flowqd.errors import FlowqdError
from flowqd.executors.base import HistoryReader, NodeContext
from flowqd.flows import branches, calls
from flowqd.flows.model import CompiledFlow, CompiledNode, FlowResult, NodeFailed, NodeSource
from flowqd.flows.outputs import JSON_KINDS, encode_event, not_json
from flowqd.redaction import Redactor

Emit = Callable[[str, Any], None]
Credential = Callable[[str], Awaitable[str]]

_DEFAULT_LIMITS = LimitsConfig()
_dumps = orjson.dumps
_Fragment = orjson.Fragment


def _exact(encoded: bytes) -> bytes:
    # orjson's bytes keep the buffer they were written in (4 KiB for a short
    # token, ten times the size of a large document): kept until the flush,
    # 100,000 token events held 400 MB. A copy is exactly as long as its content.
    return bytes(memoryview(encoded))


async def run_flow(
    flow: CompiledFlow,
    *,
    job_id: str,
    inputs: Mapping[str, Any],
    emit: Emit,
    credential: Credential,
    limits: LimitsConfig = _DEFAULT_LIMITS,
    encoded: bool = False,
    trace: tracing.Span | None = None,
    history: HistoryReader | None = None,
) -> FlowResult:
    """Run every node of ``flow``; return the output node's value and per-node records.

    Independent branches run concurrently. Events go to ``emit`` in order:
    ``node_start`` and ``node_end`` around each node, the executor's own in
    between. A node that raises or exceeds its ``timeout_s`` stops the other
    nodes and raises NodeFailed. The job timeout is the caller's cancel
    scope: cancellation stops every running node at once.

    A node also fails when its output or an event it emits is not JSON or is
    larger than ``limits`` allow (the output node's output is the job's
    result), and the credentials a node opens are redacted from everything
    the run writes after. With ``encoded``, the values the checks encoded go
    out as ``orjson.Fragment`` (node outputs in records, events and the
    result; executors' event data), for a caller that stores them as JSON.
    With ``trace`` (the job's span), each node gets a span under it.
    ``history`` reads the job's stored conversation, for ``ctx.history``.

    In a flow with branches (nodes with ``when``), a node that is not to run
    gets a ``node_skipped`` event and a SKIPPED record instead, and the
    result is the first node of the flow's ``outputs`` that ran.
    """
    run = _Run(flow, job_id, inputs, emit, credential, limits, encoded, trace, history)
    # A local, not an attribute: a bound method kept on ``run`` would make a
    # reference cycle, left for the garbage collector with all the job's data.
    step = run.node if trace is None else run.traced_node
    answer = flow.output
    if flow.sequential:
        # A chain (one node, say): no nursery, no task per node. Same events,
        # same records, same outcome as below, at a fraction of the cost.
        for node in flow.nodes:
            await step(node)
            if run.failure is not None:
                break
    elif flow.branching is None:
        await run.concurrently(step)
    else:
        answer = await branches.run(run, step, flow.branching)
    # A failure racing the caller's cancellation: the cancellation wins, so
    # a job timeout is reported as a timeout.
    await trio.lowlevel.checkpoint_if_cancelled()
    if run.failure is not None:
        raise run.failure
    return FlowResult(run.docs[answer], run.records)


class _Run:
    # One a job, its attributes read all through the job's nodes.
    __slots__ = (
        "credential",
        "docs",
        "done",
        "emit",
        "encoded",
        "failure",
        "flow",
        "history",
        "inputs",
        "job_id",
        "limits",
        "nursery",
        "outputs",
        "records",
        "redactor",
        "small_enough",
        "trace",
    )

    def __init__(
        self,
        flow: CompiledFlow,
        job_id: str,
        inputs: Mapping[str, Any],
        emit: Emit,
        credential: Credential,
        limits: LimitsConfig,
        encoded: bool,
        trace: tracing.Span | None = None,
        history: HistoryReader | None = None,
    ) -> None:
        self.flow = flow
        self.job_id = job_id
        self.inputs = inputs
        self.emit = emit
        self.credential = credential
        self.limits = limits
        # Outputs up to this size pass both limits without looking further.
        self.small_enough = min(limits.max_node_output_bytes, limits.max_result_bytes)
        self.encoded = encoded
        # Made when a node opens a credential: jobs that open none pay nothing.
        self.redactor: Redactor | None = None
        self.outputs: dict[str, Any] = {}
        # Outputs as they are written: the same values, or their Fragments.
        self.docs: dict[str, Any] = {} if encoded else self.outputs
        self.done: dict[str, trio.Event] = {}
        self.records: list[dict[str, Any]] = []
        self.failure: NodeFailed | None = None
        self.nursery: trio.Nursery | None = None
        self.trace = trace
        self.history = history

    async def concurrently(self, step: Callable[[CompiledNode], Awaitable[None]]) -> None:
        """Each node in a task of its own, started once its inputs are ready."""
        self.done = {node.id: trio.Event() for node in self.flow.nodes}
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                for node in self.flow.nodes:
                    nursery.start_soon(step, node, name=f"flow {self.flow.id} node {node.id}")
        except BaseExceptionGroup as group:
            # Node tasks turn every Exception into NodeFailed, so a group here is
            # normally the caller's cancellation arriving in several nodes: hand
            # the caller one Cancelled, as a plain ``await`` would.
            cancelled, rest = group.split(trio.Cancelled)
            if rest is not None or cancelled is None:
                raise
            raise _first_leaf(cancelled) from None

    async def traced_node(self, node: CompiledNode) -> None:
        """``node`` in a span of its own, from when its inputs are ready."""
        if self.done:
            for upstream in node.upstream:
                await self.done[upstream].wait()
        assert tracing.current is not None and self.trace is not None
        span = tracing.current.start_node(self.trace, node.id, node.type)
        try:
            await self.node(node, span)
        finally:
            # Its record is the last one of its id (none: stopped before it ended).
            record = next((r for r in reversed(self.records) if r["nodeId"] == node.id), None)
            tracing.end_node(span, record)

    async def node(self, node: CompiledNode, span: tracing.Span | None = None) -> None:
        if self.done:
            for upstream in node.upstream:
                await self.done[upstream].wait()
        self.emit("node_start", node.start_doc if self.encoded else _identity(node))
        started = time.time()
        values: dict[str, Any] = {}
        error: str | None = None
        trace = ""
        output: Any = None
        doc: Any = None
        finished = b""  # the output as JSON, once it passed the checks
        ctx: NodeContext | None = None
        # No scope at all without a node timeout: most nodes have none.
        scope = trio.move_on_after(node.timeout_s) if node.timeout_s is not None else _NO_SCOPE
        with scope:
            try:
                if node.inputs:
                    values = {name: self._value(source) for name, source in node.inputs}
                # Positional (job_id, node_id, inputs, params, flow_inputs, emit,
                # credential, history): this runs for every node of every job.
                ctx = NodeContext(
                    self.job_id,
                    node.id,
                    values,
                    node.params,
                    self.inputs,
                    self.node_emit,
                    self.open_credential,
                    self.history,
                )
                if node.tools:
                    ctx = calls.offer(self, node, ctx)
                if span is None:
                    output = await node.executor.run(ctx)
                else:  # the current span of this task while the executor runs
                    output = await tracing.within(span, node.executor.run(ctx))
            except Exception as exc:
                # Escaped: a lone surrogate in a message would make the job unstorable.
                error = _storable(describe_exception(exc))
                trace = _storable("".join(traceback.format_exception(exc)))
        if error is None:
            if scope.cancelled_caught:
                error = (
                    f"timed out after {node.timeout_s:g} s (the node's timeout_s); "
                    "raise timeout_s or make the node faster"
                )
            else:
                # Inline, not a method: this runs for every node of every job.
                if self.redactor is not None:
                    output = self.redactor.value(output)
                try:
                    data = _dumps(output)
                except TypeError as exc:  # orjson.JSONEncodeError
                    error = (
                        f"output is not JSON: {not_json(output, exc)}; return "
                        f"JSON-compatible data ({JSON_KINDS})"
                    )
                else:
                    if len(data) > self.small_enough:
                        error = self._too_large(node, len(data))
                    doc = _Fragment(_exact(data)) if self.encoded else output
                    finished = data
        if self.redactor is not None:
            error = self.redactor.text(error) if error is not None else None
            trace = self.redactor.text(trace)
            values = self.redactor.value(values)
        record: dict[str, Any] = {
            "nodeId": node.id,
            "nodeLabel": node.label,
            "type": node.type,
            "status": "ERROR" if error is not None else "FINISHED",
            "input": self._input_doc(node, values) if self.encoded and node.upstream else values,
            "output": doc if error is None else None,
            "previousNodeIds": list(node.upstream),
            "startedAt": started,
            "finishedAt": time.time(),
        }
        usage = ctx._usage if ctx is not None else None  # set by ctx.record_usage
        if usage is not None:
            record["usage"] = usage
        if error is not None:
            record["error"] = error
            self.records.append(record)
            end = {**_identity(node), "status": "ERROR", "error": error}
            self.emit("node_end", end if usage is None else {**end, "usage": usage})
            if self.failure is None:
                self.failure = NodeFailed(
                    node.id, error, bounded_traceback(trace), list(self.records)
                )
                if self.nursery is not None:
                    self.nursery.cancel_scope.cancel()
            return
        self.records.append(record)
        self.outputs[node.id] = output
        self.docs[node.id] = doc
        if usage is None and self.encoded:
            # What dumps of the dict below would say, without making the dict.
            self.emit("node_end", _Fragment(node.finished_prefix + finished + b"}"))
        else:
            end = {**_identity(node), "status": "FINISHED", "output": doc}
            self.emit("node_end", end if usage is None else {**end, "usage": usage})
        if self.done:
            self.done[node.id].set()

    def _too_large(self, node: CompiledNode, size: int) -> str | None:
        limits = self.limits
        if size > limits.max_node_output_bytes:
            return (
                f"output is {size:,} bytes of JSON, over limits.max_node_output_bytes "
                f"({limits.max_node_output_bytes}); return less, or raise the limit"
            )
        if size > limits.max_result_bytes and node.id in self.flow.outputs:
            return (
                f"output is the job's result and is {size:,} bytes of JSON, over "
                f"limits.max_result_bytes ({limits.max_result_bytes}); return less, or "
                "raise the limit"
            )
        return None

    def _input_doc(self, node: CompiledNode, values: dict[str, Any]) -> dict[str, Any]:
        # Upstream outputs as their Fragments: not encoded a second time.
        if len(values) != len(node.inputs):  # failed while reading them
            return values
        docs = self.docs
        return {
            name: values[name] if source.node is None else docs[source.node]
            for name, source in node.inputs
        }

    def node_emit(self, name: str, data: Any) -> None:
        """An executor's ``ctx.emit``: refuses data that is not JSON or too large."""
        if self.redactor is not None:
            data = self.redactor.value(data)
        encoded = encode_event(name, data, self.limits.max_event_bytes)
        self.emit(name, _Fragment(_exact(encoded)) if self.encoded else data)

    async def open_credential(self, name: str) -> str:
        """An executor's ``ctx.credential``: what it returns is redacted from then on."""
        value = await self.credential(name)
        if self.redactor is None:
            self.redactor = Redactor()
        self.redactor.add(name, value)
        return value

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


def _identity(node: CompiledNode) -> dict[str, Any]:
    """What node_start says, and node_end with more."""
    return {"node": node.id, "type": node.type, "label": node.label}


class _NoScope:
    """Stands in for a node's ``move_on_after`` when the node has no timeout."""

    cancelled_caught = False

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


_NO_SCOPE = _NoScope()

# _Run.node builds NodeContext positionally, in this order (the rest have defaults).
assert [a.name for a in attrs.fields(NodeContext)][:8] == [
    "job_id",
    "node_id",
    "inputs",
    "params",
    "flow_inputs",
    "_emit",
    "_credential",
    "_history",
]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# A traceback goes into the job record (admins read it in the job's detail):
# its end names the error and the innermost frames, so that part is kept.
TRACEBACK_MAX_CHARS = 16_000


def bounded_traceback(text: str) -> str:
    """``text`` cut to its last ``TRACEBACK_MAX_CHARS`` characters (redact before: a
    credential cut in half would no longer be found)."""
    if len(text) <= TRACEBACK_MAX_CHARS:
        return text
    cut = len(text) - TRACEBACK_MAX_CHARS
    return f"[{cut} characters of the traceback cut]\n" + text[cut:]


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode()


def describe_exception(exc: BaseException) -> str:
    """A one-line message for people: flowqd's own errors as they are, others with their type."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_exception(sub) for sub in exc.exceptions)
    text = str(exc)
    if isinstance(exc, FlowqdError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
