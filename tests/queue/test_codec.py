"""Decoding what Redis hands back (stream entries, claimed records) and packing flushes."""

from __future__ import annotations

import attrs

from flowqd.jobs import (
    ConversationKey,
    EmittedEvent,
    Event,
    JobStatus,
    Outcome,
    OutcomeKind,
    Turn,
    TurnWrite,
    parse_event_id,
)
from flowqd.queue.redis.codec import (
    ENTRY_EVENTS,
    OUTCOME_ARITY,
    TURN_ARGS,
    TURN_CODE,
    decode_claim,
    decode_entries,
    decode_job_events,
    flush_args,
    unpack_entry,
)


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


def test_a_record_packed_entry_unpacks_as_the_stream_entry_it_replaces() -> None:
    data = '"h\u00e9;1:2"'.encode()
    packed = b"\0".join([b"9-1", b"started", b"null", b"token", data])
    [(entry_id, values)] = unpack_entry(packed)
    assert entry_id == b"9-1"
    assert values == [b"n", b"started", b"d", b"null", b"n", b"token", b"d", data]
    assert [e for _, e in decode_entries(unpack_entry(packed))] == [
        Event("9-0", "started", None),
        Event("9-1", "token", "h\u00e9;1:2"),
    ]
    assert unpack_entry(None) == []


def test_job_events_read_across_a_retry_that_moved_the_record_entry() -> None:
    packed = b"9-1\0started\0null\0end\x001"
    # Read before the retry: the record's entry. Then the stream, after it:
    # the same entry moved there, and what the retry added.
    stream = [[b"9-1", [b"n", b"started", b"d", b"null", b"n", b"end", b"d", b"1"]]]
    stream.append([b"12-0", [b"n", b"retried", b"d", b"2"]])
    expected = [
        Event("9-0", "started", None),
        Event("9-1", "end", 1),
        Event("12-0", "retried", 2),
    ]
    assert [e for _, e in decode_job_events(packed, stream)] == expected
    assert [e for _, e in decode_job_events(packed, stream[1:], (9, 1))] == expected[2:]
    assert [e for _, e in decode_job_events(packed, None, (9, 0))] == expected[1:2]
    assert [e for _, e in decode_job_events(None, stream)] == expected


def test_each_outcome_kind_carries_its_arity_of_flush_arguments() -> None:
    # flush.lua steps over outcomes by OUTCOME_ARITY: flush_args must match it.
    key = ConversationKey("flow", "session", None)
    turn = TurnWrite(key, Turn("j-t", None, "question", "answer", 1.0))
    outcomes = [
        Outcome("j-c", "tok", OutcomeKind.COMPLETED, result={"a": 1}, nodes=[{"id": "n"}]),
        Outcome("j-t", "tok", OutcomeKind.COMPLETED, result=1, turn=turn),
        Outcome("j-f", "tok", OutcomeKind.FAILED, error={"message": "no"}),
        Outcome("j-g", "tok", OutcomeKind.FAILED, retry=False),
        Outcome("j-x", "tok", OutcomeKind.CANCELLED),
        Outcome("j-r", "tok", OutcomeKind.REQUEUE),
    ]
    args = flush_args([], outcomes)
    assert args[0] == 0  # no event runs
    i, seen = 1, []
    while i < len(args):
        seen.append((args[i], args[i + 2]))
        i += OUTCOME_ARITY[args[i + 2]] + (TURN_ARGS if args[i + 2] == TURN_CODE else 0)
    assert i == len(args)
    assert seen == [
        ("j-c", b"c"),
        ("j-t", TURN_CODE),
        ("j-f", b"f"),
        ("j-g", b"f"),
        ("j-x", b"x"),
        ("j-r", b"r"),
    ]
    # A completed job: id, token, code, held events (none), nodes, result.
    assert args[1:7] == ["j-c", "tok", b"c", b"", b'[{"id":"n"}]', b'{"a":1}']
    # A failure to retry carries its jitter, one not to retry ''.
    failed = args.index("j-f")
    assert float(args[failed + 7]) >= 0
    assert args[args.index("j-g") + 7] == b""


