"""``GET /api/v1/openapi.json``: every route, its body and its errors (OpenAPI 3.1).

Written by hand; tests/api/test_openapi_routes.py holds it to the app's
routes both ways (every path and method, and which routes need no key).
"""

from __future__ import annotations

from typing import Any

from flowqd._version import __version__

Schema = dict[str, Any]

ERROR: Schema = {
    "type": "object",
    "required": ["statusCode", "success", "message"],
    "properties": {
        "statusCode": {"type": "integer"},
        "success": {"const": False},
        "message": {"type": "string", "description": "what went wrong and what to do"},
        "problems": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "jobId": {"type": "string"},
    },
}
ERRORS = {
    "400": "malformed JSON (the message names line, column and byte), JSON nested deeper "
    "than server.max_json_depth, or a bad query parameter",
    "401": "missing or unknown API key (Authorization: Bearer <key>)",
    "403": "the route needs an admin key, or a web page of another origin sent a write "
    "(server.allowed_origins)",
    "408": "the request body did not arrive within server.body_timeout_s",
    "404": "unknown flow, job or credential (another key's jobs are 404 too)",
    "409": "the request conflicts with the current state (say, cancelling a finished job)",
    "413": "body larger than server.max_body_bytes",
    "415": "a body not sent as JSON: send Content-Type: application/json",
    "421": "the Host header names a host this server does not answer for (server.allowed_hosts)",
    "422": "well-formed JSON that is not a valid request; problems lists each with its path",
    "429": "the flow is past its rate limit ([limits]); Retry-After says when to retry",
    "503": "the broker (Redis) is unreachable or slow, the server is stopping, or it holds "
    "server.max_connections connections",
}
JSON_ANY: Schema = {"type": "object", "additionalProperties": True}


def _errors(*codes: str) -> dict[str, Any]:
    return {
        code: {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _at_the_door(paths: dict[str, Any]) -> dict[str, Any]:
    """Answers any route may give before it runs: the Host check, cross-origin writes,
    a body not sent as JSON or too slow, too many connections."""
    for methods in paths.values():
        for method, op in methods.items():
            codes = [
                "421",
                "503",
                *(["403"] if method != "get" else []),
                *(["400", "408", "415"] if "requestBody" in op else []),
            ]
            op["responses"] = {**_errors(*codes), **op["responses"]}
    return paths


def _json(description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or JSON_ANY}},
    }


def _body(schema: Schema, description: str = "") -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _param(name: str, where: str = "path", description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": {"type": "string"},
        "description": description,
    }


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    errors: tuple[str, ...] = (),
    open_route: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_errors(*errors)}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if open_route:
        op["security"] = []
    return op


