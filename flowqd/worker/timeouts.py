"""One task that stops jobs past their timeout."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import trio

from flowqd.worker.held import Held, StopReason


@attrs.define(eq=False)
class Timeouts:
    """Stops held jobs whose ``deadline`` passed while they run.

    A deadline on a scope per job cost more than a no-op job, so one task
    sleeps until the earliest deadline it knows of (``earliest``); a job
    starting with an earlier one calls ``wake_at``.
    """

    held: dict[str, Held]
    stop: Callable[[str, StopReason], None]
    earliest: float = attrs.field(init=False, default=math.inf)
    _sleep: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)

    def wake_at(self, deadline: float) -> None:
        """A job started with ``deadline``, earlier than ``earliest``."""
        self.earliest = self._sleep.deadline = deadline

    async def run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self.earliest) as self._sleep:
                await trio.sleep_forever()
            now = trio.current_time()
            earliest = math.inf
            for job_id, held in list(self.held.items()):
                if held.scope is None:
                    continue  # not running
                if held.deadline <= now:
                    self.stop(job_id, StopReason.TIMEOUT)
                elif held.deadline < earliest:
                    earliest = held.deadline
            self.earliest = earliest
