"""A job the worker holds, and why it may stop before it ends by itself."""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs
import trio

from flowqd.jobs import Claimed, Outcome, OutcomeKind


class StopReason(enum.Enum):
    """Why the worker stopped a job before the job ended by itself."""

    CANCEL = "cancel"  # a user asked
    TIMEOUT = "timeout"  # past its job timeout
    LOST = "lost"  # its lock went to another worker: report nothing
    UNSTORABLE = "unstorable"  # its data cannot be stored: fail it saying so


@attrs.define(eq=False)
class Held:
    """A job this worker holds, from claim until its outcome is recorded."""

    claimed: Claimed
    # While the job runs: its runner's cancel scope (see RunnerPool).
    scope: trio.CancelScope | None = None
    deadline: float = math.inf  # the job timeout, from when it started
    stop_reason: StopReason | None = None

    def stopped(self) -> bool:
        # A method, not a test of the field: a stop comes in while the job awaits.
        return self.stop_reason is not None

    def outcome(self, kind: OutcomeKind, **fields: Any) -> Outcome:
        return Outcome(job_id=self.claimed.job.id, token=self.claimed.token, kind=kind, **fields)
