"""Health of the main role for load balancers and probes: ``/healthz`` and ``/readyz``.

Open routes answering JSON like the worker's health server (flowqd/health.py):
liveness says only that the process answers; readiness says whether a
request would be served now (the API is serving, not draining, and the
broker answers within ``server.broker_timeout_s``), and why not with 503.
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response

from flowqd.api.authn import open_route
from flowqd.api.context import ApiContext, context
from flowqd.api.http import json_response
from flowqd.errors import BrokerUnavailable

__all__ = ["blueprint", "readiness"]

blueprint = Blueprint("health", __name__)
NO_STORE = {"Cache-Control": "no-store"}


@blueprint.get("/healthz")
@open_route
async def healthz() -> Response:
    return json_response({"status": "ok"}, headers=NO_STORE)


@blueprint.get("/readyz")
@open_route
async def readyz() -> Response:
    ready, reason = await readiness(context())
    body = {"status": "ready" if ready else "not ready", "reason": reason}
    headers = NO_STORE if ready else {**NO_STORE, "Retry-After": "1"}
    return json_response(body, 200 if ready else 503, headers)


async def readiness(ctx: ApiContext) -> tuple[bool, str]:
    """(ready, reason); the reason says what is wrong and what to check."""
    if ctx.shutdown.is_set():
        return False, "draining: this process is stopping; send requests to another"
    if ctx.nursery is None:
        return False, "starting: the API is not serving yet"
    timeout = ctx.config.server.broker_timeout_s
    try:
        with trio.fail_after(timeout):
            # One round trip: a read every backend answers, whatever the queue holds.
            await ctx.control.is_paused()
    except BrokerUnavailable as exc:
        return False, f"broker unreachable: {exc}"
    except trio.TooSlowError:
        return False, (
            f"broker unreachable: no answer within server.broker_timeout_s ({timeout:g}s); "
            "check Redis at redis.url / REDIS_URL"
        )
    return True, "taking requests"
