"""A schedule's ticks (cron in a time zone, across DST; intervals) and its missed-tick policy."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from flowqd.schedules.spec import Schedule, parse_schedule, plan_tick

PARIS = ZoneInfo("Europe/Paris")


def ms(*parts: int, zone: ZoneInfo = PARIS, fold: int = 0) -> int:
    return round(datetime(*parts, tzinfo=zone, fold=fold).timestamp() * 1000)  # type: ignore[misc]


def cron(expr: str, zone: str = "Europe/Paris", missed: Any = "once") -> Schedule:
    return Schedule(id="s", flow="f", cron=expr, timezone=zone, missed=missed)


def test_cron_ticks_in_the_schedules_zone() -> None:
    daily = cron("0 9 * * *")
    # 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
    assert daily.next_tick_ms(0, ms(2026, 1, 10, 12, 0)) == ms(2026, 1, 11, 9, 0)
    assert ms(2026, 1, 11, 9, 0) == ms(2026, 1, 11, 8, 0, zone=ZoneInfo("UTC"))
    assert daily.next_tick_ms(0, ms(2026, 7, 10, 12, 0)) == ms(
        2026, 7, 11, 7, 0, zone=ZoneInfo("UTC")
    )
    # A tick is strictly after: at 09:00 sharp the next one is tomorrow's.
    assert daily.next_tick_ms(0, ms(2026, 1, 11, 9, 0)) == ms(2026, 1, 12, 9, 0)


def test_dst_gap_fires_after_it_and_repeated_hour_fires_twice() -> None:
    at_230 = cron("30 2 * * *")
    # 2026-03-29: 02:00 -> 03:00 in Paris; 02:30 does not exist that day.
    assert at_230.next_tick_ms(0, ms(2026, 3, 28, 12, 0)) == ms(2026, 3, 29, 3, 0)
    # 2026-10-25: 03:00 -> 02:00; 02:30 happens twice, each one fires.
    first = at_230.next_tick_ms(0, ms(2026, 10, 24, 12, 0))
    second = at_230.next_tick_ms(0, first)
    assert first == ms(2026, 10, 25, 2, 30, fold=0)
    assert second == ms(2026, 10, 25, 2, 30, fold=1) == first + 3600_000
    assert at_230.next_tick_ms(0, second) == ms(2026, 10, 26, 2, 30)


def test_interval_ticks_count_from_the_due_time() -> None:
    every = Schedule(id="s", flow="f", interval_s=10)
    assert every.first_due_ms(1_000) == 11_000
    assert every.next_tick_ms(11_000, 11_000) == 21_000
    assert every.next_tick_ms(11_000, 15_500) == 21_000
    assert every.next_tick_ms(11_000, 51_000) == 61_000
    assert every.last_tick_ms(11_000, 59_999) == 51_000


def test_once_fires_one_job_for_every_missed_tick() -> None:
    every = Schedule(id="s", flow="f", interval_s=60)
    # Down from the tick at 60 s until 10 minutes later: one job, for the latest tick.
    tick = plan_tick(every, 60_000, 660_500, grace_ms=1000)
    assert (tick.fire_ms, tick.next_ms, tick.several) == (660_000, 720_000, True)
    on_time = plan_tick(every, 60_000, 60_200, grace_ms=1000)
    assert (on_time.fire_ms, on_time.next_ms, on_time.several) == (60_000, 120_000, False)


def test_skip_drops_ticks_later_than_the_grace() -> None:
    every = Schedule(id="s", flow="f", interval_s=60, missed="skip")
    late = plan_tick(every, 60_000, 665_000, grace_ms=1000)
    assert late.fire_ms is None and late.next_ms == 720_000
    # The latest tick is within the grace: it runs, the older ones do not.
    recent = plan_tick(every, 60_000, 660_500, grace_ms=1000)
    assert recent.fire_ms == 660_000 and recent.several
    daily = cron("0 3 * * *", missed="skip")
    due = ms(2026, 5, 1, 3, 0)
    # Back an hour after a daily tick: skipped, next one tomorrow.
    tick = plan_tick(daily, due, due + 3600_000, grace_ms=60_000)
    assert tick.fire_ms is None and tick.next_ms == ms(2026, 5, 2, 3, 0)
    tick = plan_tick(cron("0 3 * * *"), due, due + 3600_000, grace_ms=60_000)
    assert tick.fire_ms == due


def test_parse_reports_every_problem_with_its_path() -> None:
    schedule, problems = parse_schedule(
        {
            "flow": "",
            "cron": "61 * * * *",
            "timezone": "Mars/Olympus",
            "inputs": [],
            "missed": "all",
            "color": 1,
        },
        schedule_id="bad id",
        owner=None,
    )
    assert schedule is None
    paths = [p for p, _ in problems]
    assert paths == [
        "$.id",
        "$.color",
        "$.flow",
        "$.cron",
        "$.timezone",
        "$.inputs",
        "$.missed",
    ]
    _, both = parse_schedule(
        {"flow": "f", "cron": "* * * * *", "interval_s": 5}, schedule_id="a", owner=None
    )
    assert both == [("$", 'give exactly one of "cron" (an expression) and "interval_s"')]
    _, short = parse_schedule({"flow": "f", "interval_s": 0.5}, schedule_id="a", owner=None)
    assert [p for p, _ in short] == ["$.interval_s"]


@pytest.mark.parametrize("zone", ["../etc/passwd", "/etc/localtime", "", 3])
def test_time_zones_are_iana_names_only(zone: Any) -> None:
    _, problems = parse_schedule(
        {"flow": "f", "interval_s": 5, "timezone": zone}, schedule_id="a", owner=None
    )
    assert [p for p, _ in problems] == ["$.timezone"]


def test_parse_and_store_round_trip() -> None:
    schedule, problems = parse_schedule(
        {"flow": "f", "cron": "@daily", "timezone": "Asia/Tokyo", "inputs": {"q": 1}},
        schedule_id="nightly",
        owner="admin",
    )
    assert problems == [] and schedule is not None
    assert Schedule.from_document(schedule.document()) == schedule
    assert schedule.missed == "once" and schedule.owner == "admin"
