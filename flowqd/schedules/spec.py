"""A schedule: which flow it runs with which inputs, when, and what a missed tick does.

Times are unix milliseconds (integers, as the broker keeps them). A cron
schedule's ticks are croniter's, in the schedule's IANA time zone; an
interval schedule's ticks are its first due time plus whole intervals, so
every main process computes the same ticks from the stored due time.

Daylight saving time follows croniter (7.x): a local time that does not
exist (the hour skipped in spring) fires at the first instant after the
gap (02:30 becomes 03:00); a local time that happens twice (the hour
repeated in autumn) fires twice, once in each offset.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import orjson

if TYPE_CHECKING:
    from croniter import croniter

SCHEDULE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
Missed = Literal["once", "skip"]
MISSED: tuple[Missed, ...] = ("once", "skip")
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 366 * 86400.0
# The keys of a schedule as the API and flow files write it ("flow" is the
# file's own flow there, so files leave it out).
KEYS = ("flow", "cron", "interval_s", "timezone", "inputs", "missed")

Problem = tuple[str, str]


@attrs.frozen
class Schedule:
    """A schedule's definition: what the broker stores, and what changes reset it."""

    id: str
    flow: str
    cron: str | None = None
    interval_s: float | None = None
    timezone: str = "UTC"
    inputs: dict[str, Any] = attrs.Factory(dict)
    missed: Missed = "once"
    owner: str | None = None  # the API key that made it; its jobs are that key's

    def document(self) -> bytes:
        """The stored form: equal definitions give equal bytes."""
        return orjson.dumps(attrs.asdict(self), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_document(cls, document: bytes) -> Schedule:
        return cls(**orjson.loads(document))

    def first_due_ms(self, now_ms: int) -> int:
        """The first tick after ``now_ms`` of a new (or resumed, or changed) schedule."""
        if self.interval_s is not None:
            return now_ms + interval_ms(self.interval_s)
        return self.next_tick_ms(now_ms, now_ms)

    def next_tick_ms(self, due_ms: int, after_ms: int) -> int:
        """The first tick later than ``after_ms``, for a schedule due at ``due_ms``.

        Intervals count from ``due_ms`` (so processes agree); cron ticks do
        not depend on it.
        """
        if self.interval_s is not None:
            step = interval_ms(self.interval_s)
            return due_ms + ((max(after_ms, due_ms) - due_ms) // step + 1) * step
        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        start = datetime.fromtimestamp(after_ms / 1000, zone)
        tick = _croniter()(self.cron, start).get_next(datetime)
        return round(tick.timestamp() * 1000)

    def last_tick_ms(self, due_ms: int, now_ms: int) -> int:
        """The latest tick at or before ``now_ms`` of a schedule due at ``due_ms``
        (``due_ms`` itself when no later one has come)."""
        if self.interval_s is not None:
            step = interval_ms(self.interval_s)
            return due_ms + max(0, now_ms - due_ms) // step * step
        assert self.cron is not None
        # get_prev is strictly before its start: start just after now.
        start = datetime.fromtimestamp((now_ms + 1) / 1000, ZoneInfo(self.timezone))
        tick = _croniter()(self.cron, start).get_prev(datetime)
        return max(due_ms, round(tick.timestamp() * 1000))


def _croniter() -> type[croniter]:
    # Imported on first use: croniter brings dateutil, ~1.5 MB of RSS that a
    # worker, and a main with no cron schedule, never need.
    from croniter import croniter

    return croniter


def interval_ms(interval_s: float) -> int:
    return max(1, round(interval_s * 1000))


@attrs.frozen
class Tick:
    """What one due schedule does now: move its due time, and fire a job or not."""

    schedule: Schedule
    due_ms: int  # the stored due time, the compare-and-set guard of the claim
    next_ms: int  # the stored due time after the claim: its first tick in the future
    fire_ms: int | None  # the tick the job is for (the latest one due); None: skipped
    several: bool  # more than one tick was due (the scheduler was away)


def plan_tick(schedule: Schedule, due_ms: int, now_ms: int, *, grace_ms: int) -> Tick:
    """The claim of a schedule due at ``due_ms`` (<= ``now_ms``), by its missed-tick policy.

    Every tick up to ``now_ms`` is consumed at once. ``once``: one job, for
    the latest of them. ``skip``: one job only when that latest tick is at
    most ``grace_ms`` old (on time, give or take a scheduler's wake-up),
    else none; the schedule goes on from its next future tick either way.
    """
    latest = schedule.last_tick_ms(due_ms, now_ms)
    on_time = schedule.missed == "once" or now_ms - latest <= grace_ms
    return Tick(
        schedule,
        due_ms,
        schedule.next_tick_ms(due_ms, now_ms),
        latest if on_time else None,
        latest > due_ms,
    )


def job_id(schedule_id: str, tick_ms: int) -> str:
    """The id of a tick's job: a second enqueue of one tick adds nothing."""
    return f"sched:{schedule_id}:{tick_ms}"


def parse_schedule(
    raw: Any, *, schedule_id: str, owner: str | None, flow: str | None = None, path: str = "$"
) -> tuple[Schedule | None, list[Problem]]:
    """A schedule from its JSON (or TOML) form, or every problem with its path.

    ``flow`` given (a flow file's schedules): the object must not name one.
    """
    problems: list[Problem] = []
    if not SCHEDULE_ID.fullmatch(schedule_id):
        problems.append((f"{path}.id", "schedule ids use 1-128 letters, digits and _ . -"))
    if not isinstance(raw, dict):
        return None, [*problems, (path, f"expected a schedule object, got {_type_name(raw)}")]
    known = KEYS if flow is None else ("id", *(k for k in KEYS if k != "flow"))
    for key in sorted(raw.keys() - set(known) - ({"id"} if flow is None else set())):
        problems.append((f"{path}.{key}", f"unknown key; known keys: {', '.join(known)}"))
    if flow is None:
        flow = raw.get("flow")
        if not isinstance(flow, str) or not flow:
            problems.append((f"{path}.flow", "expected the id of a registered flow"))
    cron, interval = raw.get("cron"), raw.get("interval_s")
    if (cron is None) == (interval is None):
        problems.append((path, 'give exactly one of "cron" (an expression) and "interval_s"'))
    if cron is not None and not (isinstance(cron, str) and _croniter().is_valid(cron)):
        problems.append(
            (
                f"{path}.cron",
                f"not a cron expression croniter reads: {cron!r} (five fields "
                '"min hour day month weekday", a sixth for seconds, or @hourly, @daily...)',
            )
        )
    if interval is not None and (
        not isinstance(interval, int | float)
        or isinstance(interval, bool)
        or not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S
    ):
        problems.append(
            (
                f"{path}.interval_s",
                f"expected seconds from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}",
            )
        )
    zone = raw.get("timezone", "UTC")
    if not _zone_ok(zone):
        problems.append(
            (f"{path}.timezone", f"not an IANA time zone: {zone!r} (UTC, Europe/Paris, ...)")
        )
    inputs = raw.get("inputs", {})
    if not isinstance(inputs, dict):
        problems.append((f"{path}.inputs", f"expected an object, got {_type_name(inputs)}"))
    missed = raw.get("missed", "once")
    if missed not in MISSED:
        problems.append((f"{path}.missed", f'expected "once" or "skip", got {missed!r}'))
    if problems:
        return None, problems
    try:
        orjson.dumps(inputs)
    except TypeError as exc:  # TOML dates and the like
        return None, [(f"{path}.inputs", f"not JSON-compatible: {exc}")]
    return (
        Schedule(
            id=schedule_id,
            flow=cast(str, flow),
            cron=cron,
            interval_s=None if interval is None else float(interval),
            timezone=zone,
            inputs=inputs,
            missed=missed,
            owner=owner,
        ),
        [],
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "a number", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


def _zone_ok(zone: Any) -> bool:
    if not isinstance(zone, str) or not zone or zone.startswith(("/", ".")) or ".." in zone:
        return False
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True
