"""Branching: nodes that run only on some outcomes of a branching node (``when``).

A node is skipped, never run, when its ``when`` does not hold or when a node
it reads or names in its ``when`` was skipped. Registration enumerates the
combinations of outcomes to reject a node that can never run and an output
that some combination leaves without a value; the runner decides each skip
as soon as the node that causes it ends, and starts a node once every node
upstream of it ran, as for flows without branches.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from flowqd.errors import NodeError
from flowqd.executors.base import Executor, NodeContext
from flowqd.flows.model import Branching, CompiledFlow, CompiledNode
from flowqd.flows.params import Problem, key_path, show

if TYPE_CHECKING:
    from flowqd.flows.runner import _Run

# Past this many combinations of outcomes, or this many checks of a node in
# them all, a flow is not checked, and refused: registration must stay quick.
MAX_COMBINATIONS = 4096
MAX_CHECKS = 1_000_000
# How many combinations a message names before "and N more".
SHOWN_COMBINATIONS = 3


def plan(nodes: tuple[CompiledNode, ...]) -> Branching | None:
    """The flow's Branching, or None when no node has a ``when`` (nothing is ever skipped)."""
    if not any(node.when for node in nodes):
        return None
    consumers: dict[str, list[CompiledNode]] = {node.id: [] for node in nodes}
    for node in nodes:
        for upstream in node.upstream:
            consumers[upstream].append(node)
    return Branching(
        roots=tuple(node for node in nodes if not node.upstream),
        consumers={node_id: tuple(found) for node_id, found in consumers.items()},
    )


def choosing(executor: Executor, outcomes: tuple[str, ...]) -> Executor:
    """``executor`` whose run fails the node unless it returns one of ``outcomes``."""
    run, allowed = executor.run, frozenset(outcomes)

    async def run_branch(ctx: NodeContext) -> Any:
        outcome = await run(ctx)
        if not isinstance(outcome, str) or outcome not in allowed:
            raise NodeError(
                f"a {executor.type} node's output is the outcome it chose, one of "
                f"{', '.join(outcomes)}; it returned {show(outcome)}"
            )
        return outcome

    return attrs.evolve(executor, run=run_branch)


# ---- registration: every combination of outcomes ---------------------------------


Reason = tuple[str, str, str]  # (field, its key, why): ("when", "route", "route chose 'x'")


def _skip_reason(
    node: CompiledNode, ran: Mapping[str, str | None], skipped: Mapping[str, object]
) -> Reason | None:
    """Why ``node`` is skipped, given what its upstream did (None: it runs)."""
    for branch_node, allowed in node.when.items():
        if branch_node in skipped:
            return "when", branch_node, f"{branch_node!r} is skipped"
        outcome = ran[branch_node]
        if outcome not in allowed:
            return "when", branch_node, f"{branch_node} chose {outcome!r}"
    for name, source in node.inputs:
        if source.node is not None and source.node in skipped:
            return (
                "inputs",
                name,
                f"its input {name!r} comes from {source.node!r}, which is skipped",
            )
    return None


def _under_branches(
    flow: CompiledFlow, outcomes: Mapping[str, tuple[str, ...]]
) -> tuple[CompiledNode, ...]:
    """The nodes that may be skipped (a ``when``, or downstream of one) and the branching
    nodes the ``when``s name, in topological order; every other node always runs."""
    affected: set[str] = set()
    for node in flow.nodes:  # upstream nodes come first
        if node.when or any(u in affected for u in node.upstream):
            affected.add(node.id)
    return tuple(n for n in flow.nodes if n.id in affected or n.id in outcomes)


