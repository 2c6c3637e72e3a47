"""Jobs: enqueue (one or many), read, list, cancel, and their event streams (SSE).

A job goes to its flow's queue; routes about one job find its queue
(``ApiContext.visible``), and the list reads every queue unless ``?queue=``
names one.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from typing import Any

import attrs
import trio
from quart import Blueprint, Response, request

from flowqd import tracing
from flowqd.api import sse
from flowqd.api.context import (
    JOB_ID_HEADER,
    ApiContext,
    QueueRoles,
    context,
    principal,
    require_admin,
)
from flowqd.api.http import ApiError, Problems, json_response, read_json, require_object
from flowqd.errors import BrokerUnavailable
from flowqd.executors.base import sum_usage
from flowqd.flows import CompiledFlow
from flowqd.jobs import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    TERMINAL_STATUSES,
    Job,
    JobSpec,
    JobStatus,
    parse_event_id,
    through_terminal,
)
from flowqd.queue.base import JobIdTaken
from flowqd.queue.roles import JobStore

blueprint = Blueprint("jobs", __name__)

BULK_MAX = 1000
JOB_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
SPEC_KEYS = (
    "flow",
    "inputs",
    "job_id",
    "delay_s",
    "run_at",
    "priority",
    "max_attempts",
    "timeout_s",
)
KEEP_ALIVE = sse.sse_comment("keep-alive")
# Sent first: EventSource clients reconnect after this many ms, and the
# response headers leave at once instead of with the first event.
RETRY = b"retry: 2000\n\n"
REPLAY_PAGE = 1000
# Searching jobs reads the broker's per-state lists in pages, up to a bound.
SEARCH_PAGE = 500
SEARCH_SCAN = 5000


def job_json(job: Job, admin: bool, queue: str | None = None) -> dict[str, Any]:
    """A job as the API shows it (``queue``: the queue it is in); ``admin`` False
    hides which worker ran it (its id names the host and pid, which are for
    operators) and the failing code's traceback (file paths and code of the
    deployment are for operators too)."""
    error = job.error
    if error is not None and not admin and "traceback" in error:
        error = {k: v for k, v in error.items() if k != "traceback"}
    duration = (
        job.finished_at - job.started_at
        if job.finished_at is not None and job.started_at is not None
        else None
    )
    base = f"/api/v1/jobs/{job.id}"
    return {
        "id": job.id,
        "queue": queue,
        "flow_id": job.flow_id,
        "flow_version": job.flow_version,
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "owner": job.owner,
        "inputs": job.inputs,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration_s": duration,
        "result": job.result,
        "error": error,
        "nodes": job.nodes,
        "usage": sum_usage(job.nodes),
        "worker": job.worker if admin else None,
        "cancel_requested": job.cancel_requested,
        "priority": job.priority,
        "progress": job.progress,
        "links": {
            "self": base,
            "events": f"{base}/events",
            "cancel": f"{base}/cancel",
            "retry": f"{base}/retry",
            "promote": f"{base}/promote",
        },
    }


@attrs.frozen
class Bound:
    """The range a numeric field of a job accepts, and how to say it."""

    low: int
    high: int
    integer: bool
    low_open: bool = False  # low itself is not allowed (a timeout of 0)
    unit: str = ""

    def describe(self) -> str:
        low = f"greater than {self.low}" if self.low_open else f"from {self.low}"
        return f"{low} to {self.high}{self.unit}"


# Past these a value is a mistake, not a plan, and would overflow the broker's
# millisecond arithmetic (delay_s of 1e308 was an OverflowError).
BOUNDS = {
    "delay_s": Bound(0, 365 * 86400, integer=False, unit=" seconds (365 days)"),
    "timeout_s": Bound(0, 30 * 86400, integer=False, low_open=True, unit=" seconds (30 days)"),
    "max_attempts": Bound(1, 1000, integer=True),
    "priority": Bound(PRIORITY_MIN, PRIORITY_MAX, integer=True),
}


def _number(problems: Problems, raw: dict[str, Any], key: str, path: str) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    bound = BOUNDS[key]
    kinds: tuple[type, ...] = (int,) if bound.integer else (int, float)
    where = f"{path}.{key}"
    if not problems.expect(value, kinds, where, "an integer" if bound.integer else "a number"):
        return None
    if not (bound.low < value if bound.low_open else bound.low <= value) or value > bound.high:
        problems.add(where, f"must be {bound.describe()}")
        return None
    return value


def _run_at(problems: Problems, raw: dict[str, Any], path: str) -> float | None:
    """``run_at`` as a delay from now in seconds (0 when it is past), None when absent.

    Unix seconds (a number) or an ISO-8601 date and time with its offset
    ("2026-12-05T04:00:00Z"): a time without one would depend on the server's
    zone. Within the same bound as ``delay_s``.
    """
    value = raw.get("run_at")
    if value is None:
        return None
    where = f"{path}.run_at"
    wanted = 'unix seconds or an ISO-8601 time with its offset, e.g. "2026-12-05T04:00:00Z"'
    if not problems.expect(value, (int, float, str), where, wanted):
        return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            problems.add(where, f"expected {wanted}, got a string that is not one")
            return None
        if when.tzinfo is None:
            problems.add(where, 'add its offset ("Z" for UTC, or e.g. "+02:00")')
            return None
        at = when.timestamp()
    elif not math.isfinite(value):
        problems.add(where, f"expected {wanted}")
        return None
    else:
        at = float(value)
    if "delay_s" in raw:
        problems.add(where, "give delay_s or run_at, not both")
        return None
    delay = at - time.time()
    bound = BOUNDS["delay_s"]
    if delay > bound.high:
        problems.add(
            where,
            f"is {delay / 86400:.0f} days from now; at most {bound.high // 86400} days ahead "
            "(unix time in seconds, not milliseconds)",
        )
        return None
    return max(delay, 0.0)


def parse_spec(raw: Any, path: str, problems: Problems) -> dict[str, Any] | None:
    if not problems.expect(raw, (dict,), path, 'a job object with "flow" and "inputs"'):
        return None
    for key in raw:
        if key not in SPEC_KEYS:
            problems.add(f"{path}.{key}", f"unknown key; known keys: {', '.join(SPEC_KEYS)}")
    flow = raw.get("flow")
    if flow is None:
        problems.add(f"{path}.flow", "missing: name the flow to run")
    else:
        problems.expect(flow, (str,), f"{path}.flow", "a flow id")
    inputs = raw.get("inputs", {})
    problems.expect(inputs, (dict,), f"{path}.inputs", "an object")
    job_id = raw.get("job_id")
    if (
        job_id is not None
        and problems.expect(job_id, (str,), f"{path}.job_id", "a string")
        and not JOB_ID.fullmatch(job_id)
    ):
        problems.add(f"{path}.job_id", "use 1-128 letters, digits and _ . : -")
    return {
        "flow": flow,
        "inputs": inputs,
        "job_id": job_id,
        "delay_s": _run_at(problems, raw, path) or _number(problems, raw, "delay_s", path) or 0.0,
        "priority": _number(problems, raw, "priority", path),
        "max_attempts": _number(problems, raw, "max_attempts", path),
        "timeout_s": _number(problems, raw, "timeout_s", path),
    }


async def build_specs(ctx: ApiContext, body: Any) -> tuple[list[JobSpec], bool]:
    """The body's jobs, all checked before any is enqueued; bulk form is ``{"jobs": [...]}``.
    Each flow's queue is checked too (``ApiContext.queue_of``)."""
    body = require_object(body)
    problems = Problems()
    bulk = "jobs" in body
    if bulk:
        if set(body) != {"jobs"}:
            problems.add("$", 'the bulk form has one key, "jobs"')
        raw_jobs = body["jobs"]
        if not problems.expect(raw_jobs, (list,), "$.jobs", "an array of job objects"):
            raw_jobs = []
        elif not raw_jobs:
            problems.add("$.jobs", "is empty: send at least one job")
        elif len(raw_jobs) > BULK_MAX:
            problems.add("$.jobs", f"has {len(raw_jobs)} jobs; send at most {BULK_MAX} a request")
        drafts = [
            (parse_spec(raw, f"$.jobs[{i}]", problems), f"$.jobs[{i}]")
            for i, raw in enumerate(raw_jobs[:BULK_MAX])
        ]
    else:
        drafts = [(parse_spec(body, "$", problems), "$")]
    problems.raise_if_any()
    flows: dict[str, CompiledFlow | None] = {}
    missing = Problems()
    for draft, path in drafts:
        assert draft is not None
        flow_id = draft["flow"]
        if flow_id not in flows:
            try:
                flows[flow_id] = await ctx.runnable_flow(flow_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                flows[flow_id] = None
        flow = flows[flow_id]
        if flow is None:
            missing.add(
                f"{path}.flow",
                f"flow {flow_id!r} not found: register it with PUT /api/v1/flows/{flow_id}",
            )
            continue
        ctx.queue_of(flow)  # 409 now, before any job is enqueued
        for name in sorted(flow.flow_inputs - draft["inputs"].keys()):
            problems.add(
                f"{path}.inputs.{name}", f"flow {flow_id!r} reads ${name}: add it to inputs"
            )
    if missing.items:
        raise ApiError(
            404,
            "; ".join(f"{p}: {m}" for p, m in missing.items),
            problems=[{"path": p, "message": m} for p, m in missing.items],
        )
    problems.raise_if_any("the jobs cannot run with these inputs")
    owner = principal().name
    trace = tracing.job_trace(request.scope)  # every job of the request continues its trace
    specs = []
    for draft, _path in drafts:
        assert draft is not None
        flow = flows[draft["flow"]]
        assert flow is not None
        specs.append(
            JobSpec(
                flow_id=flow.id,
                flow_version=flow.version or 0,
                inputs=draft["inputs"],
                job_id=draft["job_id"],
                delay_s=float(draft["delay_s"]),
                priority=flow.priority if draft["priority"] is None else draft["priority"],
                max_attempts=draft["max_attempts"],
                timeout_s=draft["timeout_s"],
                owner=owner,
                trace=trace,
            )
        )
    return specs, bulk


def _query_int(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    # isascii: "²".isdigit() is true, and int("²") fails; the length keeps
    # int() off a megabyte of digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(maximum)) or int(raw) > maximum:
        raise ApiError(400, f"query parameter {name} must be a whole number from 0 to {maximum}")
    return int(raw)


def _matches(job: Job, flow: str | None, search: str | None) -> bool:
    if flow is not None and job.flow_id != flow:
        return False
    if search is None:
        return True
    needle = search.lower()
    return job.id.lower().startswith(needle) or needle in job.flow_id.lower()


async def _search(
    ctx: ApiContext,
    queues: dict[str, QueueRoles],
    states: list[JobStatus],
    flow: str | None,
    search: str | None,
    offset: int,
    limit: int,
) -> Response:
    """Jobs of ``queues`` and ``states`` (newest created first) filtered by flow, by
    ``q`` (an id or its start, or part of a flow id) and by what the caller may
    see, paged after filtering. The broker lists by state only, so this reads at
    most ``SEARCH_SCAN`` jobs per state and queue; ``scan_limited`` says the
    search stopped there."""
    who = principal()
    wanted = offset + limit + 1
    found: list[tuple[Job, str]] = []
    limited = False
    with ctx.deadline("searching jobs"):
        for name, roles in queues.items():
            jobs = roles.jobs
            exact = await jobs.get_job(search) if search and JOB_ID.fullmatch(search) else None
            if (
                exact is not None
                and who.may_see(exact.owner)
                and exact.status in states
                and _matches(exact, flow, None)
            ):
                return json_response(
                    {
                        "jobs": [] if offset else [job_json(exact, who.admin, name)],
                        "has_more": False,
                        "scan_limited": False,
                    }
                )
        for name, roles in queues.items():
            for state in states:
                matched, cut = await _scan(roles.jobs, state, wanted, flow, search)
                limited = limited or cut
                found += [(j, name) for j in matched]
    # Jobs move between states while we page: an id seen twice counts once.
    unique = {(q, j.id): (j, q) for j, q in found}.values()
    ordered = sorted(unique, key=lambda jq: jq[0].created_at, reverse=True)
    return json_response(
        {
            "jobs": [job_json(j, who.admin, q) for j, q in ordered[offset : offset + limit]],
            "has_more": len(ordered) > offset + limit,
            "scan_limited": limited,
        }
    )


async def _scan(
    jobs: JobStore, state: JobStatus, wanted: int, flow: str | None, search: str | None
) -> tuple[list[Job], bool]:
    """Up to ``wanted`` jobs of one queue and state that match; and whether the
    scan stopped at ``SEARCH_SCAN``."""
    who = principal()
    matched: list[Job] = []
    scanned = 0
    while len(matched) < wanted:
        if scanned >= SEARCH_SCAN:
            return matched, True
        # First exactly what a page needs (all an admin's unfiltered list
        # reads, every poll of the dashboard), then larger pages.
        size = min(SEARCH_PAGE, wanted) if scanned == 0 else SEARCH_PAGE
        page = await jobs.list_jobs(state, offset=scanned, limit=size)
        scanned += size
        matched += [j for j in page if who.may_see(j.owner) and _matches(j, flow, search)]
        if len(page) < size:
            break
    return matched, False


def _taken(exc: JobIdTaken, bulk: bool, enqueued: int = 0) -> ApiError:
    """409 for job ids another key's jobs hold. It says no more than that (not the
    job's status, not its owner): ids are one namespace, so "taken" is all a
    caller may learn about another key's job."""
    paths = [f"$.jobs[{n}].job_id" if bulk else "$.job_id" for n in exc.positions]
    message = "is taken by another job: pick another job_id"
    summary = "; ".join(f"{p}: {message}" for p in paths[:5])
    done = (
        f"; {enqueued} jobs of this request, of other queues, were enqueued"
        if enqueued
        else "; no job of this request was enqueued"
    )
    return ApiError(
        409,
        f"{summary}{done}" if bulk else summary,
        problems=[{"path": p, "message": message} for p in paths],
    )


@blueprint.post("/api/v1/jobs")
async def enqueue() -> Response:
    ctx = context()
    specs, bulk = await build_specs(ctx, await read_json(request))
    # A request counts once per flow (and queue) it names, however many jobs it holds.
    for flow_id in dict.fromkeys(spec.flow_id for spec in specs):
        await ctx.check_rate(flow_id)
    queues = [await _spec_queue(ctx, spec) for spec in specs]
    for name in dict.fromkeys(queues):
        await ctx.check_queue_rate(name)
    ids = await _enqueue(ctx, specs, queues, bulk)
    ctx.metrics.enqueued.inc(len(ids))
    if bulk:
        return json_response(
            {"jobs": [{"id": i, "location": f"/api/v1/jobs/{i}"} for i in ids]}, 202
        )
    location = f"/api/v1/jobs/{ids[0]}"
    status = JobStatus.DELAYED if specs[0].delay_s > 0 else JobStatus.WAITING
    return json_response(
        {
            "id": ids[0],
            "status": status.value,
            "location": location,
            "events": f"{location}/events",
        },
        202,
        {"Location": location, JOB_ID_HEADER: ids[0]},
    )


async def _spec_queue(ctx: ApiContext, spec: JobSpec) -> str:
    # build_specs read the flow moments ago: the store's cache answers.
    flow = ctx.flows.cached(spec.flow_id, spec.flow_version)
    if flow is None:
        flow = await ctx.runnable_flow(spec.flow_id)
    return ctx.queue_of(flow)[0]


async def _enqueue(
    ctx: ApiContext, specs: list[JobSpec], queues: list[str], bulk: bool
) -> list[str]:
    """Enqueue each spec into its queue: one call per queue. Atomic within a queue
    only: a bulk request whose jobs go to several queues and hits a taken
    job id may have enqueued the jobs of the queues before it (the 409 says so)."""
    ids: list[str] = [""] * len(specs)
    by_queue: dict[str, list[int]] = {}
    for position, name in enumerate(queues):
        by_queue.setdefault(name, []).append(position)
    done = 0
    for name, positions in by_queue.items():
        try:
            with ctx.deadline("enqueueing"):
                got = await ctx.queue(name).jobs.enqueue([specs[i] for i in positions])
        except JobIdTaken as exc:
            taken = JobIdTaken([positions[i] for i in exc.positions])
            raise _taken(taken, bulk, enqueued=done) from None
        for position, job_id in zip(positions, got, strict=True):
            ids[position] = job_id
        done += len(got)
    return ids


@blueprint.get("/api/v1/jobs")
async def list_jobs() -> Response:
    raw = request.args.get("status")
    try:
        states = [JobStatus(raw)] if raw else list(JobStatus)
    except ValueError:
        raise ApiError(
            400, f"status must be one of {', '.join(s.value for s in JobStatus)}"
        ) from None
    limit = _query_int("limit", 50, 1000)
    offset = _query_int("offset", 0, 1_000_000)
    flow = request.args.get("flow") or None
    search = (request.args.get("q") or "").strip() or None
    who = principal()
    ctx = context()
    name = ctx.queue_arg()
    queues = dict(ctx.queues) if name is None else {name: ctx.queue(name)}
    if flow is None and search is None and who.admin and len(states) == 1 and len(queues) == 1:
        [(name, roles)] = queues.items()
        with ctx.deadline("listing jobs"):
            found = await roles.jobs.list_jobs(states[0], offset=offset, limit=limit + 1)
        return json_response(
            {
                "jobs": [job_json(j, who.admin, name) for j in found[:limit]],
                "has_more": len(found) > limit,
                "scan_limited": False,
            }
        )
    # Several states or queues, another key's jobs to skip, or a filter: page after merging.
    return await _search(ctx, queues, states, flow, search, offset, limit)


@blueprint.get("/api/v1/jobs/<job_id>")
async def get_job(job_id: str) -> Response:
    found = await context().visible(job_id)
    return json_response(job_json(found.job, principal().admin, found.queue))


@blueprint.post("/api/v1/jobs/<job_id>/cancel")
async def cancel(job_id: str) -> Response:
    ctx = context()
    found = await ctx.visible(job_id)
    job = found.job
    if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise ApiError(409, f"job {job_id} already {job.status.value}; nothing to cancel")
    who = principal().name
    with ctx.deadline("cancelling the job"):
        now = await found.roles.jobs.cancel(job_id, reason=f"cancelled by {who or 'an API call'}")
    if now is None:
        raise ApiError(404, f"job {job_id} not found (removed by retention)")
    # 202: a running job stops when its worker hears of it.
    return json_response(
        job_json(now, principal().admin, found.queue),
        200 if now.status in TERMINAL_STATUSES else 202,
    )


@blueprint.post("/api/v1/jobs/<job_id>/retry")
async def retry(job_id: str) -> Response:
    ctx = context()
    found = await ctx.visible(job_id)
    job = found.job
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ApiError(
            409, f"job {job_id} is {job.status.value}; only failed or cancelled jobs can be retried"
        )
    with ctx.deadline("retrying the job"):
        now = await found.roles.jobs.retry(job_id)
    if now is None:
        raise ApiError(404, f"job {job_id} not found (removed by retention)")
    if now.status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.COMPLETED):
        raise ApiError(409, f"job {job_id} could not be retried (it is {now.status.value})")
    # 202: queued again; attempts go on and the stream keeps the earlier runs' events.
    return json_response(job_json(now, principal().admin, found.queue), 202)


@blueprint.post("/api/v1/jobs/<job_id>/promote")
async def promote(job_id: str) -> Response:
    require_admin("promoting a job")
    ctx = context()
    found = await ctx.visible(job_id)
    job = found.job
    if job.status != JobStatus.DELAYED:
        raise ApiError(
            409, f"job {job_id} is {job.status.value}; only a delayed job can be promoted"
        )
    with ctx.deadline("promoting the job"):
        now = await found.roles.jobs.promote(job_id)
    if now is None:
        raise ApiError(404, f"job {job_id} not found (removed by retention)")
    return json_response(job_json(now, True, found.queue))


@blueprint.delete("/api/v1/jobs/<job_id>")
async def delete_job(job_id: str) -> Response:
    require_admin("deleting a job")
    ctx = context()
    queue = ctx.queue_arg()
    with ctx.deadline("deleting the job"):
        found = await ctx.locate(job_id, queue)
        status = None if found is None else await found.roles.jobs.delete_job(job_id)
    if status is None:
        raise ApiError(404, f"job {job_id} not found (unknown, or removed by retention)")
    if status == JobStatus.ACTIVE:
        raise ApiError(
            409,
            f"job {job_id} is active: a worker is running it. Cancel it first "
            f"(POST /api/v1/jobs/{job_id}/cancel), then delete it once it has ended",
        )
    return Response(b"", status=204)


@blueprint.get("/api/v1/jobs/<job_id>/events")
async def events(job_id: str) -> Response:
    after = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    try:
        parse_event_id(after)
    except ValueError:
        raise ApiError(
            400,
            "Last-Event-ID (or ?after=) must be an event id such as "
            "'1712345678901-0' from this stream's id: lines (two whole "
            "numbers below 2**64), or '0'",
        ) from None
    ctx = context()
    found = await ctx.visible(job_id)
    return event_stream(ctx, found.job, after, found.roles.jobs)


def event_stream(ctx: ApiContext, job: Job, after: str, jobs: JobStore | None = None) -> Response:
    """``job``'s events as SSE, read from ``jobs`` (its queue's; default: the default queue's)."""
    jobs = ctx.jobs if jobs is None else jobs
    server = ctx.config.server

    async def replay(send: sse.Send) -> None:
        # The job ended before we looked: its stream is complete, read it in pages.
        # One entry more than a page: whether "retried" follows a terminal event
        # at the page's end decides whether the stream goes on.
        cursor = after
        while True:
            with trio.fail_after(server.broker_timeout_s * 5):
                page = await jobs.read_events(job.id, after=cursor, count=REPLAY_PAGE + 1)
            events, ended = through_terminal(page)
            if len(events) > REPLAY_PAGE:
                events, ended = events[:REPLAY_PAGE], False
            if events:
                await send.send(sse.sse_events(events))
            if ended or len(page) <= REPLAY_PAGE:
                return
            cursor = events[-1].id

    async def live(send: sse.Send) -> None:
        async with jobs.open_event_watch(job.id, after=after) as batches:
            async for batch in batches:
                await send.send(sse.sse_events(batch))

    async def produce(send: sse.Send, stream: sse.Stream) -> None:
        await send.send(RETRY)
        pump = replay if job.status in TERMINAL_STATUSES else live

        async def run_pump() -> None:
            try:
                await pump(send)
            except (BrokerUnavailable, trio.TooSlowError):
                # The client reconnects with Last-Event-ID and loses nothing.
                await send.send(
                    sse.sse_comment("broker unreachable; reconnect with Last-Event-ID to resume")
                )

        await sse.drive(
            send,
            run_pump,
            heartbeat=KEEP_ALIVE,
            heartbeat_s=server.heartbeat_s,
            shutdown=ctx.shutdown,
        )

    return sse.stream_response(
        ctx.background(),
        produce,
        name=f"events of job {job.id}",
        on_open=ctx.metrics.stream_opened,
        on_close=ctx.metrics.stream_closed,
    )
