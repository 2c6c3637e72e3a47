"""Flows, credentials and the queues: the routes that change shared state need an admin key.

The queue routes act on the queue ``?queue=NAME`` names, the default queue
(``queue.name``) when absent; ``GET /api/v1/queues`` shows every queue.
"""

from __future__ import annotations

import re
import time
from typing import Any

import attrs
from quart import Blueprint, Response, request

from flowqd.api.context import context, principal, require_admin
from flowqd.api.http import ApiError, Problems, json_response, read_json, require_object
from flowqd.errors import CredentialError, FlowValidationError
from flowqd.jobs import JobStatus, WorkerInfo
from flowqd.queue.roles import QueueControl

blueprint = Blueprint("manage", __name__)

CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# Jobs per broker call of retry-failed and clean: a few milliseconds of Redis each.
ADMIN_BATCH = 500
CLEANABLE = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
MAX_AGE_S = 10 * 365 * 86400


def _problems(exc: FlowValidationError) -> list[dict[str, str]]:
    return [{"path": path, "message": message} for path, message in exc.problems]


def _anonymous(worker: WorkerInfo, number: int) -> dict[str, Any]:
    """A worker as a non-admin key sees it: whether the queue is served, not where
    nor how busy. Host, pid and the id made of them are for operators; the jobs
    it holds (null here) would tell other keys' volume."""
    return {
        "id": f"worker-{number}",
        "ready": worker.ready,
        "jobs_held": None,
        "concurrency": worker.concurrency,
        "started_at": worker.started_at,
        "last_seen": worker.last_seen,
    }


# ---- flows ----------------------------------------------------------------------------


@blueprint.get("/api/v1/flows")
async def list_flows() -> Response:
    ctx = context()
    with ctx.deadline("listing flows"):
        flows = await ctx.flows.list()
    return json_response({"flows": [{"id": k, "version": v} for k, v in sorted(flows.items())]})


@blueprint.get("/api/v1/flows/<flow_id>")
async def get_flow(flow_id: str) -> Response:
    raw = request.args.get("version")
    if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise ApiError(400, "query parameter version must be a whole number (at most 18 digits)")
    ctx = context()
    try:
        with ctx.deadline("reading the flow"):
            flow = await ctx.flows.get(flow_id, int(raw) if raw else None)
    except FlowValidationError as exc:
        raise ApiError(
            409, f"flow {flow_id!r} is stored but no longer valid: {exc}", problems=_problems(exc)
        ) from None
    if flow is None:
        raise ApiError(
            404,
            f"flow {flow_id!r}{' version ' + raw if raw else ''} not found "
            "(GET /api/v1/flows lists flows)",
        )
    answer: dict[str, Any] = {
        "id": flow.id,
        "version": flow.version,
        "inputs": sorted(flow.flow_inputs),
    }
    # Any key may run any flow, so its id and the inputs it reads are for all;
    # the document (URLs, prompts, credential names) is for admins.
    if principal().admin:
        answer["flow"] = flow.document
    return json_response(answer)


@blueprint.put("/api/v1/flows/<flow_id>")
async def put_flow(flow_id: str) -> Response:
    require_admin("registering a flow")
    document = require_object(await read_json(request), "a flow document")
    if "id" not in document:
        document = {"id": flow_id, **document}
    elif document["id"] != flow_id:
        raise ApiError(
            422,
            f"invalid flow: $.id: must equal the id in the URL ({flow_id!r}), or be left out",
            problems=[{"path": "$.id", "message": "must equal the id in the URL"}],
        )
    ctx = context()
    try:
        flow = ctx.flows.compile(document)  # CPU: outside the broker's deadline
        with ctx.deadline("storing the flow"):
            stored_id, version = await ctx.flows.store(flow)
    except FlowValidationError as exc:
        raise ApiError(422, f"invalid flow: {exc}", problems=_problems(exc)) from None
    return json_response(
        {"id": stored_id, "version": version, "location": f"/api/v1/flows/{stored_id}"}
    )


@blueprint.delete("/api/v1/flows/<flow_id>")
async def delete_flow(flow_id: str) -> Response:
    require_admin("deleting a flow")
    ctx = context()
    with ctx.deadline("deleting the flow"):
        deleted = await ctx.flows.delete(flow_id)
    if not deleted:
        raise ApiError(404, f"flow {flow_id!r} not found (GET /api/v1/flows lists flows)")
    return Response(b"", status=204)


# ---- credentials: names only in every answer ----------------------------------------------


@blueprint.get("/api/v1/credentials")
async def list_credentials() -> Response:
    require_admin("listing credentials")
    ctx = context()
    with ctx.deadline("listing credentials"):
        names = await ctx.credentials.names()
    return json_response({"credentials": names})


@blueprint.put("/api/v1/credentials/<name>")
async def put_credential(name: str) -> Response:
    require_admin("storing a credential")
    if not CREDENTIAL_NAME.fullmatch(name):
        raise ApiError(422, "credential names use 1-128 letters, digits and _ . -")
    body = require_object(await read_json(request))
    value = body.get("value")
    # The messages name types only: the value must never be echoed.
    if not isinstance(value, str) or not value:
        raise ApiError(
            422,
            'send {"value": "<the secret>"} with a non-empty string',
            problems=[{"path": "$.value", "message": "expected a non-empty string"}],
        )
    if set(body) != {"value"}:
        raise ApiError(
            422,
            'the body has one key, "value"',
            problems=[{"path": "$", "message": 'unknown keys besides "value"'}],
        )
    ctx = context()
    try:
        with ctx.deadline("storing the credential"):
            await ctx.credentials.put(name, value)
    except CredentialError as exc:
        raise ApiError(503, str(exc)) from None
    return Response(b"", status=204)


