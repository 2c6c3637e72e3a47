"""What an executor is, and what its run function receives."""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Set
from typing import Any

import attrs

# Events the runner and the broker write themselves; an executor emitting one
# of these would corrupt the job's stream (a second "end", say).
RESERVED_EVENTS = frozenset({"node_start", "node_end", "node_skipped", "end", "error", "cancelled"})
_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def _check_type_name(_instance: object, _attribute: object, value: str) -> None:
    if not isinstance(value, str) or not _TYPE_NAME.fullmatch(value):
        raise ValueError(
            f"executor type must be a name of letters, digits and _ . - "
            f"starting with a letter, got {value!r}"
        )


def _check_params_class(_instance: object, _attribute: object, value: type) -> None:
    if not (isinstance(value, type) and attrs.has(value)):
        raise TypeError(f"executor params must be an attrs class, got {value!r}")


Problems = Iterable[tuple[str, str]]


@attrs.frozen
class Executor:
    """A node type: what a plugin's ``flowqd_executors`` hook returns.

    :param type: the node type name flows use, e.g. ``"llm"``.
    :param params: an attrs class; a node's ``params`` object is structured
        into it when the flow is registered (unknown keys and wrong types are
        validation errors, each with its JSON path).
    :param run: ``async def run(ctx: NodeContext) -> Any``; its return value
        is the node's output, stored on the job: it must be JSON-compatible and
        within ``limits.max_node_output_bytes`` (``limits.max_result_bytes``
        for the flow's output node), or the node fails.
    :param description: one line for ``flowqd plugins``.
    :param check: optional extra validation at registration time, called as
        ``check(params, input_names)``; yields ``(relative_path, message)``
        pairs such as ``("inputs", "needs an input named 'prompt'")``, the
        path relative to the node.
    :param branches: optional; makes the type a branching one (like
        ``condition``): ``branches(params)`` gives the outcomes a node with
        these params can choose, and ``run`` returns the chosen one (a str
        among them, or the node fails). Other nodes run only on some
        outcomes through their ``when`` field; the rest are skipped.
    """

    type: str = attrs.field(validator=_check_type_name)
    params: builtins.type[Any] = attrs.field(validator=_check_params_class)
    run: Callable[[NodeContext], Awaitable[Any]]
    description: str
    check: Callable[[Any, Set[str]], Problems] | None = None
    branches: Callable[[Any], Sequence[str]] | None = None


@attrs.frozen
class NodeContext:
    """What an executor's run function gets for one node of one job.

    :ivar job_id: the job's id.
    :ivar node_id: the node's id in the flow.
    :ivar inputs: the node's input values by input name (upstream outputs,
        flow inputs).
    :ivar params: the node's params, an instance of the executor's params class.
    :ivar flow_inputs: the job's inputs (``question``, ``overrideConfig``, ...).
    """

    job_id: str
    node_id: str
    inputs: Mapping[str, Any]
    params: Any
    flow_inputs: Mapping[str, Any]
    _emit: Callable[[str, Any], None] = attrs.field(repr=False)
    _credential: Callable[[str], Awaitable[str]] = attrs.field(repr=False)

    def emit(self, event: str, data: Any) -> None:
        """Add an event to the job's stream, in order; never blocks.

        Use ``"token"`` for each chunk of generated text (data: the string),
        ``"progress"`` for progress reports, or a name of your own. The names
        the runner and the queue use (``node_start``, ``node_end``,
        ``node_skipped``, ``end``, ``error``, ``cancelled``) raise ValueError. ``data`` must be
        JSON-compatible and within ``limits.max_event_bytes``, or this raises
        NodeError (which fails the node unless caught).
        """
        if event in RESERVED_EVENTS:
            raise ValueError(f"executors may not emit {event!r}: that event name is flowqd's own")
        self._emit(event, data)

    async def credential(self, name: str) -> str:
        """The plaintext of the stored credential ``name``.

        Raises ``flowqd.CredentialError`` when it is not stored or cannot be
        decrypted. Never put the value in events, outputs or error messages;
        where it gets there anyway, the job writes ``[credential NAME
        redacted]`` instead.
        """
        return await self._credential(name)
