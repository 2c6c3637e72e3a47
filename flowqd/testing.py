"""Helpers to test executors and flows without Redis, a worker or an HTTP server.

Use them from pytest with pytest-trio (``trio_mode = true``)::

    from flowqd.testing import run_executor

    async def test_shout():
        output, events = await run_executor(shout.SHOUT, {"suffix": "!"}, {"text": "hi"})
        assert output == "HI!"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flowqd.config import LimitsConfig, PluginsConfig
from flowqd.errors import CredentialError, FlowValidationError
from flowqd.executors.base import Executor, HistoryReader, Message, NodeContext
from flowqd.flows.model import FlowResult, NodeFailed
from flowqd.flows.outputs import encode_event
from flowqd.flows.params import structure_params
from flowqd.flows.runner import run_flow
from flowqd.flows.validate import compile_flow
from flowqd.plugins import collect_executors, load_plugins, register_plugin

__all__ = [
    "Events",
    "FlowResult",
    "NodeFailed",
    "load_executors",
    "run_executor",
    "run_flow_document",
]

Events = list[tuple[str, Any]]


def _credentials(store: Mapping[str, str] | None) -> Any:
    known = dict(store or {})

    async def credential(name: str) -> str:
        if name not in known:
            raise CredentialError(
                f"credential {name!r} is not stored (the test gave: {', '.join(known) or 'none'})"
            )
        return known[name]

    return credential


def _stored(history: Sequence[Mapping[str, str]] | None) -> HistoryReader | None:
    """``ctx.history``'s stored part: ``history``'s last ``turns`` turns (two messages each)."""
    if history is None:
        return None
    messages: list[Message] = []
    for index, message in enumerate(history):
        if message.get("role") not in ("user", "assistant") or not isinstance(
            message.get("content"), str
        ):
            raise ValueError(
                f'history[{index}] must be {{"role": "user" or "assistant", "content": str}}, '
                f"got {message!r}"
            )
        messages.append({"role": message["role"], "content": message["content"]})

    async def read(turns: int | None) -> list[Message]:
        return messages[0 if turns is None else max(0, len(messages) - 2 * turns) :]

    return read


async def run_executor(
    executor: Executor,
    params: Mapping[str, Any] | Any = None,
    inputs: Mapping[str, Any] | None = None,
    *,
    question: Any = None,
    flow_inputs: Mapping[str, Any] | None = None,
    credentials: Mapping[str, str] | None = None,
    job_id: str = "test-job",
    node_id: str = "node",
    history: Sequence[Mapping[str, str]] | None = None,
) -> tuple[Any, Events]:
    """Run one executor the way the runner would; return ``(output, events)``.

    ``params`` is a mapping checked like a node's ``params`` in a flow (a bad
    one raises FlowValidationError with the problems), or an instance of the
    executor's params class. ``question`` adds ``{"question": ...}`` to the
    job inputs; ``credentials`` maps names to plaintext values for
    ``ctx.credential``. ``history`` is the conversation stored for the job's
    session, ``{"role": "user" | "assistant", "content": str}`` messages oldest
    first (a question and its answer per turn), that ``ctx.history`` reads; a
    request's history goes in ``flow_inputs={"history": [...]}``. Events are
    ``(name, data)`` pairs in order.
    """
    if params is None or isinstance(params, Mapping):
        params, problems = structure_params(executor.params, dict(params or {}), "$.params")
        if problems:
            raise FlowValidationError(problems)
        if executor.check is not None:
            problems = list(executor.check(params, frozenset(inputs or {})))
            if problems:
                raise FlowValidationError(problems)
    elif not isinstance(params, executor.params):
        raise TypeError(f"params must be a mapping or a {executor.params.__qualname__}")
    job_inputs = dict(flow_inputs or {})
    if question is not None:
        job_inputs["question"] = question
    events: Events = []
    limit = LimitsConfig().max_event_bytes

    def emit(name: str, data: Any) -> None:
        # The runner's checks: a test sees the NodeError a worker would give.
        encode_event(name, data, limit)
        events.append((name, data))

    ctx = NodeContext(
        job_id=job_id,
        node_id=node_id,
        inputs=dict(inputs or {}),
        params=params,
        flow_inputs=job_inputs,
        emit=emit,
        credential=_credentials(credentials),
        history=_stored(history),
    )
    return await executor.run(ctx), events


def load_executors(*plugins: object, config: PluginsConfig | None = None) -> dict[str, Executor]:
    """The executors flowqd would load (built-ins, entry points, ``config``), plus ``plugins``.

    ``plugins`` are modules or objects with ``@flowqd.hookimpl`` functions;
    one already loaded (through its entry point, say) is not added twice.
    """
    pm = load_plugins(config or PluginsConfig())
    for plugin in plugins:
        if not pm.is_registered(plugin):
            name = getattr(plugin, "__name__", None) or f"test-plugin-{id(plugin)}"
            register_plugin(pm, plugin, name, "flowqd.testing")
    return collect_executors(pm)


async def run_flow_document(
    document: Mapping[str, Any],
    question: Any = None,
    *,
    inputs: Mapping[str, Any] | None = None,
    plugins: Sequence[object] = (),
    executors: Mapping[str, Executor] | None = None,
    credentials: Mapping[str, str] | None = None,
    job_id: str = "test-job",
    history: Sequence[Mapping[str, str]] | None = None,
) -> tuple[FlowResult, Events]:
    """Validate and run a flow document; return ``(FlowResult, events)``.

    Executors are ``executors`` if given, else those of ``load_executors(*plugins)``;
    ``history`` is the stored conversation, as for ``run_executor``.
    Raises FlowValidationError for a bad document and ``flowqd.flows.NodeFailed``
    when a node fails.
    """
    if executors is None:
        executors = load_executors(*plugins)
    flow = compile_flow(document, executors)
    job_inputs = dict(inputs or {})
    if question is not None:
        job_inputs["question"] = question
    events: Events = []
    result = await run_flow(
        flow,
        job_id=job_id,
        inputs=job_inputs,
        emit=lambda name, data: events.append((name, data)),
        credential=_credentials(credentials),
        history=_stored(history),
    )
    return result, events
