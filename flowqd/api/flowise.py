"""Flowise's prediction wire format: request fields, JSON answer, streamed events.

See FLOWISE-WIRE.md. Streamed events are framed ``message:\\ndata:<json>\\n\\n``
with ``{"event": name, "data": payload}`` as the JSON; the official SDKs read
the ``data:`` lines only.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import orjson

from flowqd.flows import CompiledFlow, CompiledNode
from flowqd.jobs import CANCELLED, END, ERROR, Event, Job
from flowqd.jobs import answer_text as as_text  # Flowise's text; also a conversation's answer

HEARTBEAT = b":heartbeat\n\n"
DONE = "[DONE]"
# Worker bookkeeping with no Flowise counterpart.
SILENT_EVENTS = frozenset({"started"})
# A node on a branch not taken. Flowise lists the nodes that ran only (its
# agentFlowExecutedData has FINISHED and ERROR entries), so skipped nodes stay
# out of its answers; the job's records and events have them.
SKIPPED = "SKIPPED"
NODE_SKIPPED = "node_skipped"


def frame(name: str, data: Any) -> bytes:
    return b"message:\ndata:" + orjson.dumps({"event": name, "data": data}) + b"\n\n"


@attrs.frozen
class Chat:
    """The Flowise identities of one prediction."""

    question: str | None
    chat_id: str
    session_id: str
    chat_message_id: str
    execution_id: str

    @classmethod
    def new(
        cls, question: str | None, chat_id: str | None, session_id: str | None, execution_id: str
    ) -> Chat:
        chat = chat_id or str(uuid.uuid4())
        return cls(question, chat, session_id or chat, str(uuid.uuid4()), execution_id)

    def metadata(self) -> dict[str, Any]:
        return {
            "chatId": self.chat_id,
            "chatMessageId": self.chat_message_id,
            "question": self.question,
            "sessionId": self.session_id,
        }


def executed_entry(record: dict[str, Any], node_type: str | None = None) -> dict[str, Any]:
    """One ``agentFlowExecutedData`` entry from a node record of the job (or a node_end)."""
    output = record.get("output")
    data: dict[str, Any] = {
        "id": record.get("nodeId"),
        "name": record.get("type", node_type),
        "input": record.get("input", {}),
        # Flowise nodes answer {"content": ...}; objects are passed as they are.
        "output": output if isinstance(output, dict) else {"content": output},
        "state": {},
    }
    usage = record.get("usage")
    if usage is not None and "usageMetadata" not in data["output"]:
        # Where Flowise's LLM nodes put theirs (LangChain's usage_metadata keys).
        data["output"] = {**data["output"], "usageMetadata": usage}
    if record.get("error") is not None:
        data["error"] = record["error"]
    return {
        "nodeId": record.get("nodeId"),
        "nodeLabel": record.get("nodeLabel"),
        "data": data,
        "previousNodeIds": record.get("previousNodeIds", []),
        "status": record.get("status", "FINISHED"),
    }


def failure_message(error: Any) -> str:
    """``node 'x' failed: why`` from an ``error`` event's data or a job's error."""
    if not isinstance(error, dict):
        return "the job failed"
    message = str(error.get("message") or "the job failed")
    node = error.get("node")
    return f"node {node!r} failed: {message}" if node else message


def answer(chat: Chat, result: Any, job: Job | None) -> dict[str, Any]:
    """The non-streaming 200 body."""
    body: dict[str, Any] = {
        "text": as_text(result),
        "question": chat.question,
        "chatId": chat.chat_id,
        "chatMessageId": chat.chat_message_id,
        "executionId": chat.execution_id,
        "sessionId": chat.session_id,
        "agentFlowExecutedData": [
            executed_entry(r) for r in (job.nodes if job else []) if r.get("status") != SKIPPED
        ],
    }
    if isinstance(result, (dict, list)):
        body["json"] = result
    return body


@attrs.define(eq=False)
class StreamTranslator:
    """flowqd job events -> Flowise stream chunks, keeping what Flowise repeats.

    ``token`` frames carry the answer only, as Flowise's do (it streams the
    tokens of the flow's last node): the tokens the flow's output node emits
    while it is the only node running. Tokens of other nodes are left out
    (``GET /api/v1/jobs/{id}/events`` keeps them), and so are tokens emitted
    while a side branch runs beside the output node, since a token does not
    say which node sent it. When the output node ends, the part of its text
    its tokens did not stream goes as one more ``token``: all of it for a
    node that streams none (as Flowise does), none for one that streamed it
    all. Joining the ``token`` frames gives the answer, once.

    With ``output`` a list (a flow with branches), the answer is the first of
    them that is not skipped: ``current``, which moves on as they are skipped.
    One that becomes it while running, or after it ended, is sent whole.
    """

    flow: CompiledFlow
    chat: Chat
    inputs: dict[str, Any] = attrs.Factory(dict)  # the job's, for the nodes' "input"
    executed: list[dict[str, Any]] = attrs.Factory(list)
    nodes: dict[str, CompiledNode] = attrs.field(
        init=False,
        default=attrs.Factory(lambda self: {n.id: n for n in self.flow.nodes}, takes_self=True),
    )
    running: set[str] = attrs.Factory(set)
    outputs: dict[str, Any] = attrs.Factory(dict)  # finished nodes' outputs
    # The current answer node's tokens sent; None: send its text whole at its end.
    streamed: list[str] | None = attrs.Factory(list)
    current: str = attrs.field(
        init=False, default=attrs.Factory(lambda self: self.flow.output, takes_self=True)
    )
    skipped: set[str] = attrs.Factory(set)
    # completed, failed or cancelled once the terminal event is through; "ended"
    # when the stream had to stop without one (deadline, shutdown).
    outcome: str | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def start(self) -> list[bytes]:
        return [frame("agentFlowEvent", "INPROGRESS")]

    def translate(self, event: Event) -> list[bytes]:
        name, data = event.name, event.data
        if name == "token":
            if (
                len(self.running) == 1
                and self.current in self.running
                and isinstance(data, str)
                and self.streamed is not None
            ):
                self.streamed.append(data)
                return [frame("token", data)]
            return []
        if name == "node_start":
            node_id = data.get("node")
            self.running.add(node_id)
            if node_id == self.current:
                self.streamed = []  # a new attempt streams its own
            return [frame("nextAgentFlow", self._progress(data, "INPROGRESS"))]
        if name == "node_end":
            self.running.discard(data.get("node"))
            return self._node_end(data)
        if name == END:
            self.outcome = "completed"
            return [
                frame("agentFlowEvent", "FINISHED"),
                frame("metadata", self.chat.metadata()),
                frame("end", DONE),
            ]
        if name == ERROR:
            return self.fail(failure_message(data), "failed")
        if name == CANCELLED:
            reason = data.get("reason") if isinstance(data, dict) else None
            return self.fail(
                f"job {self.chat.execution_id} was cancelled" + (f": {reason}" if reason else ""),
                "cancelled",
            )
        if name == NODE_SKIPPED:
            return self._skipped(data)
        if name in SILENT_EVENTS:
            if self.skipped:  # a new attempt decides its branches again
                self.skipped.clear()
                self.outputs.clear()
                self.current, self.streamed = self.flow.output, []
            return []
        return [frame(name, data)]

    def fail(self, message: str, outcome: str = "ended") -> list[bytes]:
        self.outcome = outcome
        return [frame("error", message), frame("end", DONE)]

    def _progress(self, data: dict[str, Any], status: str) -> dict[str, Any]:
        return {"nodeId": data.get("node"), "nodeLabel": data.get("label"), "status": status}

    def _input(self, node: CompiledNode) -> dict[str, Any]:
        """The node's input values, as the worker's node record has them (the JSON answer's)."""
        values: dict[str, Any] = {}
        for name, source in node.inputs:
            if source.node is not None:
                values[name] = self.outputs.get(source.node)
                continue
            value: Any = self.inputs
            for key in source.flow_path:
                value = value.get(key) if isinstance(value, dict) else None
            values[name] = value
        return values

    def _node_end(self, data: dict[str, Any]) -> list[bytes]:
        """A node ran: its progress and the nodes executed so far, and the answer's rest."""
        node_id = data.get("node")
        if data.get("status") == "ERROR":
            return [frame("nextAgentFlow", self._progress(data, "ERROR"))]
        out: list[bytes] = []
        output = data.get("output")
        if node_id == self.current:
            rest = _unstreamed(as_text(output), "".join(self.streamed or ()))
            if rest:
                out.append(frame("token", rest))
            if data.get("usage") is not None:
                # Flowise streams its answering LLM node's usage as this event.
                out.append(frame("usageMetadata", data["usage"]))
        node = self.nodes.get(node_id) if isinstance(node_id, str) else None
        if node is not None:
            self.outputs[node.id] = output
        record = {
            "nodeId": node_id,
            "nodeLabel": data.get("label"),
            "type": data.get("type"),
            "input": self._input(node) if node else data.get("input", {}),
            "output": output,
            "status": "FINISHED",
            "previousNodeIds": _previous(node, data),
            "usage": data.get("usage"),
        }
        self.executed.append(executed_entry(record))
        out.append(frame("nextAgentFlow", self._progress(data, "FINISHED")))
        out.append(frame("agentFlowExecutedData", list(self.executed)))
        return out

    def _skipped(self, data: Any) -> list[bytes]:
        node_id = data.get("node") if isinstance(data, dict) else None
        if not isinstance(node_id, str):
            return []
        self.skipped.add(node_id)
        if node_id != self.current:
            return []
        outputs = self.flow.outputs
        self.current = next(
            (o for o in outputs[outputs.index(node_id) + 1 :] if o not in self.skipped), node_id
        )
        if self.current in self.outputs:  # it ended while not the answer: send it now
            text = as_text(self.outputs[self.current])
            return [frame("token", text)] if text else []
        self.streamed = None if self.current in self.running else []
        return []


def _previous(node: CompiledNode | None, data: dict[str, Any]) -> list[str]:
    if node is not None:
        return list(node.upstream)
    # A tool call: the node that called it came before, as its job record says.
    called_by = data.get("calledBy")
    return [called_by] if isinstance(called_by, str) else []


def _unstreamed(text: str, streamed: str) -> str:
    """What of ``text`` the tokens sent so far (``streamed``) have not given."""
    if text.startswith(streamed):
        return text[len(streamed) :]
    # The node's tokens were not its text (an LLM asked for JSON, say): they
    # were its stream; adding the text would give the answer twice.
    return ""
