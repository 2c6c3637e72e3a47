"""Scheduled flows: create, list, pause, resume and delete. Every route needs an admin key.

A schedule fires jobs for as long as it lives, owned by the key that made it,
so, like registering flows, managing schedules is an operator's act.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from quart import Blueprint, Response, request

from flowqd.api.context import context, principal, require_admin
from flowqd.api.http import ApiError, json_response, read_json, require_object
from flowqd.errors import FlowValidationError
from flowqd.queue.roles import ScheduleEntry, Schedules
from flowqd.schedules.spec import SCHEDULE_ID, Schedule, parse_schedule

blueprint = Blueprint("schedules", __name__)


def _store() -> Schedules:
    schedules = context().schedules
    if schedules is None:  # an app built without them (some tests)
        raise ApiError(404, "schedules are not served by this API")
    return schedules


def _view(entry: ScheduleEntry) -> dict[str, Any]:
    schedule = Schedule.from_document(entry.document)
    return {
        **attrs.asdict(schedule),
        "paused": entry.due_ms is None,
        "next_run_at": None if entry.due_ms is None else entry.due_ms / 1000,
        "last_tick_at": None if entry.last_ms is None else entry.last_ms / 1000,
    }


def _not_found(schedule_id: str) -> ApiError:
    return ApiError(
        404, f"schedule {schedule_id!r} not found (GET /api/v1/schedules lists schedules)"
    )


async def _entry(schedule_id: str) -> ScheduleEntry:
    ctx = context()
    with ctx.deadline("reading the schedule"):
        entry = await _store().get_schedule(schedule_id)
    if entry is None:
        raise _not_found(schedule_id)
    return entry


@blueprint.get("/api/v1/schedules")
async def list_schedules() -> Response:
    require_admin("listing schedules")
    ctx = context()
    with ctx.deadline("listing schedules"):
        entries = await _store().list_schedules()
    return json_response({"schedules": [_view(e) for e in entries]})


@blueprint.get("/api/v1/schedules/<schedule_id>")
async def get_schedule(schedule_id: str) -> Response:
    require_admin("reading a schedule")
    return json_response(_view(await _entry(schedule_id)))


@blueprint.put("/api/v1/schedules/<schedule_id>")
async def put_schedule(schedule_id: str) -> Response:
    require_admin("creating a schedule")
    body = require_object(await read_json(request), "a schedule")
    problems: list[tuple[str, str]] = []
    if "id" in body and body["id"] != schedule_id:
        problems.append(("$.id", f"must equal the id in the URL ({schedule_id!r}), or be left out"))
    schedule, found = parse_schedule(body, schedule_id=schedule_id, owner=principal().name)
    problems += found
    ctx = context()
    if schedule is not None and not problems:
        try:
            with ctx.deadline("looking up the flow"):
                version = await ctx.flows.current_version(schedule.flow)
        except FlowValidationError:
            version = None
        if version is None:
            problems.append(
                ("$.flow", f"no valid flow {schedule.flow!r} is registered (GET /api/v1/flows)")
            )
    if problems or schedule is None:
        raise ApiError(
            422,
            "invalid schedule: " + "; ".join(f"{p}: {m}" for p, m in problems[:5]),
            problems=[{"path": p, "message": m} for p, m in problems],
        )
    store = _store()
    with ctx.deadline("storing the schedule"):
        await store.put_schedule(
            schedule_id, schedule.document(), schedule.first_due_ms(int(time.time() * 1000))
        )
        entry = await store.get_schedule(schedule_id)
    if entry is None:  # deleted meanwhile by another request
        raise _not_found(schedule_id)
    return json_response(_view(entry))


@blueprint.post("/api/v1/schedules/<schedule_id>/pause")
async def pause_schedule(schedule_id: str) -> Response:
    require_admin("pausing a schedule")
    ctx = context()
    with ctx.deadline("pausing the schedule"):
        found = await _store().pause_schedule(schedule_id)
    if not found:
        raise _not_found(schedule_id)
    return json_response(_view(await _entry(schedule_id)))


@blueprint.post("/api/v1/schedules/<schedule_id>/resume")
async def resume_schedule(schedule_id: str) -> Response:
    require_admin("resuming a schedule")
    entry = await _entry(schedule_id)
    schedule = Schedule.from_document(entry.document)
    ctx = context()
    # From now on: ticks that passed while paused are not run.
    with ctx.deadline("resuming the schedule"):
        found = await _store().resume_schedule(
            schedule_id, schedule.first_due_ms(int(time.time() * 1000))
        )
    if not found:
        raise _not_found(schedule_id)
    return json_response(_view(await _entry(schedule_id)))


@blueprint.delete("/api/v1/schedules/<schedule_id>")
async def delete_schedule(schedule_id: str) -> Response:
    require_admin("deleting a schedule")
    if not SCHEDULE_ID.fullmatch(schedule_id):
        raise _not_found(schedule_id)
    ctx = context()
    with ctx.deadline("deleting the schedule"):
        deleted = await _store().delete_schedule(schedule_id)
    if not deleted:
        raise _not_found(schedule_id)
    return Response(b"", status=204)