@blueprint.delete("/api/v1/credentials/<name>")
async def delete_credential(name: str) -> Response:
    require_admin("deleting a credential")
    ctx = context()
    with ctx.deadline("deleting the credential"):
        deleted = await ctx.credentials.delete(name)
    if not deleted:
        raise ApiError(404, f"credential {name!r} not found (GET /api/v1/credentials lists names)")
    return Response(b"", status=204)


# ---- queue --------------------------------------------------------------------------------


async def _queue_json(name: str, control: QueueControl, admin: bool) -> dict[str, Any]:
    # Queue-wide counts tell every key's volume: for admins only (null for others).
    counts = await control.counts() if admin else None
    paused = await control.is_paused()
    workers = await control.workers()
    return {
        "name": name,
        "paused": paused,
        "counts": None if counts is None else {s.value: n for s, n in counts.items()},
        "workers": [
            attrs.asdict(w) if admin else _anonymous(w, n)
            for n, w in enumerate(sorted(workers, key=lambda w: w.started_at), 1)
        ],
    }


def _named_queue() -> tuple[str, QueueControl]:
    """The queue ``?queue=`` names (404 unknown), else the default queue."""
    ctx = context()
    name = ctx.queue_arg() or ctx.config.queue.name
    return name, ctx.queue(name).control


@blueprint.get("/api/v1/queues")
async def queues() -> Response:
    ctx = context()
    admin = principal().admin
    with ctx.deadline("reading the queues"):
        shown = [await _queue_json(n, q.control, admin) for n, q in ctx.queues.items()]
    return json_response({"default": ctx.config.queue.name, "queues": shown})


@blueprint.get("/api/v1/queue")
async def queue() -> Response:
    ctx = context()
    name, control = _named_queue()
    with ctx.deadline("reading the queue"):
        return json_response(await _queue_json(name, control, principal().admin))


@blueprint.post("/api/v1/queue/pause")
async def pause() -> Response:
    require_admin("pausing the queue")
    ctx = context()
    _, control = _named_queue()
    with ctx.deadline("pausing the queue"):
        await control.pause()
    return json_response({"paused": True})


@blueprint.post("/api/v1/queue/resume")
async def resume() -> Response:
    require_admin("resuming the queue")
    ctx = context()
    _, control = _named_queue()
    with ctx.deadline("resuming the queue"):
        await control.resume()
    return json_response({"paused": False})


@blueprint.post("/api/v1/queue/retry-failed")
async def retry_failed() -> Response:
    require_admin("retrying failed jobs")
    ctx = context()
    _, control = _named_queue()
    with ctx.deadline("counting failed jobs"):
        failed = (await control.counts())[JobStatus.FAILED]
    retried = 0
    # In batches, each one short script call, so Redis serves others between
    # them; at most as many as failed when asked (a job that fails again
    # meanwhile is not retried twice).
    while retried < failed:
        with ctx.deadline("retrying failed jobs"):
            n = await control.retry_failed(min(ADMIN_BATCH, failed - retried))
        if n == 0:
            break
        retried += n
    return json_response({"retried": retried})


@blueprint.post("/api/v1/queue/clean")
async def clean() -> Response:
    require_admin("cleaning the queue")
    status, older_than_s = _clean_request(require_object(await read_json(request)))
    ctx = context()
    _, control = _named_queue()
    removed = 0
    while True:  # batches, as in retry_failed
        with ctx.deadline("cleaning the queue"):
            n = await control.clean(status, older_than_s=older_than_s, limit=ADMIN_BATCH)
        removed += n
        if n < ADMIN_BATCH:
            break
    return json_response({"removed": removed, "status": status.value})


def _clean_request(body: dict[str, Any]) -> tuple[JobStatus, float | None]:
    problems = Problems()
    for key in body.keys() - {"status", "older_than_s"}:
        problems.add(f"$.{key}", 'unknown key; known keys: "status", "older_than_s"')
    names = ", ".join(s.value for s in CLEANABLE)
    raw = body.get("status")
    status = next((s for s in CLEANABLE if s.value == raw), None)
    if status is None:
        problems.add("$.status", f"expected one of {names}, got {raw!r}")
    age = body.get("older_than_s")
    if (
        age is not None
        and problems.expect(age, (int, float), "$.older_than_s", "seconds")
        and not 0 <= age <= MAX_AGE_S
    ):
        problems.add("$.older_than_s", f"must be from 0 to {MAX_AGE_S} seconds (10 years)")
    problems.raise_if_any()
    assert status is not None
    return status, None if age is None else float(age)


@blueprint.get("/api/v1/queue/throughput")
async def throughput() -> Response:
    # Finished jobs of every key: queue-wide volume, for admins.
    require_admin("reading the queue's throughput")
    # Wall-clock time on purpose: finish times in job records are unix seconds.
    now = time.time()
    ctx = context()
    rate = ctx.finish_rate_of(ctx.queue_arg())
    with ctx.deadline("counting finished jobs"):
        await rate.sample(now)
    return json_response(rate.snapshot(now))
