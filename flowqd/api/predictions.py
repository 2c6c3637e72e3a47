"""``POST /api/v1/prediction/{flow_id}``: Flowise-compatible, JSON or streamed.

Everything that can fail because of the request (body, flow, inputs, the
broker) is answered before a stream starts, so a bad request is a plain
JSON error even with ``"streaming": true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio
from quart import Blueprint, Response, request

from flowqd import tracing
from flowqd.api import flowise, sse
from flowqd.api.authn import open_route
from flowqd.api.context import JOB_ID_HEADER, ApiContext, context, principal
from flowqd.api.http import ApiError, Problems, error_response, json_response, read_json
from flowqd.auth import Principal
from flowqd.executors.base import HISTORY_ENTRY, history_message
from flowqd.flows import CompiledFlow
from flowqd.jobs import (
    CANCELLED,
    END,
    ERROR,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TERMINAL_EVENTS,
    Event,
    JobSpec,
    new_job_id,
)
from flowqd.queue.roles import JobStore

blueprint = Blueprint("predictions", __name__)

ROUTE = "/api/v1/prediction/<flow_id>"
# Flowise body keys carried into the job's inputs when present.
PASSED_THROUGH = ("uploads", "form")


@attrs.frozen
class PredictionRequest:
    question: str | None
    streaming: bool
    chat_id: str | None
    override: dict[str, Any]
    history: list[Any]
    extra: dict[str, Any]
    priority: int | None = None  # None: the flow's default


def parse_request(body: dict[str, Any]) -> PredictionRequest:
    """The Flowise body: unknown keys are ignored (SDKs send ``chatflowId``, ``leadEmail``...),
    ``null`` is accepted wherever a key is optional (the Python SDK sends it)."""
    problems = Problems()
    question = body.get("question")
    if question is not None:
        problems.expect(question, (str,), "$.question", "a string")
    streaming = body.get("streaming", False)
    if isinstance(streaming, str) and streaming.lower() in ("true", "false"):
        streaming = streaming.lower() == "true"  # Flowise accepts the strings too
    elif streaming is None:
        streaming = False
    else:
        problems.expect(streaming, (bool,), "$.streaming", "true or false")
    chat_id = body.get("chatId")
    if (
        chat_id is not None
        and problems.expect(chat_id, (str,), "$.chatId", "a string")
        and not chat_id.strip()
    ):
        problems.add("$.chatId", "must not be empty (leave it out for a new chat)")
    override = body.get("overrideConfig")
    override = {} if override is None else override
    problems.expect(override, (dict,), "$.overrideConfig", "an object")
    history = body.get("history")
    history = [] if history is None else history
    if problems.expect(history, (list,), "$.history", "an array"):
        for index, entry in enumerate(history):
            if history_message(entry) is None:
                problems.add(f"$.history[{index}]", HISTORY_ENTRY)
    session = override.get("sessionId") if isinstance(override, dict) else None
    if session is not None:
        problems.expect(session, (str,), "$.overrideConfig.sessionId", "a string")
    extra = {k: body[k] for k in PASSED_THROUGH if body.get(k) is not None}
    priority = _priority(body, override, problems)
    problems.raise_if_any()
    return PredictionRequest(question, bool(streaming), chat_id, override, history, extra, priority)


def _priority(body: dict[str, Any], override: Any, problems: Problems) -> int | None:
    """The job's priority: ``priority`` in the body, else ``overrideConfig.priority``
    (what Flowise SDKs can send: their bodies have a fixed set of keys)."""
    path, value = "$.priority", body.get("priority")
    if value is None and isinstance(override, dict):
        path, value = "$.overrideConfig.priority", override.get("priority")
    if value is None:
        return None
    if problems.expect(value, (int,), path, "an integer") and not (
        PRIORITY_MIN <= value <= PRIORITY_MAX
    ):
        problems.add(
            path, f"must be from {PRIORITY_MIN} to {PRIORITY_MAX} (higher runs first, 0 default)"
        )
    return int(value) if isinstance(value, int) else None


def job_inputs(req: PredictionRequest, chat: flowise.Chat) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "chatId": chat.chat_id,
        "sessionId": chat.session_id,
        "overrideConfig": req.override,
        "history": req.history,
        **req.extra,
    }
    if req.question is not None:
        inputs["question"] = req.question
    return inputs


def check_inputs(flow: CompiledFlow, req: PredictionRequest, inputs: dict[str, Any]) -> None:
    """422 for a request the flow cannot run with (Flowise would run it with "undefined")."""
    problems = Problems()
    # A flow that names no inputs may still read the question directly (echo does),
    # or a form instead (Flowise's form-started flows); one that reads $question
    # needs the question whatever else comes with it.
    wants_question = "question" in flow.flow_inputs or (
        not flow.flow_inputs and "form" not in inputs
    )
    if wants_question and not (req.question or "").strip():
        problems.add(
            "$.question", f'flow {flow.id!r} needs a question: send a non-empty "question"'
        )
    for name in sorted(flow.flow_inputs - {"question"} - inputs.keys()):
        problems.add(
            f"$.{name}", f"flow {flow.id!r} reads ${name}, which this request does not send"
        )
    problems.raise_if_any("the flow cannot run with this request")


@blueprint.post(ROUTE)
async def prediction(flow_id: str) -> Response:
    # ``lean`` answers this route before Quart's routing, by ``predict`` too.
    body = await read_json(request)
    return await predict(context(), flow_id, body, principal(), request.scope)


async def predict(
    ctx: ApiContext, flow_id: str, body: Any, caller: Principal, scope: Mapping[str, Any]
) -> Response:
    """The prediction route's answer to ``body`` (the request's JSON) from ``caller``."""
    if not isinstance(body, dict):
        raise ApiError(422, 'the request body must be a JSON object such as {"question": "hi"}')
    req = parse_request(body)
    flow = await ctx.runnable_flow(flow_id)
    queue, roles = ctx.queue_of(flow)
    await ctx.check_rate(flow.id)
    await ctx.check_queue_rate(queue)
    jobs = roles.jobs
    job_id = new_job_id()
    chat = flowise.Chat.new(req.question, req.chat_id, req.override.get("sessionId"), job_id)
    inputs = job_inputs(req, chat)
    check_inputs(flow, req, inputs)
    spec = JobSpec(
        flow_id=flow.id,
        flow_version=flow.version or 0,
        inputs=inputs,
        job_id=job_id,
        owner=caller.name,
        trace=tracing.job_trace(scope),
        priority=flow.priority if req.priority is None else req.priority,
    )
    try:
        with ctx.deadline("enqueueing the job"):
            await jobs.enqueue([spec])
    except ApiError as exc:
        # A command that timed out may still reach Redis and run: name the
        # job so a client can look before it sends the question again.
        exc.message += f"; job {job_id} may still run: see GET /api/v1/jobs/{job_id}"
        exc.extra["jobId"] = job_id
        exc.headers[JOB_ID_HEADER] = job_id
        raise
    ctx.metrics.enqueued.inc()
    if req.streaming:
        return stream(ctx, flow, chat, inputs, jobs)
    return await wait(ctx, chat, jobs)


@blueprint.get("/api/v1/chatflows-streaming/<flow_id>")
@open_route
async def chatflow_streaming(flow_id: str) -> Response:
    # The Flowise SDKs ask this (without credentials) before every
    # prediction; every flowqd flow can stream, so the answer reveals nothing.
    return json_response({"isStreaming": True})


async def _cancel_job(ctx: ApiContext, jobs: JobStore, job_id: str) -> None:
    with trio.move_on_after(ctx.config.server.broker_timeout_s * 5):
        await jobs.cancel(job_id, reason="client disconnected")


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


async def _terminal_event(
    ctx: ApiContext, jobs: JobStore, job_id: str
) -> tuple[Event | None, bool]:
    """The job's terminal event, or None past the deadline; and whether the
    server's shutdown shortened that deadline."""
    terminal: Event | None = None
    shortened = False
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope(
            deadline=trio.current_time() + ctx.config.server.prediction_timeout_s
        )

        async def shorten_on_shutdown() -> None:
            # The result may still come while the server drains; answer
            # before hypercorn's graceful stop would cut the connection.
            nonlocal shortened
            await ctx.shutdown.wait()
            drain = ctx.config.worker.shutdown_grace_s / 2
            if trio.current_time() + drain < scope.deadline:
                shortened = True
                scope.deadline = trio.current_time() + drain

        nursery.start_soon(shorten_on_shutdown)
        with scope:
            async with jobs.open_event_watch(job_id) as batches:
                async for batch in batches:
                    if batch[-1].name in TERMINAL_EVENTS:
                        terminal = batch[-1]
        nursery.cancel_scope.cancel()
    return terminal, shortened


