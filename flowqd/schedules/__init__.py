"""Scheduled flows: cron expressions and fixed intervals, fired by every main process.

``spec.py`` is a schedule and its ticks, ``scheduler.py`` the task that fires
them (one job per tick however many mains run), ``files.py`` the schedules
of ``flows.paths`` files. The broker keeps them (``queue.roles.Schedules``).
"""

from __future__ import annotations

from flowqd.schedules.files import read_schedule_files, store_schedules
from flowqd.schedules.scheduler import Scheduler
from flowqd.schedules.spec import Schedule, job_id, parse_schedule, plan_tick

__all__ = [
    "Schedule",
    "Scheduler",
    "job_id",
    "parse_schedule",
    "plan_tick",
    "read_schedule_files",
    "store_schedules",
]
