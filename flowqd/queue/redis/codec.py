"""Job hashes, stream entries and script arguments of the Redis backend, to and from records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from flowqd.config import MemoryConfig
from flowqd.jobs import (
    CANCELLED,
    END,
    ERROR,
    PROGRESS,
    RETRIED,
    Claimed,
    EmittedEvent,
    Event,
    Job,
    JobStatus,
    Outcome,
    OutcomeKind,
    TurnWrite,
)
from flowqd.queue import policy
from flowqd.queue.keys import JOB_FIELDS
from flowqd.queue.turns import conversation_name, encode_turn
from flowqd.redis import Packed, bulk

_N_FIELDS = len(JOB_FIELDS)
_STATUSES = {status.value.encode(): status for status in JobStatus}
_OUTCOME_CODES = {
    OutcomeKind.COMPLETED: b"c",
    OutcomeKind.FAILED: b"f",
    OutcomeKind.CANCELLED: b"x",
    OutcomeKind.REQUEUE: b"r",
}
# The code of a completed outcome followed by a conversation turn, in
# TURN_ARGS more arguments (flush.lua's add_turn).
TURN_CODE = b"t"
TURN_ARGS = 7
# Arguments per outcome by code, the turn's not counted (flush_args's layout).
OUTCOME_ARITY = {b"c": 6, TURN_CODE: 6, b"f": 8, b"x": 6, b"r": 5}
# flush_args writes these codes as literals.
assert list(_OUTCOME_CODES.values()) == [b"c", b"f", b"x", b"r"]
_DEFAULT_MEMORY = MemoryConfig()
# Event names as packed arguments (flush_args), up to this many names.
_EVENT_NAMES: dict[str, bytes] = {}
_EVENT_NAMES_KEPT = 256
# Events one stream entry holds at most (common.lua's write_events). An
# entry ``<ms>-<seq>`` of n events gives event k (from 0) the id
# ``<ms>-<seq - n + 1 + k>``: its last event has the entry's id, and the
# script chose that id to leave the n - 1 below it free. So ids stay unique,
# ordered and of Redis's shape, an entry of one event keeps the entry's id,
# and reading a stream past an event id (XREAD, XRANGE ``(``) yields every
# entry holding a later event; ``decode_entries`` drops the earlier ones.
ENTRY_EVENTS = 16
FINISH_STEPS_TEXT = 64
# After the token in K_LOCKS once the job has events (a stream, or events of
# an earlier attempt): tokens (claim.lua) never end with it.
EVENTFUL_MARK = "+"


def lua_names() -> str:
    """Lua locals for the values scripts store and compare: job states (``S_WAITING``),
    terminal event names (``EV_END``), ``EV_RETRIED`` and ``EV_PROGRESS``, and the flush
    script's outcome codes (``O_COMPLETED``), all from the Python definitions."""
    lines = [f"local S_{status.name} = '{status.value}'" for status in JobStatus]
    lines += [
        f"local EV_{name.upper()} = '{name}'" for name in (END, ERROR, CANCELLED, RETRIED, PROGRESS)
    ]
    lines += [f"local O_{kind.name} = '{code.decode()}'" for kind, code in _OUTCOME_CODES.items()]
    lines += [f"local O_TURN, TURN_ARGS = '{TURN_CODE.decode()}', {TURN_ARGS}"]
    arity = ", ".join(
        f"['{code.decode()}'] = {n + (TURN_ARGS if code == TURN_CODE else 0)}"
        for code, n in OUTCOME_ARITY.items()
    )
    lines += [f"local OUTCOME_ARITY = {{{arity}}}"]
    lines += [f"local ENTRY_EVENTS = {ENTRY_EVENTS}"]
    lines += [f"local EVENTFUL_MARK = '{EVENTFUL_MARK}'"]
    # The sequence numbers an entry's id may end with, as text: Lua turns a
    # number into text with sprintf, each call anew.
    seq = ", ".join(f"'{n}'" for n in range(ENTRY_EVENTS))
    lines += [f"local SEQ_TEXT = {{{seq}}}"]
    # The fractions k/1024 of common.lua's finish_score, as text, for the
    # jobs one call usually ends.
    steps = ", ".join(f"'.{k * 9765625:010d}'" for k in range(1, FINISH_STEPS_TEXT + 1))
    lines += [f"local STEP_TEXT = {{{steps}}}"]
    return "\n".join(lines) + "\n"