def _combinations(
    nodes: tuple[CompiledNode, ...], outcomes: Mapping[str, tuple[str, ...]]
) -> list[tuple[dict[str, str | None], dict[str, Reason]]] | None:
    """Every combination: (ran: node -> outcome or None, skipped: node -> reason).

    Depth first over ``nodes`` (topological order), branching at each node of
    ``outcomes`` that runs; None past MAX_COMBINATIONS or MAX_CHECKS.
    """
    found: list[tuple[dict[str, str | None], dict[str, Reason]]] = []
    stack: list[tuple[int, dict[str, str | None], dict[str, Reason]]] = [(0, {}, {})]
    checks = 0
    while stack:
        at, ran, skipped = stack.pop()
        checks += len(nodes) - at
        if checks > MAX_CHECKS:
            return None
        while at < len(nodes):
            node = nodes[at]
            at += 1
            reason = _skip_reason(node, ran, skipped)
            if reason is not None:
                skipped[node.id] = reason
            elif node.id in outcomes:
                first, *others = outcomes[node.id]
                for outcome in reversed(others):
                    stack.append((at, {**ran, node.id: outcome}, dict(skipped)))
                ran[node.id] = first
                if len(found) + len(stack) > MAX_COMBINATIONS:
                    return None
            else:
                ran[node.id] = None
        found.append((ran, skipped))
    return found


def check(
    flow: CompiledFlow, paths: Mapping[str, str], outcomes: Mapping[str, tuple[str, ...]]
) -> list[Problem]:
    """The nodes that never run and the combinations that leave the output without a value.

    ``paths`` maps node ids to their ``$.nodes[i]``; ``outcomes`` holds the
    outcomes of the branching nodes some ``when`` names.
    """
    nodes = _under_branches(flow, outcomes)
    deciders = [n.id for n in nodes if n.id in outcomes]
    combinations = _combinations(nodes, outcomes)
    if combinations is None:
        return [
            (
                "$.nodes",
                f"the flow has too many combinations of branch outcomes to check (over "
                f"{MAX_COMBINATIONS}, or over {MAX_CHECKS:,} checks of a node in them all); "
                "split it into smaller flows or use fewer branching nodes",
            )
        ]
    # Nodes no when reaches run in every combination.
    ever_ran = {n.id for n in flow.nodes} - {n.id for n in nodes}
    always = frozenset(ever_ran)
    first_skip: dict[str, tuple[str, Reason]] = {}  # node -> (combination, why)
    no_output: list[str] = []
    never_answers = set(flow.outputs[1:])  # candidates that ran with no earlier one running
    for ran, skipped in combinations:
        ever_ran.update(ran)
        combination = _text(deciders, ran)
        for node_id, reason in skipped.items():
            first_skip.setdefault(node_id, (combination, reason))
        answer = next((o for o in flow.outputs if o in ran or o in always), None)
        if answer is None:
            no_output.append(combination)
        else:
            never_answers.discard(answer)
    problems: list[Problem] = []
    for node in flow.nodes:
        # Downstream of a node that never runs: that node's problem says it.
        if node.id in ever_ran or not all(u in ever_ran for u in node.upstream):
            continue
        combination, (field, key, why) = first_skip[node.id]
        problems.append(
            (
                key_path(f"{paths[node.id]}.{field}", key),
                f"node {node.id!r} never runs: no combination of branch outcomes runs "
                f"every node it reads and satisfies its when ({combination}: {why}); "
                "read nodes that run together, or list alternatives in output",
            )
        )
    if no_output:
        problems.append(("$.output", _no_output(flow, no_output)))
    for index, candidate in enumerate(flow.outputs):
        if candidate in never_answers and candidate in ever_ran:
            problems.append(
                (
                    f"$.output[{index}]",
                    f"{candidate!r} is never the result: whenever it runs, a node before it "
                    "in output runs too; remove it or move it forward",
                )
            )
    return problems


def _text(deciders: list[str], ran: Mapping[str, str | None]) -> str:
    chosen = [f"{node} is {ran[node]!r}" for node in deciders if node in ran]
    return "when " + " and ".join(chosen) if chosen else "always"


