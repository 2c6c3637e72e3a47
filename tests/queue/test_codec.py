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


def test_an_entry_of_several_events_gives_each_an_id_below_its_own() -> None:
    entries = [
        [b"5-0", [b"n", b"started", b"d", b"null"]],
        [b"7-3", [b"n", b"a", b"d", b"1", b"n", b"b", b"d", b"2", b"n", b"end", b"d", b"3"]],
        [b"7-4", [b"n", b"retried", b"d", b"4"]],
    ]
    events = [event for _, event in decode_entries(entries)]
    assert events == [
        Event("5-0", "started", None),
        Event("7-1", "a", 1),
        Event("7-2", "b", 2),
        Event("7-3", "end", 3),
        Event("7-4", "retried", 4),
    ]
    # Past an id within an entry: the rest of that entry, then the next ones.
    assert [e for _, e in decode_entries(entries[1:], (7, 1))] == events[2:]
    assert [e for _, e in decode_entries(entries[1:], (7, 3))] == events[4:]