def checked(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, once none is an error (the first one is raised)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def decode_job(job_id: str, fields: list[Any]) -> Job | None:
    """A job from its ``HMGET JOB_FIELDS`` reply; None if the hash is gone.

    Fields the claim script has just set come back as Lua values (integers
    for numbers); ``int()`` takes both.
    """
    (
        flow,
        ver,
        inputs,
        st,
        att,
        mx,
        timeout,
        owner,
        ct,
        sat,
        ft,
        res,
        err,
        nodes,
        wk,
        cx,
        tc,
        pri,
        prog,
    ) = fields
    if st is None:
        return None
    # Positional, in Job's field order: every claimed job passes through here,
    # and keywords cost a third more.
    return Job(
        job_id,
        flow.decode(),
        int(ver),
        orjson.loads(inputs),
        _STATUSES[st],
        int(att) if att else 0,  # absent until the first claim
        int(mx),
        float(timeout) if timeout else None,
        owner.decode() if owner else None,
        int(ct) / 1000.0,
        int(sat) / 1000.0 if sat else None,
        int(ft) / 1000.0 if ft else None,
        orjson.loads(res) if res is not None else None,
        orjson.loads(err) if err else None,
        orjson.loads(nodes) if nodes else [],
        wk.decode() if wk else None,
        cx is not None,
        tc.decode() if tc else None,
        int(pri) if pri else 0,
        orjson.loads(prog) if prog else None,
    )


def decode_entries(
    entries: list[Any] | None, after: tuple[int, int] = (0, 0)
) -> list[tuple[tuple[int, int], Event]]:
    """The events past ``after`` in stream entries ``[id, [n, name, d, data, ...]]``,
    each with its id as a sortable pair (see ``ENTRY_EVENTS``)."""
    out = []
    loads = orjson.loads
    for entry_id, values in entries or ():
        # Redis made the id: "<ms>-<seq>", no need to check it.
        ms_text, _, seq_text = entry_id.partition(b"-")
        ms, seq = int(ms_text), int(seq_text)
        if len(values) == 4 and values[0] == b"n" and values[2] == b"d":
            if (ms, seq) > after:  # one event, as most entries hold
                event = Event(entry_id.decode(), values[1].decode(), loads(values[3]))
                out.append(((ms, seq), event))
        elif len(values) % 4 == 0 and set(values[0::4]) == {b"n"} and set(values[2::4]) == {b"d"}:
            seq -= len(values) // 4 - 1
            for k in range(0, len(values), 4):
                if (ms, seq) > after:
                    event = Event(f"{ms}-{seq}", values[k + 1].decode(), loads(values[k + 3]))
                    out.append(((ms, seq), event))
                seq += 1
        elif (ms, seq) > after:
            # Not how flowqd writes them, but a valid entry all the same.
            fields = dict(zip(values[0::2], values[1::2], strict=True))
            name, data = fields.get(b"n", b""), fields.get(b"d", b"null")
            out.append(((ms, seq), Event(entry_id.decode(), name.decode(), loads(data))))
    return out


def unpack_entry(packed: bytes | None) -> list[tuple[bytes, list[bytes]]]:
    """The stream entry a job record's ``evs`` field packs (common.lua's
    pack_entry: id, then names and data, joined by NUL), as XRANGE gives
    entries; none for None."""
    if packed is None:
        return []
    entry_id, *values = packed.split(b"\0")
    fields: list[bytes] = []
    for name, data in zip(values[0::2], values[1::2], strict=True):
        fields += (b"n", name, b"d", data)
    return [(entry_id, fields)]


def decode_job_events(
    packed: bytes | None, entries: list[Any] | None, after: tuple[int, int] = (0, 0)
) -> list[tuple[tuple[int, int], Event]]:
    """A job's events past ``after`` from its record's ``evs`` read first, then its
    stream: a retry may have moved that entry into the stream in between, and
    then its events are read from the stream alone."""
    streamed = decode_entries(entries, after)
    if packed is None:
        return streamed
    held = decode_entries(unpack_entry(packed), after)
    if streamed:
        first = streamed[0][0]
        held = [pair for pair in held if pair[0] < first]
    return held + streamed


def decode_claim(reply: Any, worker: str, token_base: str) -> list[Claimed] | None:
    """The claim script's reply (claim time, then id and record, ...) to the call
    by ``worker`` with ``token_base``; None while the queue is paused. The jobs
    are what ``decode_job`` gives for the records the script has just written,
    with the tokens it gave them."""
    if reply is None:
        return None
    claimed: list[Claimed] = []
    loads = orjson.loads
    active = JobStatus.ACTIVE
    prefix = token_base + ":"
    # The script's own value (claim time) comes back as an integer.
    started = reply[0] / 1000.0
    for at in range(1, len(reply), 2):
        job_id, pairs = reply[at].decode(), reply[at + 1]
        if type(pairs) is bytes:
            # A new job's record: flow, ver, in, max and ct joined by NULs (claim.lua).
            flow, ver, inputs, mx, ct = pairs.split(b"\0")
            timeout = owner = tc = pri = err = nodes = prog = att = None
        else:
            fields = dict(zip(pairs[0::2], pairs[1::2], strict=True))
            flow, ver, inputs = fields[b"flow"], fields[b"ver"], fields[b"in"]
            mx, ct = fields[b"max"], fields[b"ct"]
            get = fields.get
            timeout, owner, tc, pri = get(b"to"), get(b"own"), get(b"tc"), get(b"pri")
            err, nodes, prog, att = get(b"err"), get(b"nodes"), get(b"prog"), get(b"att")
        job = Job(
            job_id,
            flow.decode(),
            int(ver),
            loads(inputs),
            active,
            int(att) + 1 if att else 1,
            int(mx),
            float(timeout) if timeout else None,
            owner.decode() if owner else None,
            int(ct) / 1000.0,
            started,
            None,
            None,
            loads(err) if err else None,
            loads(nodes) if nodes else [],
            worker,
            False,
            tc.decode() if tc else None,
            int(pri) if pri else 0,
            loads(prog) if prog else None,
        )
        claimed.append(Claimed(job, prefix + job_id))
    return claimed


def flush_args(
    events: Sequence[EmittedEvent],
    outcomes: Sequence[Outcome],
    memory: MemoryConfig = _DEFAULT_MEMORY,
) -> list[Any]:
    """The flush script's arguments (see ``lua/flush.lua``); ``memory`` bounds the turns."""
    dumps = orjson.dumps
    events, held = _held(events, outcomes)
    # Events as runs of one job's consecutive events: job id and count
    # once per run (a job's events mostly come together), then name and
    # data per event.
    args: list[Any] = [0]
    runs = 0
    run_job: str | None = None
    count_at = 0
    for event in events:
        if event.job_id != run_job:
            run_job = event.job_id
            runs += 1
            count_at = len(args) + 1
            args += (run_job, 0)
        args[count_at] += 1
        args += (event.name, dumps(event.data))
    args[0] = runs
    for outcome in outcomes:
        kind = outcome.kind
        nodes = dumps(outcome.nodes) if outcome.nodes else b""
        own = held.pop(outcome.job_id, b"")
        # Each kind carries only what flush.lua reads of it (OUTCOME_ARITY).
        if kind == OutcomeKind.COMPLETED:
            stored = dumps(outcome.result)
            turn = turn_args(outcome.turn, memory) if outcome.turn is not None else ()
            if turn:
                args += (outcome.job_id, outcome.token, TURN_CODE, own, nodes, stored, *turn)
            else:
                args += (outcome.job_id, outcome.token, b"c", own, nodes, stored)
        elif kind == OutcomeKind.FAILED:
            error = outcome.error or {"message": "job failed"}
            args += (
                outcome.job_id,
                outcome.token,
                b"f",
                own,
                nodes,
                dumps(error),
                dumps(policy.error_event_data(error)),
                # The retry delay's jitter; '' for a failure not to be retried.
                repr(policy.jitter()) if outcome.retry else b"",
            )
        elif kind == OutcomeKind.CANCELLED:
            args += (
                outcome.job_id,
                outcome.token,
                b"x",
                own,
                nodes,
                policy.cancel_reason(outcome.error),
            )
        else:
            args += (outcome.job_id, outcome.token, b"r", own, nodes)
    return args


def flush_packed(
    events: Sequence[EmittedEvent],
    outcomes: Sequence[Outcome],
    memory: MemoryConfig = _DEFAULT_MEMORY,
) -> list[Any]:
    """``flush_args`` as one ``Packed``, each argument packed as it is made: a
    flush has thousands, and pack_command's copies of them cost a third more
    than this. The worker's flushes go this way; keep the two alike (a test
    compares them)."""
    dumps = orjson.dumps
    events, held = _held(events, outcomes)
    # Events as runs of one job's consecutive events: job id and count
    # once per run (a job's events mostly come together), then name and
    # data per event. parts[0] is the number of runs; a run's first part,
    # its id and count, is made when the run ends.
    parts: list[bytes] = [b""]
    count = 1
    runs = 0
    run_job = ""
    run_at = 0
    in_run = 0
    names = _EVENT_NAMES
    for event in events:
        if event.job_id != run_job:
            if runs:
                parts[run_at] = _run_head(run_job, in_run)
            run_job = event.job_id
            runs += 1
            in_run = 0
            run_at = len(parts)
            parts.append(b"")
            count += 2
        in_run += 1
        name = names.get(event.name)
        if name is None:
            name = bulk(event.name)
            if len(names) < _EVENT_NAMES_KEPT:
                names[event.name] = name
        data = dumps(event.data)
        parts += (name, b"$%d\r\n%b\r\n" % (len(data), data))
        count += 2
    if runs:
        parts[run_at] = _run_head(run_job, in_run)
    parts[0] = bulk(runs)
    for outcome in outcomes:
        kind = outcome.kind
        nodes = dumps(outcome.nodes) if outcome.nodes else b""
        own = held.pop(outcome.job_id, b"")
        # Each kind carries only what flush.lua reads of it (OUTCOME_ARITY).
        if kind == OutcomeKind.COMPLETED:
            stored = dumps(outcome.result)
            turn = turn_args(outcome.turn, memory) if outcome.turn is not None else ()
            if not turn:
                job_id, token = outcome.job_id.encode(), outcome.token.encode()
                parts.append(
                    b"$%d\r\n%b\r\n$%d\r\n%b\r\n$1\r\nc\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                    % (
                        len(job_id),
                        job_id,
                        len(token),
                        token,
                        len(own),
                        own,
                        len(nodes),
                        nodes,
                        len(stored),
                        stored,
                    )
                )
                count += 6
                continue
            args: tuple[Any, ...] = (
                outcome.job_id,
                outcome.token,
                TURN_CODE,
                own,
                nodes,
                stored,
                *turn,
            )
        elif kind == OutcomeKind.FAILED:
            error = outcome.error or {"message": "job failed"}
            args = (
                outcome.job_id,
                outcome.token,
                b"f",
                own,
                nodes,
                dumps(error),
                dumps(policy.error_event_data(error)),
                # The retry delay's jitter; '' for a failure not to be retried.
                repr(policy.jitter()) if outcome.retry else b"",
            )
        elif kind == OutcomeKind.CANCELLED:
            args = (
                outcome.job_id,
                outcome.token,
                b"x",
                own,
                nodes,
                policy.cancel_reason(outcome.error),
            )
        else:
            args = (outcome.job_id, outcome.token, b"r", own, nodes)
        parts += map(bulk, args)
        count += len(args)
    return [Packed(count, b"".join(parts))]


