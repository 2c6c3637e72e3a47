"""Conversation memory for the jobs that have one: which conversation, the turn a
completed job adds to it, and the reader ``ctx.history`` uses.

A job belongs to a conversation when ``memory.enabled`` and its inputs carry
a ``sessionId`` (else a ``chatId``): the prediction route always puts both,
a native job may. The conversation is the flow's session as the job's owner
(its API key) sees it. Jobs without one pay a dictionary lookup or two.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson

from flowqd.executors.base import HistoryReader, Message
from flowqd.jobs import ConversationKey, Job, Turn, TurnWrite, answer_text
from flowqd.queue.roles import Conversations


def conversation_of(job: Job) -> ConversationKey | None:
    """The job's conversation, or None when its inputs name no session."""
    inputs = job.inputs
    session = inputs.get("sessionId") or inputs.get("chatId")
    if not isinstance(session, str) or not session:
        return None
    return ConversationKey(job.flow_id, session, job.owner)


def turn_of(job: Job, key: ConversationKey, output: Any) -> TurnWrite:
    """What the completed ``job`` adds to its conversation: question and answer as text.

    ``output`` is the flow's result as the runner gives it (an
    ``orjson.Fragment`` for the worker): decoded once, for this job only.
    """
    inputs = job.inputs
    question = inputs.get("question")
    chat_id = inputs.get("chatId")
    answer = answer_text(orjson.loads(orjson.dumps(output)))
    return TurnWrite(
        key,
        Turn(
            job.id,
            chat_id if isinstance(chat_id, str) else None,
            "" if question is None else answer_text(question),
            answer,
            time.time(),
        ),
    )


def history_reader(conversations: Conversations, key: ConversationKey) -> HistoryReader:
    """``ctx.history``'s stored part for the job's conversation."""
    return partial(_read, conversations, key)


async def _read(
    conversations: Conversations, key: ConversationKey, turns: int | None
) -> list[Message]:
    messages: list[Message] = []
    for turn in await conversations.read_turns(key, turns=turns):
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer})
    return messages
