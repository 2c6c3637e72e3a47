"""Job hashes and stream entries of the Redis broker, to and from records."""

from __future__ import annotations

from typing import Any

import orjson

from flowqd.jobs import Event, Job, JobStatus
from flowqd.queue.keys import JOB_FIELDS

_N_FIELDS = len(JOB_FIELDS)


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


def _ms(value: bytes | int | None) -> float | None:
    return int(value) / 1000.0 if value else None


def decode_job(job_id: str, fields: list[Any]) -> Job | None:
    """A job from its ``HMGET JOB_FIELDS`` reply; None if the hash is gone.

    Fields the claim script has just set come back as Lua values (integers
    for numbers); ``int()`` takes both.
    """
    flow, ver, inputs, st, att, mx, timeout, owner, ct, sat, ft, res, err, nodes, wk, cx = fields
    if st is None:
        return None
    return Job(
        id=job_id,
        flow_id=flow.decode(),
        flow_version=int(ver),
        inputs=orjson.loads(inputs),
        status=JobStatus(st.decode()),
        attempts=int(att),
        max_attempts=int(mx),
        timeout_s=float(timeout) if timeout else None,
        owner=_text(owner),
        created_at=int(ct) / 1000.0,
        started_at=_ms(sat),
        finished_at=_ms(ft),
        result=orjson.loads(res) if res is not None else None,
        error=orjson.loads(err) if err else None,
        nodes=orjson.loads(nodes) if nodes else [],
        worker=_text(wk),
        cancel_requested=cx is not None,
    )


def decode_entry(entry: list[Any]) -> Event:
    """One stream entry ``[id, [field, value, ...]]`` written as ``n``/``d``."""
    entry_id, values = entry
    name = b""
    data = b"null"
    for i in range(0, len(values), 2):
        if values[i] == b"n":
            name = values[i + 1]
        elif values[i] == b"d":
            data = values[i + 1]
    return Event(id=entry_id.decode(), name=name.decode(), data=orjson.loads(data))


assert _N_FIELDS == 16  # decode_job unpacks exactly these