def _held(
    events: Sequence[EmittedEvent], outcomes: Sequence[Outcome]
) -> tuple[Sequence[EmittedEvent], dict[str, bytes]]:
    """The events to send as runs, and per job with an outcome in this flush
    its events held in one argument of its first outcome: ``-<k>`` then
    NUL, name, NUL, data for each of its k events, in order. The usual short
    job ends in the flush that carries its events, and flush.lua packs them
    with the terminal event into the record's ``evs`` as they come: one
    argument and one string per job instead of a run's 2 + 2k arguments and
    the tables it builds of them (Redis's Lua was most of its work per job).
    Held only where the record can take them all in one entry (fewer than
    ``ENTRY_EVENTS``), no name holds a NUL (JSON data never does) and none
    is progress (the record keeps the last one, which a run finds)."""
    if not events or not outcomes:
        return events, {}
    per_job: dict[str, list[EmittedEvent]] = {outcome.job_id: [] for outcome in outcomes}
    runs: list[EmittedEvent] = []
    for event in events:
        own = per_job.get(event.job_id)
        if own is None:
            runs.append(event)
        else:
            own.append(event)
    dumps = orjson.dumps
    held: dict[str, bytes] = {}
    for job_id, own in per_job.items():
        if not own:
            continue
        if len(own) < ENTRY_EVENTS and all(
            event.name != PROGRESS and "\0" not in event.name for event in own
        ):
            held[job_id] = b"-%d" % len(own) + b"".join(
                [b"\0%b\0%b" % (event.name.encode(), dumps(event.data)) for event in own]
            )
        else:
            runs += own
    return runs, held


def _run_head(job_id: str, events: int) -> bytes:
    """A run's job id and number of events, packed (``bulk``)."""
    encoded, number = job_id.encode(), b"%d" % events
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(encoded), encoded, len(number), number)


def turn_args(write: TurnWrite, memory: MemoryConfig) -> tuple[Any, ...]:
    """The TURN_ARGS arguments of a turn after its outcome's; () when it cannot be stored."""
    encoded = encode_turn(write.turn, memory.max_bytes)
    if encoded is None:
        return ()
    return (
        write.key.flow_id,
        conversation_name(write.key),
        encoded,
        memory.max_turns,
        memory.max_bytes,
        max(1, math.ceil(memory.ttl_s * 1000)),
        memory.max_sessions,
    )


assert _N_FIELDS == 19  # decode_job unpacks exactly these
# ... and passes them to Job in this order.
assert [a.name for a in attrs.fields(Job)] == [
    "id",
    "flow_id",
    "flow_version",
    "inputs",
    "status",
    "attempts",
    "max_attempts",
    "timeout_s",
    "owner",
    "created_at",
    "started_at",
    "finished_at",
    "result",
    "error",
    "nodes",
    "worker",
    "cancel_requested",
    "trace",
    "priority",
    "progress",
]