PREDICTION_BODY: Schema = {
    "type": "object",
    "properties": {
        "question": {"type": ["string", "null"]},
        "streaming": {
            "type": ["boolean", "string", "null"],
            "description": "true: answer as server-sent events in Flowise's format",
        },
        "chatId": {"type": ["string", "null"]},
        "overrideConfig": {
            "type": ["object", "null"],
            "description": "sessionId and values flows read as $overrideConfig.x",
        },
        "history": {"type": ["array", "null"]},
        "priority": {
            "type": ["integer", "null"],
            "minimum": -1000,
            "maximum": 1000,
            "description": "the job's priority (higher is claimed first; default: the "
            "flow's priority, else 0); Flowise SDKs may send it as overrideConfig.priority",
        },
        "uploads": {"type": ["array", "null"]},
        "form": {"type": ["object", "null"]},
    },
}
PREDICTION_ANSWER: Schema = {
    "type": "object",
    "properties": {
        k: {"type": "string"}
        for k in ("text", "question", "chatId", "chatMessageId", "executionId", "sessionId")
    }
    | {"agentFlowExecutedData": {"type": "array", "items": JSON_ANY}, "json": {}},
}
JOB_SPEC: Schema = {
    "type": "object",
    "required": ["flow"],
    "properties": {
        "flow": {"type": "string"},
        "inputs": {"type": "object"},
        "job_id": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_.:-]{1,128}$",
            "description": "idempotency: the same key sending the same id makes one "
            "job (202 again); an id a job of another key holds is 409",
        },
        "delay_s": {
            "type": "number",
            "minimum": 0,
            "maximum": 31536000,
            "description": "run no earlier than this many seconds from now (then status "
            "delayed; an admin may promote it to run now)",
        },
        "run_at": {
            "type": ["number", "string"],
            "description": "run no earlier than this time: unix seconds, or ISO-8601 with "
            "its offset (2026-12-05T04:00:00Z); a past time runs now; at most 365 days "
            "ahead; not with delay_s",
        },
        "priority": {
            "type": "integer",
            "minimum": -1000,
            "maximum": 1000,
            "description": "higher is claimed first, FIFO within one priority; default: "
            "the flow's priority, else 0. Nothing ages a waiting job: a steady stream of "
            "higher priorities starves lower ones",
        },
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 2592000},
    },
}
JOB: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "queue": {"type": ["string", "null"], "description": "the queue the job is in"},
        "flow_id": {"type": "string"},
        "flow_version": {"type": "integer"},
        "status": {"enum": ["waiting", "delayed", "active", "completed", "failed", "cancelled"]},
        "attempts": {"type": "integer"},
        "result": {},
        "error": {
            "type": ["object", "null"],
            "description": "{message, node, reason?}; traceback (the failing code's, "
            "credentials redacted, at most 16 KB) for admin keys only",
        },
        "nodes": {"type": "array", "items": JSON_ANY},
        "usage": {
            "type": ["object", "null"],
            "description": "tokens the job's models used, summed over its node records: "
            "{input_tokens, output_tokens, total_tokens}; null when no node recorded any",
        },
        "priority": {"type": "integer"},
        "progress": {
            "type": ["number", "object", "null"],
            "description": "the latest progress the job's nodes reported (ctx.progress): "
            "a number from 0 to 1 or a small object; null before the first. Each report "
            "is also a progress event on the job's event stream",
        },
        "created_at": {"type": "number"},
        "started_at": {"type": ["number", "null"]},
        "finished_at": {"type": ["number", "null"]},
    },
}
CHAT_MESSAGE: Schema = {
    "type": "object",
    "description": "Flowise's ChatMessage entity; fields flowqd has no value for "
    "(sourceDocuments, usedTools, fileAnnotations, agentReasoning, reasonContent, "
    "fileUploads, artifacts, action, memoryType, leadEmail, followUpPrompts) are null",
    "properties": {
        "id": {"type": "string", "format": "uuid", "description": "stable for the message"},
        "role": {"enum": ["userMessage", "apiMessage"]},
        "chatflowid": {"type": "string"},
        "executionId": {"type": "string", "description": "the job that answered"},
        "content": {"type": "string"},
        "chatType": {"const": "EXTERNAL"},
        "chatId": {"type": "string"},
        "sessionId": {"type": "string"},
        "createdDate": {
            "type": "string",
            "format": "date-time",
            "description": "when the job completed (the question's and its answer's)",
        },
    },
}
SSE = {"text/event-stream": {"schema": {"type": "string"}}}
JOB_ID_HEADER = {
    "X-Flowqd-Job-Id": {"description": "the job this answer is about", "schema": {"type": "string"}}
}


