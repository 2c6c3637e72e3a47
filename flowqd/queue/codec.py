"""Job hashes and stream entries of the Redis broker, to and from records."""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from flowqd.jobs import Event, Job, JobStatus
from flowqd.queue.keys import JOB_FIELDS

_N_FIELDS = len(JOB_FIELDS)
_STATUSES = {status.value.encode(): status for status in JobStatus}


def decode_job(job_id: str, fields: list[Any]) -> Job | None:
    """A job from its ``HMGET JOB_FIELDS`` reply; None if the hash is gone.

    Fields the claim script has just set come back as Lua values (integers
    for numbers); ``int()`` takes both.
    """
    flow, ver, inputs, st, att, mx, timeout, owner, ct, sat, ft, res, err, nodes, wk, cx = fields
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
    )


def decode_entries(entries: list[Any] | None) -> list[tuple[tuple[int, int], Event]]:
    """Stream entries ``[id, [field, value, ...]]`` written as ``n``/``d``, each
    with its id as a sortable pair (see ``policy.parse_event_id``)."""
    out = []
    loads = orjson.loads
    for entry_id, values in entries or ():
        if len(values) == 4 and values[0] == b"n" and values[2] == b"d":
            name, data = values[1], values[3]  # as add_event writes them: every event
        else:
            fields = dict(zip(values[0::2], values[1::2], strict=True))
            name, data = fields.get(b"n", b""), fields.get(b"d", b"null")
        # Redis made the id: "<ms>-<seq>", no need to check it.
        ms, _, seq = entry_id.partition(b"-")
        out.append(((int(ms), int(seq)), Event(entry_id.decode(), name.decode(), loads(data))))
    return out


assert _N_FIELDS == 16  # decode_job unpacks exactly these
# ... and passes them to Job in this order.
assert [a.name for a in attrs.fields(Job)] == [
    "id", "flow_id", "flow_version", "inputs", "status", "attempts", "max_attempts",
    "timeout_s", "owner", "created_at", "started_at", "finished_at", "result", "error",
    "nodes", "worker", "cancel_requested",
]