def _no_output(flow: CompiledFlow, combinations: list[str]) -> str:
    shown = ", or ".join(combinations[:SHOWN_COMBINATIONS])
    if len(combinations) > SHOWN_COMBINATIONS:
        shown += f" (and {len(combinations) - SHOWN_COMBINATIONS} more combinations)"
    if len(flow.outputs) == 1:
        return (
            f"{shown}: the output node {flow.output!r} is skipped, so the flow has no "
            f'result; make output a list that adds a node for that branch, e.g. ["{flow.output}",'
            ' "other_answer"]'
        )
    return (
        f"{shown}: none of the output nodes ({', '.join(flow.outputs)}) runs; add a node for "
        "that branch to output"
    )


# ---- running --------------------------------------------------------------------

Step = Callable[[CompiledNode], Awaitable[None]]


async def run(run: _Run, step: Step, branching: Branching) -> str:
    """Run a branching flow; return the id of the output node that ran (the result).

    Each node starts in a task of its own once every node upstream of it
    ran; a node that one of them makes skip is recorded SKIPPED, with a
    ``node_skipped`` event, right when that node ends, and so are the nodes
    downstream of it.
    """
    flow = run.flow
    waiting = {node.id: len(node.upstream) for node in flow.nodes}
    skipped: set[str] = set()

    def settle(nursery: trio.Nursery, done: CompiledNode) -> None:
        """``done`` ran or was skipped: skip or start the nodes waiting on it."""
        settled = [done]
        while settled:
            node_id = settled.pop().id
            for consumer in branching.consumers[node_id]:
                if consumer.id in skipped:
                    continue
                why = _why(consumer, node_id, run.outputs, skipped)
                if why is not None:
                    skipped.add(consumer.id)
                    _skip(run, consumer, why)
                    settled.append(consumer)
                    continue
                waiting[consumer.id] -= 1
                if not waiting[consumer.id]:
                    nursery.start_soon(one, consumer, name=f"flow {flow.id} node {consumer.id}")

    async def one(node: CompiledNode) -> None:
        await step(node)
        if node.id in run.outputs:  # it ran (a failure has cancelled the nursery)
            assert run.nursery is not None
            settle(run.nursery, node)

    try:
        async with trio.open_nursery() as nursery:
            run.nursery = nursery
            for node in branching.roots:
                nursery.start_soon(one, node, name=f"flow {flow.id} node {node.id}")
    except BaseExceptionGroup as group:
        # As in _Run.concurrently: the caller's cancellation, arriving in several nodes.
        cancelled, rest = group.split(trio.Cancelled)
        if rest is not None or cancelled is None:
            raise
        from flowqd.flows.runner import _first_leaf

        raise _first_leaf(cancelled) from None
    return next((o for o in flow.outputs if o in run.outputs), flow.output)


def _why(
    consumer: CompiledNode, node_id: str, outputs: Mapping[str, Any], skipped: set[str]
) -> str | None:
    """Why ``consumer`` is skipped now that ``node_id`` ran or was skipped (None: not)."""
    if node_id in skipped:
        if node_id in consumer.when:
            return f"{node_id!r} was skipped"
        name = next(n for n, s in consumer.inputs if s.node == node_id)
        return f"its input {name!r} comes from {node_id!r}, which was skipped"
    allowed = consumer.when.get(node_id)
    if allowed is not None and outputs[node_id] not in allowed:
        return f"{node_id} chose {outputs[node_id]!r}"
    return None


def _skip(run: _Run, node: CompiledNode, why: str) -> None:
    run.records.append(
        {
            "nodeId": node.id,
            "nodeLabel": node.label,
            "type": node.type,
            "status": "SKIPPED",
            "reason": why,
            "input": {},
            "output": None,
            "previousNodeIds": list(node.upstream),
            "finishedAt": time.time(),
        }
    )
    run.emit(
        "node_skipped", {"node": node.id, "type": node.type, "label": node.label, "reason": why}
    )