async def wait(ctx: ApiContext, chat: flowise.Chat, jobs: JobStore) -> Response:
    """Wait for the job's terminal event under the deadline; answer as Flowise does."""
    job_id = chat.execution_id
    ctx.metrics.open_waits += 1
    try:
        terminal, shortened = await _terminal_event(ctx, jobs, job_id)
    except BaseException as exc:
        # Cancelled: the client went away (or hypercorn gave up on us at shutdown).
        if (
            _only_cancelled(exc)
            and ctx.config.server.cancel_on_disconnect
            and not ctx.shutdown.is_set()
        ):
            with trio.CancelScope(shield=True):
                await _cancel_job(ctx, jobs, job_id)
        raise
    finally:
        ctx.metrics.open_waits -= 1
    return await _answer(ctx, jobs, chat, terminal, shortened)


async def _answer(
    ctx: ApiContext, jobs: JobStore, chat: flowise.Chat, terminal: Event | None, shortened: bool
) -> Response:
    server = ctx.config.server
    job_id = chat.execution_id
    where = {"jobId": job_id, "executionId": job_id, "chatId": chat.chat_id}
    named = {JOB_ID_HEADER: job_id}
    location = {"Location": f"/api/v1/jobs/{job_id}"}

    def failed(
        status: int, message: str, headers: dict[str, str] | None = None, node: str | None = None
    ) -> Response:
        extra: dict[str, Any] = dict(where)
        if node is not None:
            extra["node"] = node
        return error_response(status, message, {**named, **(headers or {})}, **extra)

    if terminal is None:
        ctx.metrics.jobs.inc(outcome="timeout")
        if shortened:
            return failed(
                503,
                f"the server is shutting down; job {job_id} goes on: "
                f"read its result at GET /api/v1/jobs/{job_id}",
                {**location, "Retry-After": "1"},
            )
        return failed(
            504,
            f"no result within {server.prediction_timeout_s:g}s "
            f"(server.prediction_timeout_s); job {job_id} goes on: read its "
            f"result at GET /api/v1/jobs/{job_id}",
            location,
        )
    if terminal.name == END:
        ctx.metrics.jobs.inc(outcome="completed")
        job = None
        with trio.move_on_after(server.broker_timeout_s):
            # Per-node data only; the result itself came with the event.
            job = await jobs.get_job(job_id)
        return json_response(flowise.answer(chat, terminal.data, job), headers=named)
    if terminal.name == ERROR:
        ctx.metrics.jobs.inc(outcome="failed")
        node = terminal.data.get("node") if isinstance(terminal.data, dict) else None
        return failed(500, flowise.failure_message(terminal.data), node=node)
    assert terminal.name == CANCELLED
    ctx.metrics.jobs.inc(outcome="cancelled")
    reason = terminal.data.get("reason") if isinstance(terminal.data, dict) else None
    return failed(
        409,
        f"job {job_id} was cancelled"
        + (f" ({reason})" if reason else "")
        + "; send the prediction again to run it",
    )


