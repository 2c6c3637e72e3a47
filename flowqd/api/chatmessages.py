"""Flowise's chat-message routes over the conversation memory (``Conversations``).

``GET /api/v1/chatmessage/{flow_id}`` lists a flow's messages and ``DELETE``
forgets its conversations, with Flowise's query parameters and answer shapes
(its ``ChatMessage`` entity; ``DeleteResult``). A stored turn is two
messages: the question (``userMessage``) and the answer (``apiMessage``),
both dated when the job completed. Each key reads and clears its own
conversations only; an admin key (or open access without keys) every key's.

Flowise deletes single message rows; flowqd keeps bounded conversations and
forgets them whole, so a DELETE clears every conversation that has a message
matching its filters, and refuses date ranges (they would cut conversations
in the middle).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from typing import Any

import attrs
import orjson
from quart import Blueprint, Response, request

from flowqd.api.context import ApiContext, context, principal
from flowqd.api.http import ApiError, json_response
from flowqd.auth import Principal
from flowqd.errors import FlowValidationError
from flowqd.jobs import ConversationKey, Turn
from flowqd.queue.roles import Conversations

__all__ = ["blueprint"]

blueprint = Blueprint("chatmessages", __name__)

# Flowise's ChatType values. Every turn flowqd stores came through its API.
CHAT_TYPES = frozenset({"INTERNAL", "EXTERNAL", "EVALUATION", "MCP", "SCHEDULED", "WEBHOOK"})
CHAT_TYPE = "EXTERNAL"
# The conversations one request reads at most (most recently active first);
# ``page`` and ``limit`` page through more.
CONVERSATIONS_MAX = 1000
# Message ids are stable: the same turn lists with the same two ids every time.
MESSAGE_IDS = uuid.UUID("5d0c6a52-6f0e-4f43-9a8e-3c1f4a0c2b19")
# Entity fields flowqd has no value for; Flowise answers them as null.
NULL_FIELDS = (
    "sourceDocuments",
    "usedTools",
    "fileAnnotations",
    "agentReasoning",
    "reasonContent",
    "fileUploads",
    "artifacts",
    "action",
    "memoryType",
    "leadEmail",
    "followUpPrompts",
)


@attrs.frozen
class MessageQuery:
    """The query parameters of both routes that flowqd acts on."""

    session: str | None
    chat_id: str | None
    descending: bool
    start: float | None  # unix seconds, inclusive
    end: float | None
    external: bool  # the chatType filter lets EXTERNAL messages through
    message_id: str | None
    page: int | None  # 1-based page of conversations, with limit
    limit: int | None

    def wants(self, turn: Turn, message_id: str | None = None) -> bool:
        """Whether ``turn`` (or its message ``message_id``) passes the filters."""
        if self.chat_id is not None and turn.chat_id != self.chat_id:
            return False
        if self.start is not None and turn.at < self.start:
            return False
        if self.end is not None and turn.at > self.end:
            return False
        return self.message_id is None or self.message_id == message_id


def _text(name: str) -> str | None:
    raw = request.args.get(name)
    return raw if raw else None  # Flowise treats an empty value as absent


def _date(name: str) -> float | None:
    """An ISO 8601 date or date-time as unix seconds; a date alone is its midnight,
    and a time without an offset is UTC (as JavaScript reads ``2025-01-13``)."""
    raw = _text(name)
    if raw is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(
            400,
            f"query parameter {name} must be an ISO 8601 date or date-time such as "
            "2025-01-13 or 2025-01-13T11:28:36.000Z",
            problems=[{"path": name, "message": "not an ISO 8601 date"}],
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _order() -> bool:
    """True for newest first. Flowise reads ``order``; ``sortOrder`` is taken too."""
    name = "order" if "order" in request.args else "sortOrder"
    raw = (_text(name) or "ASC").upper()
    if raw not in ("ASC", "DESC"):
        raise ApiError(
            400,
            f"query parameter {name} must be ASC (oldest first) or DESC (newest first)",
            problems=[{"path": name, "message": "expected ASC or DESC"}],
        )
    return raw == "DESC"


def _chat_types() -> bool:
    """Whether the chatType filter (absent, one value, a JSON array, or the
    parameter repeated, as Flowise takes it) admits EXTERNAL messages."""
    values: list[Any] = []
    for raw in request.args.getlist("chatType"):
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw
        values += parsed if isinstance(parsed, list) else [parsed]
    wrong = [v for v in values if v not in CHAT_TYPES]
    if wrong:
        raise ApiError(
            400,
            f"query parameter chatType takes {', '.join(sorted(CHAT_TYPES))} (one, a JSON "
            'array such as ["EXTERNAL","INTERNAL"], or the parameter repeated)',
            problems=[{"path": "chatType", "message": "unknown chat type"}],
        )
    return not values or CHAT_TYPE in values


def _count(name: str, low: int) -> int | None:
    raw = _text(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or int(raw) < low:
        raise ApiError(
            400,
            f"query parameter {name} must be a whole number from {low} to 999999",
            problems=[{"path": name, "message": "not a whole number in range"}],
        )
    return int(raw)


def parse_query() -> MessageQuery:
    """The request's query; 400 naming the parameter that is wrong. Parameters
    flowqd has nothing for (memoryType, feedback, feedbackType, hardDelete,
    isClearFromViewMessageDialog) and unknown ones are ignored, as Flowise does."""
    start, end = _date("startDate"), _date("endDate")
    if start is not None and end is not None and start > end:
        raise ApiError(
            400,
            "query parameter startDate is after endDate: swap them",
            problems=[{"path": "startDate", "message": "after endDate"}],
        )
    return MessageQuery(
        session=_text("sessionId"),
        chat_id=_text("chatId"),
        descending=_order(),
        start=start,
        end=end,
        external=_chat_types(),
        message_id=_text("messageId"),
        page=_count("page", 1),
        limit=_count("limit", 1),
    )


async def _require_flow(ctx: ApiContext, flow_id: str) -> Conversations:
    """The conversations of the flow's queue (its jobs write their turns there);
    404 for a flow never registered (a stored flow no longer valid still has
    its conversations, in the default queue as far as this can tell)."""
    try:
        with ctx.deadline("looking up the flow"):
            flow = await ctx.flows.get(flow_id)
    except FlowValidationError:
        return ctx.conversations
    if flow is None:
        raise ApiError(
            404,
            f"Chatflow {flow_id} not found: register it with "
            f"PUT /api/v1/flows/{flow_id} (GET /api/v1/flows lists flows)",
        )
    return ctx.conversations_of(flow)


async def _conversations(
    ctx: ApiContext, store: Conversations, flow_id: str, query: MessageQuery, who: Principal
) -> list[ConversationKey]:
    """The conversations the caller may see that the query's session and page select."""
    if query.session is not None and not who.admin:
        # The caller's own conversation of that session: no listing to read.
        return [ConversationKey(flow_id, query.session, who.name)]
    page, limit = query.page or 1, query.limit or CONVERSATIONS_MAX
    wanted = min(page * limit, CONVERSATIONS_MAX) if query.session is None else CONVERSATIONS_MAX
    with ctx.deadline("listing conversations"):
        keys = await store.sessions(flow_id, owner=who.name, all_owners=who.admin, limit=wanted)
    if query.session is not None:
        return [k for k in keys if k.session == query.session]
    return keys[(page - 1) * limit : page * limit]