SCHEDULE_SPEC: Schema = {
    "type": "object",
    "description": 'give exactly one of "cron" and "interval_s"',
    "properties": {
        "flow": {"type": "string", "description": "the id of a registered flow"},
        "cron": {
            "type": "string",
            "description": "a cron expression croniter reads: five fields, a sixth for "
            "seconds, or @hourly, @daily, ...; in timezone's local time (DST: a skipped "
            "time fires just after the gap, a repeated one fires twice)",
        },
        "interval_s": {"type": "number", "minimum": 1, "description": "seconds between ticks"},
        "timezone": {"type": "string", "default": "UTC", "description": "an IANA zone"},
        "inputs": {"type": "object", "description": "the inputs of every job it fires"},
        "missed": {
            "enum": ["once", "skip"],
            "default": "once",
            "description": "ticks missed while no main ran: once, one job for them all; "
            "skip, none (a tick runs only within schedules.grace_s of its time)",
        },
    },
    "required": ["flow"],
}
SCHEDULE: Schema = {
    "type": "object",
    "properties": {
        **SCHEDULE_SPEC["properties"],
        "id": {"type": "string"},
        "owner": {"type": ["string", "null"], "description": "the key that made it; its jobs"},
        "paused": {"type": "boolean"},
        "next_run_at": {"type": ["number", "null"], "description": "unix seconds; null paused"},
        "last_tick_at": {"type": ["number", "null"], "description": "last tick claimed"},
    },
}
SCHEDULE_ID = [_param("schedule_id", description="1-128 letters, digits and _ . -")]
QUEUE = _param(
    "queue",
    "query",
    "a queue (GET /api/v1/queues lists them); unknown: 404. For one job: look only "
    "there (else the default queue first, then the others)",
)
QUEUE_OP = _param("queue", "query", "the queue to act on; default: the default queue (queue.name)")
JOB_ID = [_param("job_id"), QUEUE]
FLOW_ID = [_param("flow_id")]
CHAT_QUERY = [
    _param("sessionId", "query", "one conversation (Flowise's sessionId, else its chatId)"),
    _param("chatId", "query", "the messages of that chat"),
    _param(
        "chatType",
        "query",
        "INTERNAL, EXTERNAL, ... (one, a JSON array, or repeated); flowqd's are EXTERNAL",
    ),
    _param("order", "query", "ASC (default) or DESC by createdDate; sortOrder is read too"),
    _param("startDate", "query", "ISO 8601; a date alone is its midnight UTC"),
    _param("endDate", "query", "ISO 8601, inclusive"),
    _param("messageId", "query", "one message"),
]
CHAT_PAGING = [
    _param("page", "query", "1-based page of conversations, with limit"),
    _param("limit", "query", "conversations a page"),
]
# Every route of the app, by path and method: tests/api/test_openapi_routes.py fails
# when a route is missing here, or a path here is no route.
PATHS: dict[str, Any] = _at_the_door(
    {
        "/api/v1/ping": {
            "get": _op(
                "Liveness: answers pong",
                {"200": {"description": "pong", "content": {"text/plain": {}}}},
                open_route=True,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics: requests, latencies, jobs by outcome, queue depth, "
                "Redis connections, process_*; summed over every server.processes",
                {"200": {"description": "text format"}},
                open_route=True,
            )
        },
        "/healthz": {
            "get": _op(
                "Liveness: the process answers",
                {"200": _json('{"status": "ok"}')},
                open_route=True,
            )
        },
        "/readyz": {
            "get": _op(
                "Readiness: the API is serving and the broker answers within "
                "server.broker_timeout_s",
                {
                    "200": _json('{"status": "ready", "reason": "taking requests"}'),
                    "503": _json('{"status": "not ready", "reason": what is wrong}'),
                },
                open_route=True,
            )
        },
        "/api/v1/openapi.json": {
            "get": _op("This document", {"200": _json("OpenAPI 3.1")}, open_route=True)
        },
        "/api/v1/prediction/{flow_id}": {
            "post": _op(
                "Run a flow and wait for its answer (Flowise-compatible)",
                {
                    "200": {
                        "description": "the answer; with streaming, server-sent events framed "
                        'message:\\ndata:{"event","data"}, ending with end; '
                        "token events carry the output node's text only (its "
                        "tokens, and what they did not stream as one last token), "
                        "so joining them gives the answer once. Every answer "
                        "given once the job exists (200, 409, 500, 503, 504) "
                        "names it in X-Flowqd-Job-Id",
                        "headers": JOB_ID_HEADER,
                        "content": {"application/json": {"schema": PREDICTION_ANSWER}, **SSE},
                    },
                    "500": _json("the job failed: message says which node and why", ERROR)
                    | {"headers": JOB_ID_HEADER},
                    "504": _json(
                        "no result within server.prediction_timeout_s; jobId names the job, "
                        "which goes on",
                        ERROR,
                    )
                    | {"headers": JOB_ID_HEADER},
                },
                params=FLOW_ID,
                body=_body(PREDICTION_BODY),
                errors=("400", "401", "404", "409", "413", "422", "429", "503"),
            )
        },
        "/api/v1/chatflows-streaming/{flow_id}": {
            "get": _op(
                "Whether the flow can stream (always true; the Flowise SDKs ask first)",
                {"200": _json('{"isStreaming": true}')},
                params=FLOW_ID,
                open_route=True,
            )
        },
        "/api/v1/chatmessage/{flow_id}": {
            "get": _op(
                "The flow's conversation messages (Flowise-compatible), two a turn "
                "(question, answer), of the caller's key (admin: every key's); at most "
                "1000 conversations, the most recently active, paged by page and limit",
                {"200": _json("the messages", {"type": "array", "items": CHAT_MESSAGE})},
                params=[*FLOW_ID, *CHAT_QUERY, *CHAT_PAGING],
                errors=("400", "401", "404", "503"),
            ),
            "delete": _op(
                "Forget the flow's conversations (Flowise-compatible) of the caller's key "
                "(admin: every key's): those of sessionId, or those holding a message of "
                "chatId, or all; whole conversations, so startDate, endDate and messageId "
                "are refused (400)",
                {"200": _json('{"raw": [], "affected": messages removed}')},
                params=[*FLOW_ID, *CHAT_QUERY[:3]],
                errors=("400", "401", "404", "503"),
            ),
        },
        "/api/v1/jobs": {
            "post": _op(
                'Enqueue a job, or many with {"jobs": [...]}, each into its flow\'s queue '
                "(the flow document's queue; else the default queue)",
                {
                    "202": _json(
                        "the job's id and location (Location and X-Flowqd-Job-Id "
                        'headers too); bulk: {"jobs": [{id, location}]}'
                    )
                    | {"headers": JOB_ID_HEADER},
                    "409": _json(
                        "a job_id is held by a job of another key; problems "
                        "names each such job_id's path and nothing about that "
                        "job. A bulk with one enqueues none of its jobs of that "
                        "queue (jobs of other queues before it may be: the message says "
                        "how many); or a flow's queue this server does not declare",
                        ERROR,
                    ),
                },
                body=_body(
                    {
                        "oneOf": [
                            JOB_SPEC,
                            {
                                "type": "object",
                                "properties": {"jobs": {"type": "array", "items": JOB_SPEC}},
                            },
                        ]
                    }
                ),
                errors=("400", "401", "404", "413", "422", "429", "503"),
            ),
            "get": _op(
                "List the caller's jobs, newest first, of every queue or one; filter by state, "
                "flow, or q (a job id or its start, or part of a flow id)",
                {
                    "200": _json(
                        '{"jobs": [...], "has_more": bool, "scan_limited": '
                        "bool (a search reads at most 5000 jobs per state)}"
                    )
                },
                params=[
                    _param("status", "query"),
                    _param("flow", "query"),
                    _param("q", "query"),
                    _param("limit", "query"),
                    _param("offset", "query"),
                    _param("queue", "query", "only this queue's jobs; default: every queue"),
                ],
                errors=("400", "401", "503"),
            ),
        },
        "/api/v1/jobs/{job_id}": {
            "get": _op(
                "A job: status, attempts, timings, result or error, per-node data",
                {"200": _json("the job", JOB)},
                params=JOB_ID,
                errors=("401", "404", "503"),
            ),
            "delete": _op(
                "Delete a job: its record and its events (admin). An active job is refused "
                "(409): cancel it first, then delete it once it has ended",
                {"204": {"description": "deleted"}},
                params=JOB_ID,
                errors=("401", "403", "404", "409", "503"),
            ),
        },
        "/api/v1/jobs/{job_id}/promote": {
            "post": _op(
                "Run a delayed job now (admin): back to waiting at once",
                {"200": _json("promoted", JOB)},
                params=JOB_ID,
                errors=("401", "403", "404", "409", "503"),
            )
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": _op(
                "Cancel a job (queued: at once; running: its worker stops it)",
                {"200": _json("cancelled", JOB), "202": _json("running: cancel requested", JOB)},
                params=JOB_ID,
                errors=("401", "404", "409", "503"),
            )
        },
        "/api/v1/jobs/{job_id}/retry": {
            "post": _op(
                "Run a failed or cancelled job again: back to waiting; attempts go on (the next "
                "is attempt n+1; max_attempts grows when all were used) and the event stream "
                "keeps the earlier runs' events, with a 'retried' event {attempt} right after "
                "the earlier run's terminal event",
                {"202": _json("queued again", JOB)},
                params=JOB_ID,
                errors=("401", "403", "404", "409", "503"),
            )
        },
        "/api/v1/jobs/{job_id}/events": {
            "get": _op(
                "The job's events as server-sent events (id:, event:, data: JSON); resumes after "
                "Last-Event-ID (or ?after=: two whole numbers below 2**64, else 400); a finished "
                "job's stream is replayed; a running job's stream ends after the terminal event "
                "(end, error or cancelled), also when Last-Event-ID is past the stream's last "
                "event (it resumes from that event). Among the others: node_start, node_end, "
                "token, and progress (data: what the node passed to ctx.progress, also the "
                "job's progress field)",
                {"200": {"description": "event stream", "content": SSE}},
                params=[*JOB_ID, _param("Last-Event-ID", "header"), _param("after", "query")],
                errors=("400", "401", "404", "503"),
            )
        },
        "/api/v1/flows": {
            "get": _op(
                "Flow ids and current versions",
                {"200": _json('{"flows": [{id, version}]}')},
                errors=("401", "503"),
            )
        },
        "/api/v1/flows/{flow_id}": {
            "get": _op(
                "A flow: its id, version and the job inputs it reads; the document "
                "(URLs, prompts, credential names) for admin keys only",
                {"200": _json("{id, version, inputs, flow (admin keys)}")},
                params=[*FLOW_ID, _param("version", "query")],
                errors=("400", "401", "404", "409", "503"),
            ),
            "put": _op(
                "Register a new version of a flow (admin)",
                {"200": _json("{id, version}")},
                params=FLOW_ID,
                body=_body(JSON_ANY, "{id?, nodes, output}"),
                errors=("400", "401", "403", "413", "422", "503"),
            ),
            "delete": _op(
                "Forget a flow (queued jobs still run their version) (admin)",
                {"204": {"description": "deleted"}},
                params=FLOW_ID,
                errors=("401", "403", "404", "503"),
            ),
        },
        "/api/v1/credentials": {
            "get": _op(
                "Credential names, never values (admin)",
                {"200": _json('{"credentials": [names]}')},
                errors=("401", "403", "503"),
            )
        },
        "/api/v1/credentials/{name}": {
            "put": _op(
                "Store a credential, sealed with security.secret_key (admin)",
                {"204": {"description": "stored"}},
                params=[_param("name")],
                body=_body(
                    {
                        "type": "object",
                        "required": ["value"],
                        "properties": {"value": {"type": "string"}},
                    }
                ),
                errors=("400", "401", "403", "413", "422", "503"),
            ),
            "delete": _op(
                "Delete a credential (admin)",
                {"204": {"description": "deleted"}},
                params=[_param("name")],
                errors=("401", "403", "404", "503"),
            ),
        },
        "/api/v1/schedules": {
            "get": _op(
                "Every schedule, with its next run (admin)",
                {"200": _json('{"schedules": [schedule]}')},
                errors=("401", "403", "503"),
            )
        },
        "/api/v1/schedules/{schedule_id}": {
            "get": _op(
                "One schedule (admin)",
                {"200": _json("the schedule", SCHEDULE)},
                params=SCHEDULE_ID,
                errors=("401", "403", "404", "503"),
            ),
            "put": _op(
                "Create or replace a schedule (admin): each tick fires one job of the flow, "
                "owned by this key, id sched:<schedule_id>:<tick ms>. The same definition "
                "again changes nothing; a changed one starts again from now (a paused one "
                "stays paused)",
                {"200": _json("the schedule", SCHEDULE)},
                params=SCHEDULE_ID,
                body=_body(SCHEDULE_SPEC),
                errors=("400", "401", "403", "413", "422", "503"),
            ),
            "delete": _op(
                "Delete a schedule (admin); the jobs it fired stay",
                {"204": {"description": "deleted"}},
                params=SCHEDULE_ID,
                errors=("401", "403", "404", "503"),
            ),
        },
        "/api/v1/schedules/{schedule_id}/pause": {
            "post": _op(
                "Pause a schedule (admin): no tick fires until resumed",
                {"200": _json("the schedule", SCHEDULE)},
                params=SCHEDULE_ID,
                errors=("401", "403", "404", "503"),
            )
        },
        "/api/v1/schedules/{schedule_id}/resume": {
            "post": _op(
                "Resume a schedule (admin) from its next tick after now: ticks that passed "
                "while paused do not run",
                {"200": _json("the schedule", SCHEDULE)},
                params=SCHEDULE_ID,
                errors=("401", "403", "404", "503"),
            )
        },
        "/api/v1/queue": {
            "get": _op(
                "Jobs per state (admin keys; null for others: the counts tell every key's "
                "volume), paused or not, live workers (their id, host, pid and jobs held for "
                "admin keys only; others see worker-N and jobs_held null)",
                {"200": _json("{name, paused, counts, workers}")},
                params=[QUEUE_OP],
                errors=("401", "404", "503"),
            )
        },
        "/api/v1/queues": {
            "get": _op(
                "Every queue, the default one first: each as GET /api/v1/queue shows it",
                {"200": _json('{"default": name, "queues": [{name, paused, counts, workers}]}')},
                errors=("401", "503"),
            )
        },
        "/api/v1/queue/throughput": {
            "get": _op(
                "Jobs finished (completed, failed) per 30 s over the last 15 minutes, oldest "
                "first, and the rate over the last 5 minutes (admin: every key's jobs)",
                {
                    "200": _json(
                        "{window_s, bucket_s, now, buckets: [{start, completed, failed}], "
                        "last_5_min, per_minute, saturated}"
                    )
                },
                params=[QUEUE_OP],
                errors=("401", "403", "404", "503"),
            )
        },
        "/api/v1/queue/retry-failed": {
            "post": _op(
                "Retry every failed job, oldest first, in batches of 500 (admin); as many as "
                "were failed when asked",
                {"200": _json('{"retried": n}')},
                params=[QUEUE_OP],
                errors=("401", "403", "404", "503"),
            )
        },
        "/api/v1/queue/clean": {
            "post": _op(
                "Delete the jobs (records and events) that ended in a state, all of them or "
                "those older than older_than_s, oldest first, in batches of 500 (admin)",
                {"200": _json('{"removed": n, "status": ...}')},
                body=_body(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {
                            "status": {"enum": ["completed", "failed", "cancelled"]},
                            "older_than_s": {"type": "number", "minimum": 0},
                        },
                    }
                ),
                params=[QUEUE_OP],
                errors=("401", "403", "404", "422", "503"),
            )
        },
        "/api/v1/queue/pause": {
            "post": _op(
                "Stop workers claiming jobs (admin)",
                {"200": _json('{"paused": true}')},
                params=[QUEUE_OP],
                errors=("401", "403", "404", "503"),
            )
        },
        "/api/v1/queue/resume": {
            "post": _op(
                "Let workers claim jobs again (admin)",
                {"200": _json('{"paused": false}')},
                params=[QUEUE_OP],
                errors=("401", "403", "404", "503"),
            )
        },
        "/admin/queues": {
            "get": _op(
                "The queue dashboard (dashboard.enabled): an HTML page; 401 with its sign-in form "
                "when keys are configured and the browser is not signed in",
                {
                    "200": {"description": "the page", "content": {"text/html": {}}},
                    "401": {
                        "description": "the page, opening on its sign-in form (HTML), or a JSON "
                        "error for clients that do not accept HTML",
                        "content": {"text/html": {}},
                    },
                },
                errors=("404",),
                open_route=True,
            )
        },
        "/admin/queues/static/{name}": {
            "get": _op(
                "The dashboard's scripts and styles (no data, no key needed)",
                {"200": {"description": "a file"}, "304": {"description": "not modified (ETag)"}},
                params=[_param("name")],
                errors=("404",),
                open_route=True,
            )
        },
        "/admin/queues/session": {
            "get": _op(
                "Who the dashboard is signed in as",
                {"200": _json("{name, admin, open}")},
                errors=("401", "404"),
                open_route=True,
            ),
            "post": _op(
                "Dashboard sign-in: checks the key and sets an HttpOnly, SameSite=Strict cookie "
                "holding a signed session token (never the key; it ends after 12 h or when the "
                "key is revoked) the API accepts on same-origin requests (unsafe methods also "
                "need the X-Flowqd-CSRF header)",
                {"200": _json("{name, admin, open}; Set-Cookie flowqd_session")},
                body=_body(
                    {
                        "type": "object",
                        "required": ["key"],
                        "properties": {"key": {"type": "string"}},
                    }
                ),
                errors=("400", "401", "403", "404", "422"),
                open_route=True,
            ),
            "delete": _op(
                "Dashboard sign-out: clears the cookie (needs X-Flowqd-CSRF)",
                {"204": {"description": "signed out"}},
                errors=("403", "404"),
                open_route=True,
            ),
        },
    }
)


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flowqd",
            "version": __version__,
            "description": "Queue-mode flow execution daemon, main role API. Every error "
            "body is JSON with statusCode, success and message.",
        },
        "paths": PATHS,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a key from `flowqd keys add NAME`",
                },
                "dashboard": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "flowqd_session",
                    "description": "set by POST /admin/queues/session; accepted on "
                    "same-origin requests only, and on unsafe methods "
                    "only with the X-Flowqd-CSRF header",
                },
            },
        },
        "security": [{"bearer": []}, {"dashboard": []}],
    }
