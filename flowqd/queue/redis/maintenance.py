"""The Redis backend's maintenance loops: promotion of due jobs, the stalled check."""

from __future__ import annotations

from typing import Any

import trio

from flowqd.backoff import Backoff
from flowqd.errors import BrokerUnavailable
from flowqd.logs import log_stalled
from flowqd.queue.redis.scripts import QueueScript

PROMOTE_INTERVAL_S = 0.1  # longest wait before a due delayed job is promoted
PROMOTE_LIMIT = 1000
STALLED_LIMIT = 1000


async def promote_loop(promote: QueueScript) -> None:
    backoff = Backoff(initial=0.05, maximum=5.0)
    while True:
        try:
            examined, next_due_ms = await promote((PROMOTE_LIMIT,))
        except BrokerUnavailable:
            await backoff.wait()
            continue
        backoff.reset()
        if examined >= PROMOTE_LIMIT:
            await trio.lowlevel.checkpoint()
            continue
        wait = PROMOTE_INTERVAL_S if next_due_ms < 0 else next_due_ms / 1000
        await trio.sleep(min(max(wait, 0.002), PROMOTE_INTERVAL_S))


async def stalled_loop(stalled: QueueScript, interval_s: float, queue: str) -> None:
    # The winner's claim on the round lasts most of an interval, so the
    # check runs about once per interval whichever process wins it.
    hold_ms = max(1, int(interval_s * 1000 * 0.8))
    while True:
        await trio.sleep(interval_s)
        try:
            handled = _logged(await stalled((hold_ms, STALLED_LIMIT)), queue)
            while handled >= STALLED_LIMIT:
                handled = _logged(await stalled((0, STALLED_LIMIT)), queue)
        except BrokerUnavailable:
            continue  # next interval; the stalled check tolerates gaps


def _logged(reply: Any, queue: str) -> int:
    """The stalled script's reply logged; the number of jobs it handled (-1: another
    process runs this round)."""
    if not isinstance(reply, list):
        return int(reply)
    handled, *lists = reply
    requeued, failed, cancelled = ([i.decode() for i in ids] for ids in lists)
    log_stalled(queue, requeued, failed, cancelled)
    return int(handled)
