"""Every Redis key and channel name of a queue, and nothing else.

All names of queue ``q`` start with ``flowqd:{q}:`` so that one queue lives in
one Redis Cluster slot. Python code asks a :class:`QueueKeys`; Lua scripts get
the same names from :func:`lua_prelude`, generated from the tables below, with
the prefix passed as ``KEYS[1]`` (so one script SHA serves every queue).
"""

from __future__ import annotations

import attrs

# Fixed keys: (Lua constant, suffix, what it holds).
FIXED: tuple[tuple[str, str, str], ...] = (
    ("K_WAIT", "wait", "list of waiting job ids of priority 0: LPUSH new, RPOP oldest"),
    ("K_WAIT_HIGH", "wait-high", "zset waiting job id -> (level, seq) score, priority > 0"),
    ("K_WAIT_LOW", "wait-low", "zset waiting job id -> (level, seq) score, priority < 0"),
    ("K_PRIORITY_SEQ", "priority-seq", "string INCR: FIFO order within one priority"),
    ("K_ACTIVE", "active", "zset job id -> lock deadline (ms, Redis clock)"),
    (
        "K_LOCKS",
        "locks",
        "hash active job id -> its lock token, then codec.EVENTFUL_MARK once it has events",
    ),
    ("K_DELAYED", "delayed", "zset job id -> due time (ms)"),
    ("K_COMPLETED", "completed", "zset job id -> finish time (ms)"),
    ("K_FAILED", "failed", "zset job id -> finish time (ms)"),
    ("K_CANCELLED", "cancelled", "zset job id -> finish time (ms)"),
    ("K_PAUSED", "paused", "string, present while the queue is paused"),
    ("K_MARKER", "marker", "zset with one member: the idle workers' doorbell (BZPOPMIN)"),
    ("K_STALLED_CHECK", "stalled-check", "string SET NX PX: who runs this stalled check"),
    ("K_FINISH_CLOCK", "finish-clock", "string: last finish score, to keep finish order strict"),
    ("K_WORKERS", "workers", "zset worker id -> last heartbeat (ms)"),
    ("K_FLOWS", "flows", "hash flow id -> current version"),
    ("K_FLOW_SEQ", "flow-seq", "hash flow id -> highest version ever stored"),
    ("K_SECRETS", "secrets", "hash credential name -> sealed bytes"),
    ("K_SCHEDULES", "schedules", "hash schedule id -> definition (JSON)"),
    ("K_SCHEDULE_DUE", "schedule-due", "zset schedule id -> next tick (unix ms); paused: absent"),
    ("K_SCHEDULE_LAST", "schedule-last", "hash schedule id -> last tick claimed (unix ms)"),
    ("CH_EVENTS", "ch:events", "channel: JSON list of job ids whose streams grew"),
    ("CH_CANCEL", "ch:cancel", "channel: id of an active job to cancel"),
)
# Per-object keys: suffix + id (+ tail).
# hash, fields in JOB_FIELDS plus "stl" (stall count),
# "psc" (a prioritised job's score in K_WAIT_HIGH/K_WAIT_LOW), "ev" (set
# once a job that may run again has events: common.lua's fresh) and "evs" (the events of a job that
# got them all in the call that ended it, as one packed stream entry, in
# place of a stream: common.lua's pack_entry; moved to the stream if the job
# is retried; over 64 bytes it makes the hash a hash table, 1.3 KB against a
# stream's 4 KB, and a string key of its own cost Redis more CPU than that)
JOB = "job:"
EVENTS = "events:"  # stream, entries {n: name, d: orjson data}
WORKER = "worker:"  # string, orjson WorkerInfo, PX heartbeat ttl
FLOW = "flow:"  # flow:<id>:v<n> string, the flow document of version n
RATE = "rate:"  # string, a rate limit's theoretical arrival time (ms), PX until idle
# Conversation memory, per flow; a conversation is "<owner>/<session>" within
# its flow (queue/turns.py), so its keys are conv:<flow>/<owner>/<session>.
CONV = "conv:"  # list, the conversation's encoded turns, oldest first; PX memory.ttl_s
CONV_BYTES = "conv-bytes:"  # string, the byte total of those turns; PX memory.ttl_s
CONVS = "convs:"  # zset per flow: conversation -> its last turn (ms); PX memory.ttl_s
# Job hash fields returned (in this order) wherever a job record is read.
JOB_FIELDS: tuple[str, ...] = (
    "flow",
    "ver",
    "in",
    "st",
    "att",
    "max",
    "to",
    "own",
    "ct",
    "sat",
    "ft",
    "res",
    "err",
    "nodes",
    "wk",
    "cx",
    "tc",  # W3C trace context (JobSpec.trace), absent when not traced
    "pri",  # priority, absent when 0
    "prog",  # latest progress report (JSON), absent until the first
)
MARKER_MEMBER = "m"
# K_ACTIVE and K_LOCKS each keep one entry no job has (member KEEPER at
# +inf; field KEEPER_FIELD with value KEEPER), longer than Redis's
# zset/hash-max-listpack-value (64 bytes), so that they stay a skiplist and a
# hash table. Redis's compact encoding, which it gives them up to 128 entries
# (a worker at concurrency 50 holds that many), makes every ZADD, ZREM, HSET,
# HMGET and HDEL on them a scan of the whole key: ~8% of Redis's work per job
# at concurrency 50 (bench/redis_cost.py). Readers of K_ACTIVE skip +inf.
KEEPER = "not a job: keeps this key in Redis's hashed encoding (flowqd/queue/keys.py)"
KEEPER_FIELD = "~"
assert len(KEEPER) > 64


