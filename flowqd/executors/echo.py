"""``echo``: returns its input, or the question when it has none."""

from __future__ import annotations

from collections.abc import Iterator, Set
from typing import Any

import attrs

from flowqd import Executor, NodeContext, NodeError, hookimpl


@attrs.frozen
class EchoParams:
    pass


def at_most_one_input(type_name: str) -> Any:
    def check(_params: Any, inputs: Set[str]) -> Iterator[tuple[str, str]]:
        if len(inputs) > 1:
            yield "inputs", f"{type_name} takes at most one input, got {len(inputs)}"

    return check


def single_input_or_question(ctx: NodeContext, type_name: str) -> Any:
    if ctx.inputs:
        return next(iter(ctx.inputs.values()))
    if "question" not in ctx.flow_inputs:
        raise NodeError(
            f"{type_name} node has no input and the job has no question: "
            "send a question or give the node an input"
        )
    return ctx.flow_inputs["question"]


async def run_echo(ctx: NodeContext) -> Any:
    return single_input_or_question(ctx, "echo")


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [
        Executor(
            type="echo",
            params=EchoParams,
            run=run_echo,
            description="Return its single input; with no inputs, the question.",
            check=at_most_one_input("echo"),
        )
    ]
