"""Schedules declared in the flow files of ``flows.paths``.

A flow file may hold a ``schedules`` list beside its nodes; each entry is a
schedule of that file's flow (``id`` and ``cron`` or ``interval_s``, and
optionally ``timezone``, ``inputs``, ``missed``). They are read and checked
before anything is stored, and stored at start after the flows: one that is
unchanged keeps its next run and its paused state, so every restart of every
main process may load them again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowqd.errors import FlowValidationError
from flowqd.flows.store import FLOW_SUFFIXES, parse_flow_file
from flowqd.queue.roles import Schedules
from flowqd.schedules.spec import Schedule, parse_schedule

KEY = "schedules"


def read_schedule_files(paths: Sequence[str]) -> list[Schedule]:
    """Every schedule of the flow files in ``paths``; FlowValidationError lists every
    problem, each path prefixed by its file (missing folders are the flows' problem)."""
    problems: list[tuple[str, str]] = []
    found: list[Schedule] = []
    seen: dict[str, Path] = {}
    for file in _files(paths):
        try:
            document = parse_flow_file(file)
        except FlowValidationError:
            continue  # reported by the flows' own loading
        raw = document.get(KEY)
        if raw is None:
            continue
        flow = document.get("id")
        if not isinstance(raw, list):
            problems.append((f"{file}: $.{KEY}", "expected a list of schedule objects"))
            continue
        for n, entry in enumerate(raw):
            path = f"$.{KEY}[{n}]"
            sid: Any = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(sid, str):
                problems.append((f"{file}: {path}.id", "expected the schedule's id (a string)"))
                continue
            schedule, errors = parse_schedule(
                entry, schedule_id=sid, owner=None, flow=str(flow), path=path
            )
            problems += [(f"{file}: {p}", m) for p, m in errors]
            if schedule is None:
                continue
            if sid in seen:
                problems.append((f"{file}: {path}.id", f"schedule {sid!r} also in {seen[sid]}"))
                continue
            seen[sid] = file
            found.append(schedule)
    if problems:
        raise FlowValidationError(problems)
    return found


async def store_schedules(schedules: Schedules, found: Sequence[Schedule]) -> list[str]:
    """Store ``found``; returns the ids that were new or changed."""
    now_ms = int(time.time() * 1000)
    changed: list[str] = []
    for schedule in found:
        if await schedules.put_schedule(
            schedule.id, schedule.document(), schedule.first_due_ms(now_ms)
        ):
            changed.append(schedule.id)
    return changed


def _files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in FLOW_SUFFIXES))
        elif path.is_file():
            files.append(path)
    return files
