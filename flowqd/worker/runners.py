"""Claimed jobs waiting for a runner, and the long-lived runner tasks that take them.

A task per job costs more than a no-op job itself, so claimed jobs go to a
backlog that long-lived runner tasks take them from, one job at a time. A
runner that takes a job makes sure another runner is free for the rest of the
backlog (waking an idle one or starting one), so a job that waits (a delay, an
HTTP call) never holds up the jobs behind it, while jobs that finish without
waiting all run in one runner, one after another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio

from flowqd.worker.held import Held

# Runners left idle beyond this many exit (a burst of waiting jobs may have
# started thousands); a few stay for the next burst.
IDLE_RUNNERS_KEPT = 32
# A runner whose jobs never wait lets other tasks (the flusher, the claim
# loop) run after this many jobs, so claims and writes overlap with work.
RUNNER_YIELD_EVERY = 64

# Runs one job in the given scope, its runner's (see RunnerPool._run_runner).
RunJob = Callable[[Held, trio.CancelScope], Awaitable[None]]


@attrs.define(eq=False)
class RunnerPool:
    """Runner tasks in ``nursery`` that run claimed jobs with ``run_job``.

    Jobs claimed and not finished running (``busy``) are what ``concurrency``
    bounds. The claimer waits in ``wait_for_room`` and hands jobs over with
    ``backlog.append`` then ``claimed``.
    """

    nursery: trio.Nursery
    run_job: RunJob
    concurrency: int
    # Claimed jobs no runner has taken yet, oldest first.
    backlog: deque[Held] = attrs.field(init=False, factory=deque)
    busy: int = attrs.field(init=False, default=0)
    # Set when the claimer may claim again (backlog empty, a slot free).
    _room: trio.Event = attrs.field(init=False, factory=trio.Event)
    # Runners not running a job (parked in _lot, or about to look at the
    # backlog), and where idle runners wait.
    _idle: int = attrs.field(init=False, default=0)
    _lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _stopping: bool = attrs.field(init=False, default=False)

    async def wait_for_room(self) -> int:
        """Wait until the runners took every job claimed so far and a slot is free.

        Returns how many slots are free. Jobs that finish fast are claimed as
        fast as they finish, not thousands ahead of the runners.
        """
        while self.backlog or self.busy >= self.concurrency:
            self._room = trio.Event()
            await self._room.wait()
        return self.concurrency - self.busy

    def claimed(self, count: int) -> None:
        """``count`` jobs were appended to the backlog: get a runner on them."""
        self.busy += count
        self._want_runner()

    def stop(self) -> None:
        """Runners finish the backlog, then exit."""
        self._stopping = True
        self._lot.unpark_all()

    def take_backlog(self) -> list[Held]:
        """The jobs no runner took (the drain deadline passed first), no longer busy."""
        left = list(self.backlog)
        self.backlog.clear()
        self.busy -= len(left)
        return left

    def _want_runner(self) -> None:
        """Make sure a runner will look at the backlog: wake an idle one or start one."""
        if self._idle == 0:
            self._idle += 1
            self.nursery.start_soon(self._run_runner, name="flowqd.worker.runner")
        elif self._lot:  # else the idle one is already woken
            self._lot.unpark()

    async def _run_runner(self) -> None:
        # Jobs run in the runner's cancel scope, not one of their own (entering
        # a scope per job cost more than a no-op job): stopping a running job
        # cancels its runner's scope, and the runner opens a fresh one after.
        since_yield = 0
        backlog = self.backlog
        while True:
            with trio.CancelScope() as scope:
                while not scope.cancel_called:
                    while not backlog:
                        if self._stopping:
                            self._idle -= 1
                            return
                        since_yield = 0
                        await self._lot.park()
                    held = backlog.popleft()
                    self._idle -= 1
                    if backlog:
                        self._want_runner()
                    elif not self._stopping:
                        self._room.set()
                    try:
                        await self.run_job(held, scope)
                    finally:
                        self.busy -= 1
                        if not backlog:
                            self._room.set()
                    self._idle += 1
                    if self._idle > IDLE_RUNNERS_KEPT and not backlog:
                        self._idle -= 1
                        return
                    since_yield += 1
                    if since_yield >= RUNNER_YIELD_EVERY and not scope.cancel_called:
                        since_yield = 0
                        await trio.lowlevel.checkpoint()
