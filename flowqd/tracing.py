"""OpenTelemetry traces: one trace per prediction or job, when the operator asks for them.

The only module that imports ``opentelemetry`` (the optional ``otel`` extra).
Tracing is on when the standard variables ask for it (see :func:`wanted`) and
the extra is installed; then :func:`setup` sets :data:`current`, and every
hook elsewhere is ``if tracing.current is None`` and nothing else while it is
off.

One trace: the main's HTTP server span (continuing an incoming
``traceparent``), then, from the context stored in the job record
(``Job.trace``), the worker's ``queued`` span (enqueue to claim) and its job
span, one span per node under the job span, and a client span per outbound
HTTP request of a node under the node's span.

trio copies contextvars into each task it spawns, so an implicit "current
span" would leak into whatever a task spawns later: server, queue, job and
node spans name their parent explicitly. Only while a node's executor runs is
its span the current one (attached and detached in that node's own task), so
that the outbound client span finds it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import httpx

from flowqd._version import __version__
from flowqd.jobs import Job, Outcome, OutcomeKind

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as Span
    from opentelemetry.trace import Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
else:
    Span = object  # for annotations elsewhere: ``tracing.Span | None``

log = logging.getLogger("flowqd.tracing")

T = TypeVar("T")
A = TypeVar("A", bound=Callable[..., Awaitable[None]])  # an ASGI app

INSTALL_HINT = "pip install 'flowqd[otel]'"
# At shutdown, how long the last spans may take to reach the exporter.
FLUSH_DEADLINE_S = 5.0
# The HTTP server span travels to the handlers in the ASGI scope, under this key.
SCOPE_KEY = "flowqd.span"
EXPORTERS = ("otlp", "console")  # OTEL_TRACES_EXPORTER values flowqd knows ("none": off)

current: Tracing | None = None


def wanted(environ: Mapping[str, str]) -> str | None:
    """Why the ``OTEL_*`` variables ask for traces (for the start-up line), or None.

    Traces are on when ``OTEL_TRACES_EXPORTER`` names an exporter, or when an
    OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` and
    ``OTEL_TRACES_EXPORTER=none`` turn them off whatever else is set.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return None
    if exporters:
        return f"OTEL_TRACES_EXPORTER={exporters}"
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if environ.get(name, "").strip():
            return f"{name}={environ[name].strip()}"
    return None


def setup(role: str, environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """Start exporting traces if the variables ask for it; the new :data:`current`.

    Never raises for a configuration problem: a process without traces is
    better than a process that does not start, so the problem is logged with
    what to do.
    """
    global current
    reason = wanted(environ)
    if reason is None:
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider  # noqa: F401
    except ImportError:
        # The one-file binary leaves it out (packaging/flowqd.spec).
        where = (
            "the one-file binary exports no traces: run flowqd installed with "
            if getattr(sys, "frozen", False)
            else ""
        )
        log.warning(
            "traces were asked for (%s) but OpenTelemetry is not installed: %s%s, or unset "
            "the OTEL_* variables; running without traces",
            reason,
            where,
            INSTALL_HINT,
        )
        return None
    try:
        exporters = _exporters(environ)
    except ValueError as exc:
        log.warning("traces were asked for (%s) but %s; running without traces", reason, exc)
        return None
    if not exporters:
        return None
    current = Tracing.start(role, exporters)
    log.info(
        "exporting traces (%s) as service %s",
        ", ".join(type(e).__name__ for e in exporters),
        current.service,
    )
    return current


def shutdown(deadline_s: float = FLUSH_DEADLINE_S) -> None:
    """Export the spans still buffered, waiting ``deadline_s`` at most; then tracing is off.

    Blocking: call it outside trio (after ``trio.run`` returns).
    """
    global current
    tracing, current = current, None
    if tracing is None:
        return
    # In a daemon thread: an exporter retrying an unreachable collector must
    # not hold the process past its deadline.
    done = threading.Event()

    def flush() -> None:
        tracing.provider.force_flush(int(deadline_s * 1000))
        tracing.provider.shutdown()
        done.set()

    threading.Thread(target=flush, name="flowqd-trace-flush", daemon=True).start()
    if not done.wait(deadline_s):
        log.warning(
            "traces: the exporter did not take the last spans within %gs; they are lost "
            "(is the collector at OTEL_EXPORTER_OTLP_ENDPOINT up?)",
            deadline_s,
        )


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")] or [
        "otlp"
    ]
    out: list[SpanExporter] = []
    for name in dict.fromkeys(n for n in names if n and n != "none"):
        if name in ("otlp", "otlp_proto_http"):
            out.append(_otlp_exporter(environ))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which flowqd does not know: use "
                f"{' or '.join(EXPORTERS)} (or none)"
            )
    return out


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol != "http/protobuf":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol!r} and flowqd exports OTLP over "
            "http/protobuf only: set it to http/protobuf and point the endpoint at the "
            "collector's OTLP/HTTP port (4318)"
        )
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ValueError(f"the OTLP/HTTP exporter is not installed ({INSTALL_HINT})") from None
    # Endpoint, headers, timeout, compression, certificates: from the
    # OTEL_EXPORTER_OTLP_* variables, read by the exporter itself.
    return OTLPSpanExporter()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@attrs.define(eq=False)
class Tracing:
    """The tracer of this process and what the hooks need beside it."""

    provider: TracerProvider
    tracer: Tracer
    propagator: TraceContextTextMapPropagator
    service: str

    @classmethod
    def start(cls, role: str, exporters: list[SpanExporter]) -> Tracing:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over these.
        resource = Resource.create({"service.version": __version__, "flowqd.role": role})
        service = str(resource.attributes.get("service.name", ""))
        if service.startswith("unknown_service"):
            service = "flowqd"
            resource = resource.merge(Resource({"service.name": service}))
        # The sampler comes from OTEL_TRACES_SAMPLER(_ARG); the batch from OTEL_BSP_*.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("flowqd", __version__)
        return cls(provider, tracer, TraceContextTextMapPropagator(), service)

    # ---- context in and out -----------------------------------------------

    def extract(self, carrier: Mapping[str, str]) -> Context:
        """The remote parent in ``carrier`` (traceparent, tracestate), or an empty context."""
        from opentelemetry.context import Context

        return self.propagator.extract(carrier, Context())

    def inject(self, span: Span, carrier: MutableMapping[str, str]) -> None:
        from opentelemetry.trace import set_span_in_context

        self.propagator.inject(carrier, set_span_in_context(span))

    def job_context(self, span: Span) -> str | None:
        """``span``'s W3C context as ``Job.trace`` holds it."""
        carrier: dict[str, str] = {}
        self.inject(span, carrier)
        parent = carrier.get("traceparent")
        if parent is None:  # not a valid span (tracing off in the SDK)
            return None
        state = carrier.get("tracestate")
        return f"{parent}\n{state}" if state else parent

    def job_parent(self, trace: str | None) -> Context:
        if not trace:
            return self.extract({})
        parent, _, state = trace.partition("\n")
        return self.extract(
            {"traceparent": parent, "tracestate": state} if state else {"traceparent": parent}
        )

    # ---- worker: queue wait, job, nodes -------------------------------------

    def start_job(self, job: Job, worker: str, queue: str) -> Span:
        """The job span of this attempt, and once per job the span of its wait in the queue."""
        from opentelemetry.trace import SpanKind

        parent = self.job_parent(job.trace)
        common = {"flowqd.job.id": job.id, "flowqd.queue": queue}
        if job.attempts <= 1 and job.started_at is not None:
            # Enqueue to claim, both on the broker's clock. Later attempts
            # waited for a retry delay, which the failed attempt's span shows.
            waited = self.tracer.start_span(
                "queued",
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=common,
                start_time=_ns(job.created_at),
            )
            waited.end(_ns(max(job.started_at, job.created_at)))
        return self.tracer.start_span(
            f"job {job.flow_id}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **common,
                "flowqd.flow.id": job.flow_id,
                "flowqd.flow.version": job.flow_version,
                "flowqd.job.attempt": job.attempts,
                "flowqd.worker.id": worker,
            },
        )

    def start_node(self, job_span: Span, node_id: str, node_type: str) -> Span:
        from opentelemetry.trace import set_span_in_context

        return self.tracer.start_span(
            f"node {node_id}",
            context=set_span_in_context(job_span),
            attributes={"flowqd.node.id": node_id, "flowqd.node.type": node_type},
        )


def end_job(span: Span, outcome: Outcome | None) -> None:
    """End a job span with what became of the attempt (None: its lock was lost)."""
    from opentelemetry.trace import Status, StatusCode

    kind = "lost" if outcome is None else outcome.kind.value
    span.set_attribute("flowqd.job.outcome", kind)
    if outcome is not None and outcome.kind is OutcomeKind.FAILED:
        error = outcome.error or {}
        span.set_status(Status(StatusCode.ERROR, str(error.get("message", "failed"))))
        if error.get("node"):
            span.set_attribute("flowqd.node.id", str(error["node"]))
    span.end()


def end_node(span: Span, record: Mapping[str, Any] | None) -> None:
    """End a node span from the node's record (None: stopped before it finished)."""
    from opentelemetry.trace import Status, StatusCode

    if record is None:
        span.set_attribute("flowqd.node.stopped", True)
    elif record.get("status") == "ERROR":
        span.set_status(Status(StatusCode.ERROR, str(record.get("error", "failed"))))
    span.end()


async def within(span: Span, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` with ``span`` as the current span of this task only."""
    from opentelemetry import context
    from opentelemetry.trace import set_span_in_context

    token = context.attach(set_span_in_context(span))
    try:
        return await awaitable
    finally:
        context.detach(token)


# ---- main: the HTTP server span ----------------------------------------------


def job_trace(scope: Mapping[str, Any]) -> str | None:
    """What a job enqueued by this request stores in ``JobSpec.trace``."""
    tracing = current
    if tracing is None:
        return None
    span = scope.get(SCOPE_KEY)
    return None if span is None else tracing.job_context(span)


def name_route(scope: Mapping[str, Any], method: str, route: str) -> None:
    """Name the request's server span after its route template, once it is known."""
    span = scope.get(SCOPE_KEY)
    if span is not None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)