def stream(
    ctx: ApiContext,
    flow: CompiledFlow,
    chat: flowise.Chat,
    inputs: dict[str, Any],
    jobs: JobStore,
) -> Response:
    server = ctx.config.server
    job_id = chat.execution_id

    async def produce(send: sse.Send, stream: sse.Stream) -> None:
        translator = flowise.StreamTranslator(flow, chat, inputs)
        if server.cancel_on_disconnect:

            async def cancel_unfinished() -> None:
                if not translator.finished:
                    await _cancel_job(ctx, jobs, job_id)

            stream.on_client_gone = cancel_unfinished
        for chunk in translator.start():
            await send.send(chunk)

        async def pump() -> None:
            async with jobs.open_event_watch(job_id) as batches:
                async for batch in batches:
                    # One write per batch: per-write costs (ASGI, h11, the
                    # socket) dwarf the framing of a token.
                    chunk = b"".join(
                        [frame for event in batch for frame in translator.translate(event)]
                    )
                    if chunk:  # an empty body chunk could read as the end of the body
                        await send.send(chunk)

        outcome = await sse.drive(
            send,
            pump,
            heartbeat=flowise.HEARTBEAT,
            heartbeat_s=server.heartbeat_s,
            shutdown=ctx.shutdown,
            deadline_s=server.prediction_timeout_s,
        )
        if translator.outcome is not None:
            ctx.metrics.jobs.inc(outcome=translator.outcome)
            return
        ctx.metrics.jobs.inc(outcome="timeout")
        if outcome == "shutdown":
            message = (
                f"the server is shutting down; job {job_id} goes on: read its result "
                f"at GET /api/v1/jobs/{job_id}"
            )
        else:
            message = (
                f"no result within {server.prediction_timeout_s:g}s "
                f"(server.prediction_timeout_s); job {job_id} goes on: read its result "
                f"at GET /api/v1/jobs/{job_id}"
            )
        for chunk in translator.fail(message):
            await send.send(chunk)

    return sse.stream_response(
        ctx.background(),
        produce,
        name=f"prediction {job_id}",
        headers={JOB_ID_HEADER: job_id},
        on_open=ctx.metrics.stream_opened,
        on_close=ctx.metrics.stream_closed,
    )
