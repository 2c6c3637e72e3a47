"""flowqd-example: a ``reverse`` node type.

Install it (``pip install plugins/flowqd-example``) and flowqd finds it
through the ``flowqd`` entry point group; or copy this file into a folder
listed in ``plugins.paths``.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from typing import Any

import attrs

from flowqd import Executor, NodeContext, NodeError, hookimpl


@attrs.frozen
class ReverseParams:
    upper: bool = False  # also upper-case the text


def check(params: ReverseParams, inputs: Set[str]) -> Iterator[tuple[str, str]]:
    if len(inputs) > 1:
        yield "inputs", f"reverse takes at most one input, got {len(inputs)}"


async def reverse(ctx: NodeContext) -> str:
    value: Any = next(iter(ctx.inputs.values())) if ctx.inputs else ctx.flow_inputs.get("question")
    if not isinstance(value, str):
        raise NodeError(f"reverse needs text, got {type(value).__name__}")
    ctx.emit("progress", {"chars": len(value)})
    text = value[::-1]
    return text.upper() if ctx.params.upper else text


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [
        Executor(
            type="reverse",
            params=ReverseParams,
            run=reverse,
            description="Reverse the text of its input (or of the question).",
            check=check,
        )
    ]