async def _turns(
    ctx: ApiContext, store: Conversations, keys: Iterable[ConversationKey]
) -> list[tuple[ConversationKey, Turn]]:
    found = []
    with ctx.deadline("reading conversations"):
        for key in keys:
            found += [(key, turn) for turn in await store.read_turns(key)]
    return found


def message_id(turn: Turn, role: str) -> str:
    return str(uuid.uuid5(MESSAGE_IDS, f"{turn.job_id}/{role}"))


def created_date(at: float) -> str:
    """JavaScript's ``Date.toJSON()``: UTC, milliseconds, ``Z``."""
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_json(key: ConversationKey, turn: Turn, role: str) -> dict[str, Any]:
    """One message as Flowise's ``ChatMessage`` entity answers it."""
    return {
        "id": message_id(turn, role),
        "role": role,
        "chatflowid": key.flow_id,
        "executionId": turn.job_id,
        "content": turn.question if role == "userMessage" else turn.answer,
        "chatType": CHAT_TYPE,
        # Flowise's chatId is never null; a turn sent with a sessionId only has none.
        "chatId": turn.chat_id or key.session,
        "sessionId": key.session,
        "createdDate": created_date(turn.at),
        **dict.fromkeys(NULL_FIELDS),
    }


@blueprint.get("/api/v1/chatmessage/<flow_id>")
async def list_messages(flow_id: str) -> Response:
    query = parse_query()
    ctx = context()
    store = await _require_flow(ctx, flow_id)
    if not query.external:
        return json_response([])
    keys = await _conversations(ctx, store, flow_id, query, principal())
    messages = []
    # A question and its answer share their date: the question sorts first.
    for key, turn in sorted(await _turns(ctx, store, keys), key=lambda found: found[1].at):
        for role in ("userMessage", "apiMessage"):
            if query.wants(turn, message_id(turn, role)):
                messages.append(message_json(key, turn, role))
    if query.descending:
        messages.reverse()
    return json_response(messages)


@blueprint.delete("/api/v1/chatmessage/<flow_id>")
async def clear_messages(flow_id: str) -> Response:
    query = parse_query()
    for name in ("startDate", "endDate", "messageId"):
        if _text(name) is not None:
            raise ApiError(
                400,
                f"query parameter {name} cannot be honoured: flowqd forgets whole "
                "conversations, not single messages; select them by sessionId or "
                "chatId, or leave the filters out to clear all of yours",
                problems=[{"path": name, "message": "not supported on DELETE"}],
            )
    ctx = context()
    store = await _require_flow(ctx, flow_id)
    removed = 0
    if query.external:
        keys = await _conversations(ctx, store, flow_id, query, principal())
        if query.chat_id is not None:
            # Only the conversations that hold a turn of that chat.
            held = await _turns(ctx, store, keys)
            keys = list(dict.fromkeys(key for key, turn in held if query.wants(turn)))
        with ctx.deadline("clearing conversations"):
            for key in keys:
                removed += await store.clear(key)
    # Flowise answers TypeORM's DeleteResult: affected counts messages, two a turn.
    return json_response({"raw": [], "affected": 2 * removed})
