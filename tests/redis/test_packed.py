"""Arguments packed ahead of a script call (``Packed``, ``bulk``; the worker's
flush packs its own, ``flush_packed``): the same bytes ``pack_command`` would
have sent for the same arguments."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from flowqd.config import MemoryConfig
from flowqd.jobs import ConversationKey, EmittedEvent, Outcome, OutcomeKind, Turn, TurnWrite
from flowqd.queue import policy
from flowqd.queue.redis.codec import flush_args, flush_packed
from flowqd.redis import Packed, Script, bulk
from flowqd.redis._script import pack_command

ARGS: list[Any] = ["queue:{q}", 3, 2.5, b"", b"bytes\r\n", "héllo", -7, "", 10**20]


@pytest.mark.parametrize("head", [0, 1, 4])
def test_a_packed_tail_is_what_pack_command_packs(head: int) -> None:
    script = Script.from_source("return 1")
    plain = script.call(["k"], ARGS)
    packed = script.call(
        ["k"], [*ARGS[:head], Packed(len(ARGS) - head, b"".join(map(bulk, ARGS[head:])))]
    )
    assert packed.packed == plain.packed == pack_command((b"EVALSHA", script.sha, 1, "k", *ARGS))


def test_bulk_refuses_what_pack_command_refuses() -> None:
    with pytest.raises(TypeError):
        bulk(True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bulk(None)  # type: ignore[arg-type]


def test_flush_packed_is_flush_args_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "jitter", lambda: 0.25)
    memory = MemoryConfig()
    turn = TurnWrite(ConversationKey("f", "s", None), Turn("a2", "c", "q", "answer", 1.0))
    events = [
        EmittedEvent("a", "started", {"attempt": 1}),
        EmittedEvent("a", "node_start", orjson.Fragment(b'{"node":"n"}')),
        EmittedEvent("b", "token", "\u00e9"),
        EmittedEvent("a", "name never seen before", [1]),
        EmittedEvent("\u00e9", "token", 12345678901),
    ]
    outcomes = [
        Outcome("a", "ta", OutcomeKind.COMPLETED, {"x": 1}, None, [{"nodeId": "n"}]),
        Outcome("a2", "ta2", OutcomeKind.COMPLETED, "r", turn=turn),
        Outcome("b", "tb", OutcomeKind.FAILED, None, {"message": "m", "node": None}, []),
        Outcome("c", "tc", OutcomeKind.FAILED, None, None, [], retry=False),
        Outcome("d", "td", OutcomeKind.CANCELLED),
        Outcome("e", "te", OutcomeKind.REQUEUE),
    ]
    for some_events, some_outcomes in ((events, outcomes), ([], outcomes), (events, []), ([], [])):
        args = flush_args(some_events, some_outcomes, memory)
        [packed] = flush_packed(some_events, some_outcomes, memory)
        assert isinstance(packed, Packed)
        assert packed.count == len(args)
        assert packed.data == b"".join(map(bulk, args))
