"""What an executor is, and what its run function receives."""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Set
from typing import Any

import attrs
import orjson

from flowqd.errors import NodeError
from flowqd.jobs import PROGRESS

# Events the runner and the broker write themselves; an executor emitting one
# of these would corrupt the job's stream (a second "end", say).
RESERVED_EVENTS = frozenset({"node_start", "node_end", "node_skipped", "end", "error", "cancelled"})
# A progress object is kept on the job record and shown in job lists: small.
PROGRESS_MAX_BYTES = 1024
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


USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens")


def sum_usage(records: Iterable[Mapping[str, Any]]) -> dict[str, int] | None:
    """The job's token usage: the ``usage`` of its node records added up (None: none has one).

    Computed when a job is read, never while it runs.
    """
    total: dict[str, int] | None = None
    for record in records:
        usage = record.get("usage")
        if isinstance(usage, Mapping):
            if total is None:
                total = dict.fromkeys(USAGE_KEYS, 0)
            for key in USAGE_KEYS:
                value = usage.get(key)
                if isinstance(value, int):
                    total[key] += value
    return total


@attrs.frozen
class Tool:
    """A tool offered to a node: another node of the flow, run when the node calls it.

    :ivar name: the tool node's id; ``ctx.call_tool(name, arguments)`` runs it.
    :ivar description: what the tool does, for the model (the node's ``tool.description``).
    :ivar parameters: the JSON schema (an object schema) of its arguments.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]


Message = dict[str, str]  # {"role": "user" | "assistant", "content": "..."}
# Reads the stored conversation of a job: its last ``turns`` turns (None: all
# kept) as messages, oldest first. Given by the worker to jobs with a session.
HistoryReader = Callable[[int | None], Awaitable[list[Message]]]
# Flowise's roles in a request's ``history``, as chat roles.
_HISTORY_ROLES = {"userMessage": "user", "apiMessage": "assistant"}


def request_history(flow_inputs: Mapping[str, Any]) -> list[Message]:
    """The job's ``history`` input (Flowise's request ``history``) as chat messages.

    Entries are ``{"role": "userMessage" | "apiMessage", "content": "..."}``;
    Flowise's older ``{"type": ..., "message": ...}`` spelling is read too.
    Raises NodeError naming the first entry that is neither.
    """
    given = flow_inputs.get("history")
    if not given:
        return []
    if not isinstance(given, list):
        raise NodeError(
            f"job input $.history must be an array of messages, got {type(given).__name__}"
        )
    messages = []
    for index, entry in enumerate(given):
        message = history_message(entry)
        if message is None:
            raise NodeError(f"job input $.history[{index}] {HISTORY_ENTRY}, got {str(entry)[:200]}")
        messages.append(message)
    return messages


HISTORY_ENTRY = 'must be {"role": "userMessage" or "apiMessage", "content": "..."}'


def history_message(entry: Any) -> Message | None:
    """One entry of a request's ``history`` as a chat message; None if it is not one."""
    if not isinstance(entry, Mapping):
        return None
    name = entry.get("role") or entry.get("type")
    role = _HISTORY_ROLES.get(name) if isinstance(name, str) else None
    content = entry.get("content", entry.get("message"))
    if role is None or not isinstance(content, str):
        return None
    return {"role": role, "content": content}


