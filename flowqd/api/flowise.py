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

from flowqd.flows import CompiledFlow
from flowqd.jobs import CANCELLED, END, ERROR, Event, Job

HEARTBEAT = b":heartbeat\n\n"
DONE = "[DONE]"
# Worker bookkeeping with no Flowise counterpart.
SILENT_EVENTS = frozenset({"started"})


def frame(name: str, data: Any) -> bytes:
    return b"message:\ndata:" + orjson.dumps({"event": name, "data": data}) + b"\n\n"


def as_text(value: Any) -> str:
    """Flowise's ``text`` is a string; other results travel as their JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@attrs.frozen
class Chat:
    """The Flowise identities of one prediction."""

    question: str | None
    chat_id: str
    session_id: str
    chat_message_id: str
    execution_id: str

    @classmethod
    def new(cls, question: str | None, chat_id: str | None, session_id: str | None,
            execution_id: str) -> Chat:
        chat = chat_id or str(uuid.uuid4())
        return cls(question, chat, session_id or chat, str(uuid.uuid4()), execution_id)

    def metadata(self) -> dict[str, Any]:
        return {"chatId": self.chat_id, "chatMessageId": self.chat_message_id,
                "question": self.question, "sessionId": self.session_id}


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
    if record.get("error") is not None:
        data["error"] = record["error"]
    return {"nodeId": record.get("nodeId"), "nodeLabel": record.get("nodeLabel"),
            "data": data, "previousNodeIds": record.get("previousNodeIds", []),
            "status": record.get("status", "FINISHED")}


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
        "agentFlowExecutedData": [executed_entry(r) for r in (job.nodes if job else [])],
    }
    if isinstance(result, (dict, list)):
        body["json"] = result
    return body


@attrs.define(eq=False)
class StreamTranslator:
    """flowqd job events -> Flowise stream chunks, keeping what Flowise repeats."""

    flow: CompiledFlow
    chat: Chat
    executed: list[dict[str, Any]] = attrs.Factory(list)
    output_running: bool = False
    output_streamed: bool = False
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
        if name == "node_start":
            if data.get("node") == self.flow.output:
                self.output_running = True
            return [frame("nextAgentFlow", self._progress(data, "INPROGRESS"))]
        if name == "node_end":
            return self._node_end(data)
        if name == "token":
            if self.output_running:
                self.output_streamed = True
            return [frame("token", data)]
        if name == END:
            self.outcome = "completed"
            return [frame("agentFlowEvent", "FINISHED"), frame("metadata", self.chat.metadata()),
                    frame("end", DONE)]
        if name == ERROR:
            return self.fail(failure_message(data), "failed")
        if name == CANCELLED:
            reason = data.get("reason") if isinstance(data, dict) else None
            return self.fail(f"job {self.chat.execution_id} was cancelled"
                             + (f": {reason}" if reason else ""), "cancelled")
        if name in SILENT_EVENTS:
            return []
        return [frame(name, data)]

    def fail(self, message: str, outcome: str = "ended") -> list[bytes]:
        self.outcome = outcome
        return [frame("error", message), frame("end", DONE)]

    def _progress(self, data: dict[str, Any], status: str) -> dict[str, Any]:
        return {"nodeId": data.get("node"), "nodeLabel": data.get("label"), "status": status}

    def _node_end(self, data: dict[str, Any]) -> list[bytes]:
        node_id = data.get("node")
        if data.get("status") == "ERROR":
            return [frame("nextAgentFlow", self._progress(data, "ERROR"))]
        out: list[bytes] = []
        if node_id == self.flow.output:
            self.output_running = False
            # A client assembles the answer from tokens: a node that streamed
            # none still sends its text as one token (as Flowise does).
            if not self.output_streamed:
                out.append(frame("token", as_text(data.get("output"))))
        node = next((n for n in self.flow.nodes if n.id == node_id), None)
        record = {"nodeId": node_id, "nodeLabel": data.get("label"), "type": data.get("type"),
                  "output": data.get("output"), "status": "FINISHED",
                  "previousNodeIds": list(node.upstream) if node else []}
        self.executed.append(executed_entry(record))
        out.append(frame("nextAgentFlow", self._progress(data, "FINISHED")))
        out.append(frame("agentFlowExecutedData", list(self.executed)))
        return out