def asgi_middleware(app: A) -> A:
    """``app`` with a server span around each HTTP request, ended when the answer is sent."""

    async def traced(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        tracing = current
        if tracing is None or scope.get("type") != "http":
            await app(scope, receive, send)
            return
        span = _server_span(tracing, scope)
        scope[SCOPE_KEY] = span
        ended = False

        async def send_and_watch(message: MutableMapping[str, Any]) -> None:
            nonlocal ended
            kind = message.get("type")
            if kind == "http.response.start":
                _set_status(span, int(message.get("status", 0)))
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                ended = True
                span.end()

        try:
            await app(scope, receive, send_and_watch)
        except BaseException as exc:
            if not ended:
                _error(span, exc)
            raise
        finally:
            if not ended:
                span.end()

    return cast(A, traced)


def _server_span(tracing: Tracing, scope: Mapping[str, Any]) -> Span:
    from opentelemetry.trace import SpanKind

    headers: dict[str, str] = {}
    user_agent = ""
    for name, value in scope.get("headers", ()):
        if name in (b"traceparent", b"tracestate"):
            headers[name.decode("latin-1")] = value.decode("latin-1")
        elif name == b"user-agent":
            user_agent = value.decode("latin-1")
    method = str(scope.get("method", "GET"))
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.path": str(scope.get("path", "")),
        "url.scheme": str(scope.get("scheme", "http")),
    }
    client = scope.get("client")
    if client:
        attributes["client.address"] = str(client[0])
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return tracing.tracer.start_span(
        method, context=tracing.extract(headers), kind=SpanKind.SERVER, attributes=attributes
    )


