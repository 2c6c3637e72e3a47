"""Decoding what Redis hands back: stream entries."""

from __future__ import annotations

from flowqd.jobs import Event, parse_event_id
from flowqd.queue.redis.codec import decode_entries


def test_entries_decode_with_sortable_ids_in_either_field_order() -> None:
    entries = [
        [b"1712345678901-0", [b"n", b"token", b"d", b'"hi "']],
        # Not how flowqd writes them, but a valid entry all the same.
        [b"1712345678901-12", [b"d", b'{"a": [1]}', b"n", b"node_end"]],
        [b"1712345678902-3", [b"n", b"started"]],
    ]
    decoded = decode_entries(entries)
    assert [event for _, event in decoded] == [
        Event("1712345678901-0", "token", "hi "),
        Event("1712345678901-12", "node_end", {"a": [1]}),
        Event("1712345678902-3", "started", None),
    ]
    assert [key for key, _ in decoded] == [parse_event_id(e.id) for _, e in decoded]
    assert [key for key, _ in decoded] == sorted(key for key, _ in decoded)
    assert decode_entries(None) == []