def prefix_of(queue: str) -> str:
    return f"flowqd:{{{queue}}}:"


@attrs.frozen
class QueueKeys:
    """The key names of one queue."""

    queue: str
    prefix: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "prefix", prefix_of(self.queue))

    def fixed(self, name: str) -> str:
        """The key behind a Lua constant such as ``K_WAIT``."""
        return self.prefix + _SUFFIX[name]

    @property
    def wait(self) -> str:
        return self.fixed("K_WAIT")

    @property
    def wait_high(self) -> str:
        return self.fixed("K_WAIT_HIGH")

    @property
    def wait_low(self) -> str:
        return self.fixed("K_WAIT_LOW")

    @property
    def active(self) -> str:
        return self.fixed("K_ACTIVE")

    @property
    def locks(self) -> str:
        return self.fixed("K_LOCKS")

    @property
    def delayed(self) -> str:
        return self.fixed("K_DELAYED")

    @property
    def paused(self) -> str:
        return self.fixed("K_PAUSED")

    @property
    def marker(self) -> str:
        return self.fixed("K_MARKER")

    @property
    def workers(self) -> str:
        return self.fixed("K_WORKERS")

    @property
    def flows(self) -> str:
        return self.fixed("K_FLOWS")

    @property
    def secrets(self) -> str:
        return self.fixed("K_SECRETS")

    @property
    def schedules(self) -> str:
        return self.fixed("K_SCHEDULES")

    @property
    def schedule_due(self) -> str:
        return self.fixed("K_SCHEDULE_DUE")

    @property
    def schedule_last(self) -> str:
        return self.fixed("K_SCHEDULE_LAST")

    @property
    def events_channel(self) -> str:
        return self.fixed("CH_EVENTS")

    @property
    def cancel_channel(self) -> str:
        return self.fixed("CH_CANCEL")

    def finished(self, status: str) -> str:
        """The zset of jobs that ended in ``status`` (completed, failed, cancelled)."""
        return self.prefix + status

    def job(self, job_id: str) -> str:
        return self.prefix + JOB + job_id

    def events(self, job_id: str) -> str:
        return self.prefix + EVENTS + job_id

    def worker(self, worker_id: str) -> str:
        return self.prefix + WORKER + worker_id

    def rate(self, name: str) -> str:
        return self.prefix + RATE + name

    def flow(self, flow_id: str, version: int) -> str:
        return f"{self.prefix}{FLOW}{flow_id}:v{version}"

    def conversation(self, flow_id: str, conversation: str) -> str:
        return f"{self.prefix}{CONV}{flow_id}/{conversation}"

    def conversation_bytes(self, flow_id: str, conversation: str) -> str:
        return f"{self.prefix}{CONV_BYTES}{flow_id}/{conversation}"

    def conversations(self, flow_id: str) -> str:
        return self.prefix + CONVS + flow_id


_SUFFIX = {const: suffix for const, suffix, _ in FIXED}
assert all(_SUFFIX[f"K_{s.upper()}"] == s for s in ("completed", "failed", "cancelled"))


def lua_prelude() -> str:
    """Lua locals naming every key, for the top of each script (prefix in KEYS[1])."""
    lines = ["local P = KEYS[1]"]
    lines += [f"local {const} = P .. '{suffix}'" for const, suffix, _ in FIXED]
    lines += [
        f"local function job_key(id) return P .. '{JOB}' .. id end",
        f"local function events_key(id) return P .. '{EVENTS}' .. id end",
        f"local function worker_key(id) return P .. '{WORKER}' .. id end",
        f"local function flow_key(id, v) return P .. '{FLOW}' .. id .. ':v' .. v end",
        "local function finished_key(status) return P .. status end",
        f"local function rate_key(name) return P .. '{RATE}' .. name end",
        f"local function conv_key(flow, c) return P .. '{CONV}' .. flow .. '/' .. c end",
        f"local function conv_bytes_key(flow, c) return P .. '{CONV_BYTES}' .. flow .. '/' .. c"
        " end",
        f"local function convs_key(flow) return P .. '{CONVS}' .. flow end",
        "local JOB_FIELDS = {" + ", ".join(f"'{f}'" for f in JOB_FIELDS) + "}",
        *(f"local F_{f.upper()} = {i}" for i, f in enumerate(JOB_FIELDS, 1)),
        f"local MARKER_MEMBER = '{MARKER_MEMBER}'",
        f"local KEEPER, KEEPER_FIELD = \"{KEEPER}\", '{KEEPER_FIELD}'",
    ]
    return "\n".join(lines) + "\n"
