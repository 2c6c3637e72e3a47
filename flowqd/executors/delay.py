"""``delay``: waits ``ms`` milliseconds (cancellable), then returns its input."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from flowqd import Executor, NodeContext, hookimpl
from flowqd.executors.echo import at_most_one_input, single_input_or_question


@attrs.frozen
class DelayParams:
    ms: int = attrs.field(validator=attrs.validators.ge(0))


async def run_delay(ctx: NodeContext) -> Any:
    await trio.sleep(ctx.params.ms / 1000)
    return single_input_or_question(ctx, "delay")


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [
        Executor(
            type="delay",
            params=DelayParams,
            run=run_delay,
            description="Wait ms milliseconds, then return its input (or the question).",
            check=at_most_one_input("delay"),
        )
    ]