@attrs.frozen
class NodeContext:
    """What an executor's run function gets for one node of one job.

    :ivar job_id: the job's id.
    :ivar node_id: the node's id in the flow.
    :ivar inputs: the node's input values by input name (upstream outputs,
        flow inputs).
    :ivar params: the node's params, an instance of the executor's params class.
    :ivar flow_inputs: the job's inputs (``question``, ``overrideConfig``, ...).
    :ivar tools: the tools the node's ``tools`` field offers it, in that order
        (empty for most nodes); run one with ``call_tool``.
    :ivar session_id: the job's conversation (``sessionId``, else ``chatId``),
        if any; read it with ``history``.
    """

    job_id: str
    node_id: str
    inputs: Mapping[str, Any]
    params: Any
    flow_inputs: Mapping[str, Any]
    _emit: Callable[[str, Any], None] = attrs.field(repr=False)
    _credential: Callable[[str], Awaitable[str]] = attrs.field(repr=False)
    # The job's stored conversation (None: no session, or memory off).
    _history: HistoryReader | None = attrs.field(default=None, repr=False)
    # Set by record_usage (a frozen class: written with object.__setattr__);
    # the runner copies it to the node's record.
    _usage: dict[str, int] | None = attrs.field(default=None, init=False, repr=False)

    def emit(self, event: str, data: Any) -> None:
        """Add an event to the job's stream, in order; never blocks.

        Use ``"token"`` for each chunk of generated text (data: the string),
        ``"progress"`` for progress reports (``emit("progress", data)`` is
        ``progress(data)``), or a name of your own. The names
        the runner and the queue use (``node_start``, ``node_end``,
        ``node_skipped``, ``end``, ``error``, ``cancelled``) raise ValueError. ``data`` must be
        JSON-compatible and within ``limits.max_event_bytes``, or this raises
        NodeError (which fails the node unless caught).
        """
        if event in RESERVED_EVENTS:
            raise ValueError(f"executors may not emit {event!r}: that event name is flowqd's own")
        if event == PROGRESS:
            self.progress(data)
            return
        self._emit(event, data)

    def progress(self, value: float | Mapping[str, Any]) -> None:
        """Report how far the node has come: a number from 0 to 1 (``0.4``) or a small
        JSON object (``{"done": 4, "of": 10}``, at most ``PROGRESS_MAX_BYTES`` as JSON).

        It goes to the job's stream as a ``progress`` event and, the latest one,
        on the job record (``progress`` in the job JSON, the dashboard), written
        with the job's other events: no extra call to the broker. Never blocks.
        Raises ValueError for another kind of value, and NodeError as ``emit``
        does for data that is not JSON.
        """
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"progress: a number must be from 0 to 1, got {value!r}")
        elif isinstance(value, Mapping):
            try:
                size = len(orjson.dumps(value))
            except TypeError:
                size = 0  # not JSON: the emit below says where
            if size > PROGRESS_MAX_BYTES:
                raise ValueError(
                    f"progress: an object must be at most {PROGRESS_MAX_BYTES} bytes as JSON, "
                    f"got {size:,}; report counts, put larger data in an event of its own"
                )
        else:
            raise ValueError(
                "progress: expected a number from 0 to 1 or an object such as "
                f'{{"done": 4, "of": 10}}, got {type(value).__name__}'
            )
        self._emit(PROGRESS, value)

    async def credential(self, name: str) -> str:
        """The plaintext of the stored credential ``name``.

        Raises ``flowqd.CredentialError`` when it is not stored or cannot be
        decrypted. Never put the value in events, outputs or error messages;
        where it gets there anyway, the job writes ``[credential NAME
        redacted]`` instead.
        """
        return await self._credential(name)

    @property
    def session_id(self) -> str | None:
        """The job's conversation: Flowise's ``sessionId``, else its ``chatId`` (None: neither)."""
        inputs = self.flow_inputs
        session = inputs.get("sessionId") or inputs.get("chatId")
        return session if isinstance(session, str) else None

    async def history(self, turns: int | None = None) -> list[Message]:
        """The conversation so far, oldest first: ``{"role": "user" | "assistant",
        "content": str}`` messages.

        First the request's ``history``, as Flowise prepends it to what its
        memory recalls, then the last ``turns`` turns stored for the job's
        session (None: every turn kept, see ``[memory]``), two messages each,
        a question and its answer. The stored part is empty for a job without
        ``sessionId`` or ``chatId``, with ``memory.enabled`` false, and for the
        first question of a session; the current question is not in it. Raises
        NodeError for a malformed request ``history``, ValueError for a
        negative ``turns``, and a FlowqdError (BrokerUnavailable) when the broker
        cannot be read.
        """
        if turns is not None and (
            isinstance(turns, bool) or not isinstance(turns, int) or turns < 0
        ):
            raise ValueError(f"history: turns must be an integer >= 0 or None, got {turns!r}")
        messages = request_history(self.flow_inputs)
        if self._history is not None and turns != 0:
            messages += await self._history(turns)
        return messages

    @property
    def tools(self) -> tuple[Tool, ...]:
        return ()

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> Any:
        """Run the tool ``name`` (one of ``tools``) with ``arguments``; return its output.

        ``arguments`` (a JSON object, as a model sends it) become the tool
        node's inputs. The call runs that node's executor with its params and
        ``timeout_s``, the same output limits and credential redaction as any
        node, and is recorded on the job as a node record with ``calledBy``
        (this node's id), between ``node_start`` and ``node_end`` events that
        carry ``calledBy`` too. Raises ``flowqd.NodeError`` when ``name`` is
        not offered to this node, the arguments are not an object, or the
        tool fails (its record says ERROR); catch it to let the node go on.
        """
        # A node offered tools gets a context of the runner's that overrides
        # this: the others pay nothing for the feature.
        raise NodeError(
            f"node {self.node_id!r} cannot call tool {name!r}: it is offered no tools; "
            'list the tool nodes in its "tools" field'
        )

    def record_usage(
        self, input_tokens: int = 0, output_tokens: int = 0, total_tokens: int | None = None
    ) -> None:
        """Add tokens a model used for this node to its record (``usage``).

        Call it once per model request: the counts add up. ``total_tokens``
        defaults to input plus output. The job's usage is the sum over its
        records (``usage`` in the job JSON, ``usageMetadata`` for Flowise).
        Raises ValueError for counts that are not integers >= 0.
        """
        if total_tokens is None:
            total_tokens = input_tokens + output_tokens
        counts = dict(zip(USAGE_KEYS, (input_tokens, output_tokens, total_tokens), strict=True))
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"record_usage: {key} must be an integer >= 0, got {value!r}")
        if self._usage is not None:
            counts = {key: self._usage.get(key, 0) + value for key, value in counts.items()}
        object.__setattr__(self, "_usage", counts)
