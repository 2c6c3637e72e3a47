"""Conversation turns as both backends store them, and a conversation's name in its flow.

A turn is stored as one JSON array ``[job_id, chat_id, question, answer, at]``;
a conversation's size is the sum of its encoded turns' lengths, the same figure
on both backends, bounded by ``memory.max_bytes``. A turn that alone is larger
than that is cut to fit (its answer's end first, then its question's), so one
long answer never grows a conversation past its bound. Within a flow a
conversation is named ``<owner>/<session>`` (no owner: an empty name): neither
flow ids nor API key names hold a ``/``.
"""

from __future__ import annotations

import attrs
import orjson

from flowqd.jobs import ConversationKey, Turn

SEPARATOR = "/"


def conversation_name(key: ConversationKey) -> str:
    """``owner/session`` (``/session`` without an owner): the conversation within its flow."""
    return f"{key.owner or ''}{SEPARATOR}{key.session}"


def conversation_key(flow_id: str, name: str) -> ConversationKey:
    """The key a ``conversation_name`` of ``flow_id`` stands for."""
    owner, _, session = name.partition(SEPARATOR)
    return ConversationKey(flow_id, session, owner or None)


def owner_prefix(owner: str | None) -> str:
    """What the names of ``owner``'s conversations start with."""
    return f"{owner or ''}{SEPARATOR}"


def _dumps(turn: Turn) -> bytes:
    fields = [turn.job_id, turn.chat_id, turn.question, turn.answer, turn.at]
    try:
        return orjson.dumps(fields)
    except TypeError:  # a lone surrogate: stored escaped rather than refused
        return orjson.dumps(
            [
                f.encode("utf-8", "backslashreplace").decode() if isinstance(f, str) else f
                for f in fields
            ]
        )


def encode_turn(turn: Turn, max_bytes: int) -> bytes | None:
    """The stored form of ``turn``, at most ``max_bytes`` long (its texts cut if need be).

    None when even its ids do not fit (a chat id thousands of characters long).
    """
    data = _dumps(turn)
    question, answer = turn.question, turn.answer
    while len(data) > max_bytes:
        # A text's JSON is at least as long as its UTF-8: cutting ``excess``
        # bytes of UTF-8 either fits or empties the text.
        excess = len(data) - max_bytes
        if answer:
            answer = _cut(answer, excess)
        elif question:
            question = _cut(question, excess)
        else:
            return None
        data = _dumps(attrs.evolve(turn, question=question, answer=answer))
    return data


def _cut(text: str, excess: int) -> str:
    """``text`` less its last ``excess`` bytes of UTF-8 (a character cut in two goes)."""
    raw = text.encode("utf-8", "backslashreplace")
    return raw[: max(0, len(raw) - excess)].decode("utf-8", "ignore")


def decode_turn(data: bytes) -> Turn:
    job_id, chat_id, question, answer, at = orjson.loads(data)
    return Turn(job_id, chat_id, question, answer, at)
