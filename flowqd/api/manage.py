"""Flows, credentials and the queue: the routes that change shared state need an admin key."""

from __future__ import annotations

import re
import time
from typing import Any

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from flowqd.api.context import ApiContext, principal, require_admin
from flowqd.api.http import ApiError, json_response, read_json, require_object
from flowqd.api.throughput import FinishRate
from flowqd.errors import CredentialError, FlowValidationError
from flowqd.jobs import WorkerInfo

CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _problems(exc: FlowValidationError) -> list[dict[str, str]]:
    return [{"path": path, "message": message} for path, message in exc.problems]


def _anonymous(worker: WorkerInfo, number: int) -> dict[str, Any]:
    """A worker as a non-admin key sees it: whether the queue is served, not where.
    Host, pid and the id made of them are for operators."""
    return {"id": f"worker-{number}", "ready": worker.ready, "jobs_held": worker.jobs_held,
            "concurrency": worker.concurrency, "started_at": worker.started_at,
            "last_seen": worker.last_seen}


def register(app: QuartTrio, ctx: ApiContext) -> None:
    state = ctx.state
    finish_rate = FinishRate(state.broker)

    # ---- flows ------------------------------------------------------------------------

    @app.get("/api/v1/flows")
    async def list_flows() -> Response:
        with ctx.broker("listing flows"):
            flows = await state.flows.list()
        return json_response({"flows": [{"id": k, "version": v} for k, v in sorted(flows.items())]})

    @app.get("/api/v1/flows/<flow_id>")
    async def get_flow(flow_id: str) -> Response:
        raw = request.args.get("version")
        if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise ApiError(400, "query parameter version must be a whole number "
                                "(at most 18 digits)")
        try:
            with ctx.broker("reading the flow"):
                flow = await state.flows.get(flow_id, int(raw) if raw else None)
        except FlowValidationError as exc:
            raise ApiError(409, f"flow {flow_id!r} is stored but no longer valid: {exc}",
                           problems=_problems(exc)) from None
        if flow is None:
            raise ApiError(404, f"flow {flow_id!r}{' version ' + raw if raw else ''} not found "
                                "(GET /api/v1/flows lists flows)")
        answer: dict[str, Any] = {"id": flow.id, "version": flow.version,
                                  "inputs": sorted(flow.flow_inputs)}
        # Any key may run any flow, so its id and the inputs it reads are for all;
        # the document (URLs, prompts, credential names) is for admins.
        if principal().admin:
            answer["flow"] = flow.document
        return json_response(answer)

    @app.put("/api/v1/flows/<flow_id>")
    async def put_flow(flow_id: str) -> Response:
        require_admin("registering a flow")
        document = require_object(await read_json(request), "a flow document")
        if "id" not in document:
            document = {"id": flow_id, **document}
        elif document["id"] != flow_id:
            raise ApiError(422, f"invalid flow: $.id: must equal the id in the URL ({flow_id!r}),"
                                " or be left out",
                           problems=[{"path": "$.id", "message": "must equal the id in the URL"}])
        try:
            flow = state.flows.compile(document)  # CPU: outside the broker's deadline
            with ctx.broker("storing the flow"):
                stored_id, version = await state.flows.store(flow)
        except FlowValidationError as exc:
            raise ApiError(422, f"invalid flow: {exc}", problems=_problems(exc)) from None
        return json_response({"id": stored_id, "version": version,
                              "location": f"/api/v1/flows/{stored_id}"})

    @app.delete("/api/v1/flows/<flow_id>")
    async def delete_flow(flow_id: str) -> Response:
        require_admin("deleting a flow")
        with ctx.broker("deleting the flow"):
            deleted = await state.flows.delete(flow_id)
        if not deleted:
            raise ApiError(404, f"flow {flow_id!r} not found (GET /api/v1/flows lists flows)")
        return Response(b"", status=204)

    # ---- credentials: names only in every answer -------------------------------------------

    @app.get("/api/v1/credentials")
    async def list_credentials() -> Response:
        require_admin("listing credentials")
        with ctx.broker("listing credentials"):
            names = await state.credentials.names()
        return json_response({"credentials": names})

    @app.put("/api/v1/credentials/<name>")
    async def put_credential(name: str) -> Response:
        require_admin("storing a credential")
        if not CREDENTIAL_NAME.fullmatch(name):
            raise ApiError(422, "credential names use 1-128 letters, digits and _ . -")
        body = require_object(await read_json(request))
        value = body.get("value")
        # The messages name types only: the value must never be echoed.
        if not isinstance(value, str) or not value:
            raise ApiError(422, "send {\"value\": \"<the secret>\"} with a non-empty string",
                           problems=[{"path": "$.value", "message": "expected a non-empty string"}])
        if set(body) != {"value"}:
            raise ApiError(422, "the body has one key, \"value\"",
                           problems=[{"path": "$", "message": "unknown keys besides \"value\""}])
        try:
            with ctx.broker("storing the credential"):
                await state.credentials.put(name, value)
        except CredentialError as exc:
            raise ApiError(503, str(exc)) from None
        return Response(b"", status=204)

    @app.delete("/api/v1/credentials/<name>")
    async def delete_credential(name: str) -> Response:
        require_admin("deleting a credential")
        with ctx.broker("deleting the credential"):
            deleted = await state.credentials.delete(name)
        if not deleted:
            raise ApiError(404, f"credential {name!r} not found (GET /api/v1/credentials "
                                "lists names)")
        return Response(b"", status=204)

    # ---- queue ---------------------------------------------------------------------------

    @app.get("/api/v1/queue")
    async def queue() -> Response:
        with ctx.broker("reading the queue"):
            counts = await state.broker.counts()
            paused = await state.broker.is_paused()
            workers = await state.broker.workers()
        admin = principal().admin
        return json_response({
            "name": state.config.queue.name,
            "paused": paused,
            "counts": {status.value: n for status, n in counts.items()},
            "workers": [attrs.asdict(w) if admin else _anonymous(w, n)
                        for n, w in enumerate(sorted(workers, key=lambda w: w.started_at), 1)],
        })

    @app.post("/api/v1/queue/pause")
    async def pause() -> Response:
        require_admin("pausing the queue")
        with ctx.broker("pausing the queue"):
            await state.broker.pause()
        return json_response({"paused": True})

    @app.post("/api/v1/queue/resume")
    async def resume() -> Response:
        require_admin("resuming the queue")
        with ctx.broker("resuming the queue"):
            await state.broker.resume()
        return json_response({"paused": False})

    @app.get("/api/v1/queue/throughput")
    async def throughput() -> Response:
        # Wall-clock time on purpose: finish times in job records are unix seconds.
        now = time.time()
        with ctx.broker("counting finished jobs"):
            await finish_rate.sample(now)
        return json_response(finish_rate.snapshot(now))
