"""OpenTelemetry traces (flowqd/tracing.py) on real main and worker processes.

The daemons export over OTLP/HTTP to a receiver this test runs on a loopback
port (the protobufs decoded with opentelemetry-proto); the http node calls a
loopback server that records the ``traceparent`` it was sent. The batch
delay is a minute, so the spans can only arrive through the flush at shutdown.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flowqd import tracing
from flowqd.config import RedisConfig
from flowqd.flows import compile_flow, run_flow
from flowqd.jobs import Job, JobStatus
from flowqd.queue.keys import QueueKeys
from flowqd.redis import open_redis
from flowqd.testing import load_executors
from tests.api.conftest import open_api
from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import poll

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ERROR = Status.STATUS_CODE_ERROR


@attrs.frozen
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    error: bool
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class _Receiver(BaseHTTPRequestHandler):
    """POST /v1/traces: an OTLP/HTTP (protobuf) trace receiver."""

    spans: list[Span]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(
                        Span(
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            s.kind,
                            s.status.code == ERROR,
                            str(resource.get("service.name")),
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                            {a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Target(BaseHTTPRequestHandler):
    """What the http node calls: /ok answers JSON, /fail a 500; records traceparent."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("traceparent", ""))
        ok = self.path == "/ok"
        body = b'{"ok": true}' if ok else b'{"error": "down"}'
        self.send_response(200 if ok else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _flows(target: str) -> dict[str, dict[str, Any]]:
    return {
        # Two roots and a join: the nodes run in tasks of their own.
        "traced": {
            "nodes": [
                {"id": "call", "type": "http", "params": {"url": f"{target}/ok"}},
                {"id": "other", "type": "echo"},
                {
                    "id": "join",
                    "type": "template",
                    "params": {"template": "{b}: {a[status]}"},
                    "inputs": {"a": "call", "b": "other"},
                },
            ],
            "output": "join",
        },
        # One node: run in the runner's own task.
        "failing": {
            "nodes": [{"id": "down", "type": "http", "params": {"url": f"{target}/fail"}}],
            "output": "down",
        },
    }


def _one(spans: list[Span], **match: Any) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


async def _run_traffic(main: Daemon, target: str) -> str:
    """A traced prediction, a failing one, and a job without a caller's trace; the job's id."""
    async with httpx.AsyncClient(base_url=main.api, timeout=10) as client:
        for flow_id, doc in _flows(target).items():
            put = await client.put(f"/api/v1/flows/{flow_id}", json=doc)
            assert put.status_code == 200, put.text
        answer = await client.post(
            "/api/v1/prediction/traced",
            json={"question": "hi"},
            headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "tracestate": "k=v"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == "hi: 200"
        failed = await client.post("/api/v1/prediction/failing", json={"question": "hi"})
        assert failed.status_code >= 400, failed.text
        queued = await client.post(
            "/api/v1/jobs", json={"flow": "traced", "inputs": {"question": "q"}}
        )
        assert queued.status_code == 202, queued.text
        job_id: str = queued.json()["id"]

        async def finished() -> bool:
            job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            return bool(job["status"] == "completed")

        await poll(finished)
        return job_id


async def test_one_trace_from_the_request_to_the_outbound_call(
    redis_url: str, queue_name: str
) -> None:
    _Receiver.spans = spans = []
    _Target.seen = seen = []
    with _serve(_Receiver) as receiver, _serve(_Target) as target, trio.fail_after(60):
        env = {
            "REDIS_URL": redis_url,
            "QUEUE_NAME": queue_name,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only the flush at shutdown sends them
        }
        async with (
            start_daemon(["--role", "main"], env=env) as main,
            start_daemon(["--role", "worker"], env=env) as worker,
        ):
            assert "exporting traces (OTLPSpanExporter) as service flowqd" in main.text()
            job_id = await _run_traffic(main, target)
            assert spans == []  # nothing exported yet: the batch waits a minute
            for daemon in (main, worker):
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(20) == 0, daemon.text()

    roles = {s.service for s in spans}
    assert roles == {"flowqd"}, roles
    traced = [s for s in spans if s.trace_id == TRACE_ID]
    http = _one(traced, kind=SpanProto.SPAN_KIND_SERVER)
    assert http.name == "POST /api/v1/prediction/<flow_id>"
    assert http.parent_id == CALLER_SPAN  # the caller's traceparent is honoured
    assert http.attributes["http.route"] == "/api/v1/prediction/<flow_id>"
    assert http.attributes["http.response.status_code"] == 200
    waited = _one(traced, name="queued")
    job = _one(traced, kind=SpanProto.SPAN_KIND_CONSUMER)
    assert waited.parent_id == job.parent_id == http.span_id
    assert waited.start_ns <= waited.end_ns <= job.end_ns
    assert job.name == "job traced" and not job.error
    assert job.attributes["flowqd.flow.id"] == "traced"
    assert job.attributes["flowqd.job.attempt"] == 1
    assert job.attributes["flowqd.queue"] == env["QUEUE_NAME"]
    assert job.attributes["flowqd.worker.id"].count(":") == 2  # host:pid:suffix
    assert job.attributes["flowqd.job.outcome"] == "completed"
    nodes = {s.attributes["flowqd.node.id"]: s for s in traced if s.name.startswith("node ")}
    assert set(nodes) == {"call", "other", "join"}
    assert {s.parent_id for s in nodes.values()} == {job.span_id}
    assert nodes["call"].attributes["flowqd.node.type"] == "http"
    assert not any(s.error for s in nodes.values())
    client = _one(traced, kind=SpanProto.SPAN_KIND_CLIENT)
    assert client.parent_id == nodes["call"].span_id
    assert client.name == "GET" and client.attributes["http.response.status_code"] == 200
    assert client.attributes["url.full"] == f"{target}/ok"
    # The local server got the client span's context: same trace, the client span as parent.
    assert f"00-{TRACE_ID}-{client.span_id}-01" in seen
    assert len(traced) == 7, traced

    # The failing prediction: its own trace, the error on the node and the job.
    down = _one(spans, name="node down")
    failing = [s for s in spans if s.trace_id == down.trace_id]
    failed_job = _one(failing, kind=SpanProto.SPAN_KIND_CONSUMER)
    assert down.error and down.parent_id == failed_job.span_id
    assert failed_job.error and failed_job.attributes["flowqd.job.outcome"] == "failed"
    failed_call = _one(failing, kind=SpanProto.SPAN_KIND_CLIENT)
    assert failed_call.error and failed_call.attributes["http.response.status_code"] == 500
    assert failed_call.parent_id == down.span_id
    assert _one(failing, kind=SpanProto.SPAN_KIND_SERVER).parent_id == ""  # no caller's trace

    # The job of POST /api/v1/jobs continues that request's trace.
    [queued_job] = [
        s for s in spans if s.attributes.get("flowqd.job.id") == job_id and s.kind == job.kind
    ]
    assert queued_job.attributes["flowqd.job.outcome"] == "completed"
    enqueue = _one(spans, name="POST /api/v1/jobs")
    assert queued_job.trace_id == enqueue.trace_id and queued_job.parent_id == enqueue.span_id


@pytest.fixture
def traced_here() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into memory; off again after the test."""
    exporter = InMemorySpanExporter()
    tracing.current = tracing.Tracing.start("all", [exporter])
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.mark.parametrize("on", [False, True], ids=["tracing off", "tracing on"])
async def test_the_job_record_holds_a_trace_only_when_tracing_is_on(
    redis_url: str, queue_name: str, on: bool, request: pytest.FixtureRequest
) -> None:
    if on:
        request.getfixturevalue("traced_here")
    assert (tracing.current is not None) == on
    caller = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
    environ = {"REDIS_URL": redis_url, "QUEUE_NAME": queue_name}
    with trio.fail_after(20):
        async with open_api(worker=False, environ=environ) as api:
            made = await api.client.post(
                "/api/v1/jobs", json={"flow": "echo", "inputs": {}}, headers=caller
            )
            assert made.status_code == 202, made.text
            job_id = made.json()["id"]
            job = await api.broker.jobs.get_job(job_id)
        async with open_redis(RedisConfig(url=redis_url)) as redis:
            fields = await redis.execute(b"HGETALL", QueueKeys(queue_name).job(job_id))
    assert job is not None
    stored = dict(zip(fields[0::2], fields[1::2], strict=True))
    if not on:
        assert job.trace is None and b"tc" not in stored
    else:
        assert job.trace is not None and job.trace == stored[b"tc"].decode()
        # The server span's context: the caller's trace, the server span as parent.
        assert job.trace.startswith(f"00-{TRACE_ID}-") and CALLER_SPAN not in job.trace


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "x"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "OTEL_TRACES_EXPORTER=otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT="),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "TRACES_ENDPOINT="),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_what_turns_tracing_on(environ: dict[str, str], reason: str | None) -> None:
    got = tracing.wanted(environ)
    assert got is None if reason is None else got is not None and reason in got


def test_asked_for_but_not_installed_warns_and_runs_without(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As if the otel extra were not installed: importing the SDK fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with caplog.at_level(logging.WARNING, "flowqd.tracing"):
        assert tracing.setup("main", {"OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert tracing.current is None
    assert "pip install 'flowqd[otel]'" in caplog.text


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "use otlp or console"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http/protobuf only",
        ),
    ],
)
def test_unsupported_settings_warn_and_run_without(
    environ: dict[str, str], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "flowqd.tracing"):
        assert tracing.setup("worker", environ) is None
    assert tracing.current is None
    assert problem in caplog.text


def test_service_name_defaults_to_flowqd_and_follows_otel_service_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert tracing.Tracing.start("main", []).service == "flowqd"
    monkeypatch.setitem(os.environ, "OTEL_SERVICE_NAME", "api-eu")
    assert tracing.Tracing.start("main", []).service == "api-eu"


class _Llm(BaseHTTPRequestHandler):
    """An OpenAI-style streamed completion: one token, then (once the node has it) the rest."""

    seen: list[str]
    first_token_read: threading.Event
    rest_sent_ns: list[int]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(self.headers.get("traceparent", ""))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"delta": {"content": "Hello"}}]}\n\n')
        self.wfile.flush()
        # The rest only once the node has read the first token: the answer's
        # headers are long in, and the client span must still be open.
        assert self.first_token_read.wait(10)
        self.rest_sent_ns.append(time.time_ns())
        self.wfile.write(b'data: {"choices": [{"delta": {"content": " world"}}]}\n\n')
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_a_streamed_llm_call_is_one_client_span_until_its_body_is_read(
    traced_here: InMemorySpanExporter,
) -> None:
    _Llm.seen = seen = []
    _Llm.first_token_read = first_token = threading.Event()
    _Llm.rest_sent_ns = rest_sent = []

    def emit(name: str, data: Any) -> None:
        if name == "token":
            first_token.set()

    traced = tracing.current
    assert traced is not None
    with _serve(_Llm) as llm, trio.fail_after(20):
        ask = {"base_url": f"{llm}/v1", "model": "m"}
        node = {"id": "ask", "type": "llm", "params": ask, "inputs": {"prompt": "$question"}}
        flow = compile_flow({"id": "chat", "nodes": [node], "output": "ask"}, load_executors())
        job_span = traced.start_job(_job("chat"), "w1", "q")
        result = await run_flow(
            flow,
            job_id="j1",
            inputs={"question": "hi"},
            emit=emit,
            credential=_no_credential,
            trace=job_span,
        )
        tracing.end_job(job_span, None)
    assert result.output == "Hello world"
    traced.provider.force_flush()
    spans = traced_here.get_finished_spans()
    [asked] = [s for s in spans if s.name == "node ask"]
    [client] = [s for s in spans if s.kind.name == "CLIENT"]
    assert asked.parent is not None and asked.parent.span_id == job_span.get_span_context().span_id
    assert client.parent is not None and client.parent.span_id == asked.context.span_id
    assert client.attributes is not None and client.attributes["http.request.method"] == "POST"
    assert client.attributes["url.full"] == f"{llm}/v1/chat/completions"
    assert client.end_time is not None and client.end_time >= rest_sent[0]
    trace_id = f"{client.context.trace_id:032x}"
    [sent] = seen
    assert sent.startswith(f"00-{trace_id}-{client.context.span_id:016x}-")


def _job(flow_id: str) -> Job:
    now = time.time()
    return Job("j1", flow_id, 1, {}, JobStatus.ACTIVE, 1, 1, None, None, now, now)


async def _no_credential(name: str) -> str:
    raise AssertionError(f"no credential expected, asked for {name}")


def test_only_flowqd_tracing_imports_opentelemetry() -> None:
    # The extra is optional: an import anywhere else would break a plain install.
    package = Path(tracing.__file__).parent
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import) opentelemetry", path.read_text(), flags=re.M)
    )
    assert importers == ["tracing.py"]


async def test_shutdown_waits_for_a_silent_collector_only_until_the_deadline() -> None:
    # A collector that accepts connections and never answers: the exporter
    # would wait for its own timeout (10 s), the flush at exit does not.
    with socket.socket() as silent, trio.fail_after(40):
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "30",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
        }
        async with start_daemon(["--role", "all"], env=env) as daemon:
            async with httpx.AsyncClient(base_url=daemon.api, timeout=10) as client:
                assert (await client.get("/api/v1/ping")).status_code == 200
            daemon.signal(signal.SIGTERM)
            stopping = trio.current_time()
            assert await daemon.wait(20) == 0
            took = trio.current_time() - stopping
    assert "exporter did not take the last spans within 5s" in daemon.text()
    assert tracing.FLUSH_DEADLINE_S <= took < tracing.FLUSH_DEADLINE_S + 4, took