def test_a_finishing_jobs_events_are_held_in_its_first_outcome() -> None:
    events = [
        EmittedEvent("a", "started", {"attempt": 1}),
        EmittedEvent("b", "started", {"attempt": 1}),
        EmittedEvent("a", "token", "x"),
        EmittedEvent("p", "progress", {"done": 1}),
        EmittedEvent("p", "token", "y"),
        EmittedEvent("n", "bad\0name", 1),
        *[EmittedEvent("many", "token", k) for k in range(ENTRY_EVENTS)],
    ]
    outcomes = [
        Outcome(job_id, "tok", OutcomeKind.COMPLETED, result=1)
        for job_id in ("a", "p", "n", "many", "a")
    ]
    args = flush_args(events, outcomes)
    # b has no outcome here; p, n and many cannot be held (a progress event,
    # a NUL in a name, more than one entry holds): all stay runs, in order.
    runs, i = [], 1
    for _ in range(args[0]):
        count = args[i + 1]
        runs.append((args[i], args[i + 2 : i + 2 + 2 * count : 2]))
        i += 2 + 2 * count
    assert runs == [
        ("b", ["started"]),
        ("p", ["progress", "token"]),
        ("n", ["bad\0name"]),
        ("many", ["token"] * ENTRY_EVENTS),
    ]
    held = []
    while i < len(args):
        held.append((args[i], args[i + 3]))
        i += OUTCOME_ARITY[args[i + 2]]
    assert held == [
        ("a", b'-2\0started\0{"attempt":1}\0token\0"x"'),
        ("p", b""),
        ("n", b""),
        ("many", b""),
        ("a", b""),
    ]


def test_claimed_records_decode_joined_or_in_pairs_alike() -> None:
    """decode_claim reads a new job's record (enqueue.lua's six fields, in the
    order written) as its values but st joined by NULs in one string, and any
    other as pairs: the
    same record in another order (a hash table's), and one with every
    optional field."""
    new = [b"flow", b"f", b"ver", b"2", b"in", b'{"q":1}', b"st", b"waiting"]
    new += [b"max", b"3", b"ct", b"1700000000000"]
    shuffled = [*new[6:], *new[:6]]
    full = [*new, b"to", b"1.5", b"own", b"k1", b"tc", b"tr", b"pri", b"-2"]
    full += [b"err", b'{"message":"no"}', b"nodes", b'[{"id":"n"}]', b"prog", b"7"]
    full += [b"att", b"2"]
    reply = [1700000000500]
    joined = b"\0".join([b"f", b"2", b'{"q":1}', b"3", b"1700000000000"])  # all but st
    for n, pairs in enumerate((joined, shuffled, full)):
        reply += [f"j{n}".encode(), pairs]
    a, b, c = decode_claim(reply, "w1", "t") or []
    assert a.job == attrs.evolve(b.job, id="j0")
    assert (a.token, b.token, c.token) == ("t:j0", "t:j1", "t:j2")
    assert (a.job.attempts, b.job.attempts) == (1, 1)
    for claimed in (a, b, c):
        job = claimed.job
        assert (job.flow_id, job.flow_version, job.inputs) == ("f", 2, {"q": 1})
        assert (job.status, job.max_attempts, job.worker) == (JobStatus.ACTIVE, 3, "w1")
        assert (job.created_at, job.started_at) == (1700000000.0, 1700000000.5)
    assert (a.job.timeout_s, a.job.owner, a.job.trace, a.job.priority) == (None, None, None, 0)
    assert (a.job.error, a.job.nodes, a.job.progress) == (None, [], None)
    assert (c.job.timeout_s, c.job.owner, c.job.trace, c.job.priority) == (1.5, "k1", "tr", -2)
    assert (c.job.error, c.job.nodes, c.job.progress) == ({"message": "no"}, [{"id": "n"}], 7)
    assert c.job.attempts == 3