def _set_status(span: Span, status: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def _error(span: Span, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))


# ---- nodes: outbound HTTP -------------------------------------------------------


def _shown(url: httpx.URL) -> str:
    # No user, password or query in a span: those may hold secrets.
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


class TracedClient(httpx.AsyncClient):
    """httpx's client with a client span per request and ``traceparent`` sent along.

    The span's parent is the current span: the node's, attached while its
    executor runs (see :func:`within`). A streamed answer's span ends when
    the body is closed.
    """

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        tracing = current
        if tracing is None:
            return await super().send(request, **kwargs)
        from opentelemetry.trace import SpanKind, Status, StatusCode

        url = request.url
        span = tracing.tracer.start_span(
            request.method,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "url.full": _shown(url),
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
            },
        )
        tracing.inject(span, request.headers)
        try:
            response = await super().send(request, **kwargs)
        except BaseException as exc:
            _error(span, exc)
            span.end()
            raise
        status = response.status_code
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_status(Status(StatusCode.ERROR))
        if kwargs.get("stream"):
            response.stream = _SpanEndingStream(response.stream, span)
        else:
            span.end()
        return response


class _SpanEndingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream, span: Span) -> None:
        self._inner = inner
        self._span = span
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._inner, httpx.AsyncByteStream)
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            assert isinstance(self._inner, httpx.AsyncByteStream)
            await self._inner.aclose()
        finally:
            if not self._ended:
                self._ended = True
                self._span.end()
