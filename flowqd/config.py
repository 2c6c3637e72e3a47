"""Configuration: TOML file, environment and flags, turned into frozen attrs records.

Precedence is flag > environment > file > default. Every problem names where
the value came from (file or variable), the key path and what was expected.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs

from flowqd.errors import ConfigError

Role = Literal["main", "worker", "all"]
ROLES: tuple[Role, ...] = ("main", "worker", "all")


def _check(test: Any, wanted: str) -> Any:
    def validator(_instance: object, _attribute: object, value: Any) -> None:
        if value is not None and not test(value):
            raise ValueError(f"expected {wanted}, got {_show(value)}")

    return validator


_positive = _check(lambda x: x > 0, "a value greater than 0")
_non_negative = _check(lambda x: x >= 0, "a value of 0 or more")
_port = _check(lambda x: 0 <= x <= 65535, "a port number from 0 to 65535")
_queue_name = _check(
    lambda x: bool(re.fullmatch(r"[A-Za-z0-9_.:-]+", x)),
    "letters, digits and _ . : - only (it becomes part of Redis key names)",
)


def _is_host_port(entry: str) -> bool:
    host, sep, port = entry.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) <= 65535)


_host_ports = _check(
    lambda x: all(_is_host_port(e) for e in x),
    'a list of host:port entries, e.g. ["10.0.0.5:26379"]',
)


_key_entry = _check(
    lambda x: all(re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}:[0-9a-f]{64}(:admin)?", k) for k in x),
    "entries NAME:SHA256HEX or NAME:SHA256HEX:admin, as printed by `flowqd keys add NAME`",
)


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=3000, validator=_port)
    prediction_timeout_s: float = attrs.field(default=60.0, validator=_positive)
    max_body_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_positive)
    cancel_on_disconnect: bool = False
    heartbeat_s: float = attrs.field(default=30.0, validator=_positive)
    broker_timeout_s: float = attrs.field(default=1.0, validator=_positive)
    processes: int = attrs.field(default=1, validator=[_positive, attrs.validators.le(64)])
    # Slow or silent clients: a request's headers, then its body, must arrive in time.
    header_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    body_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    # Open connections per API process; the next one is refused with 503.
    max_connections: int = attrs.field(default=4096, validator=_positive)
    # JSON bodies nested deeper than this are refused with 400.
    max_json_depth: int = attrs.field(default=64, validator=[_positive, attrs.validators.le(200)])
    # Host header values accepted; empty: the listen address (and localhost names
    # when it is a loopback address). "*" accepts any.
    allowed_hosts: list[str] = attrs.Factory(list)
    # Origins (scheme://host[:port]) whose pages may send writes; "*" allows any.
    allowed_origins: list[str] = attrs.Factory(list)


@attrs.frozen
class AuthConfig:
    keys: list[str] = attrs.field(factory=list, validator=_key_entry)
    keys_file: str | None = None
    allow_anonymous: bool = False


def _flow_limits(_instance: object, _attribute: object, value: dict[str, int]) -> None:
    bad = {flow: n for flow, n in value.items() if n < 0}
    if bad:
        raise ValueError(f"expected limits of 0 (none) or more per minute, got {_show(bad)}")


@attrs.frozen
class LimitsConfig:
    per_minute: int = attrs.field(default=0, validator=_non_negative)
    burst: int = attrs.field(default=20, validator=_positive)
    flows: dict[str, int] = attrs.field(factory=dict, validator=_flow_limits)
    # Sizes as encoded JSON; a job past one fails with a message naming the key.
    max_result_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    max_node_output_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    max_event_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    # Body of one answer to an http or llm node.
    max_response_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)

    def for_flow(self, flow_id: str) -> int:
        """Requests a minute allowed for ``flow_id``; 0 means no limit."""
        return self.flows.get(flow_id, self.per_minute)


def parse_pool(entry: str) -> tuple[str, int]:
    """``NAME`` or ``NAME:WEIGHT`` (a ``worker.queues`` entry) -> (name, weight)."""
    name, sep, weight = entry.rpartition(":")
    if not sep or not weight.isdigit():
        return entry, 1
    return name, int(weight)


def _is_pool(entry: str) -> bool:
    name, weight = parse_pool(entry)
    return bool(re.fullmatch(r"[A-Za-z0-9_.:-]+", name)) and 1 <= weight <= 1000


def _pools(_instance: object, _attribute: object, value: list[str]) -> None:
    bad = [e for e in value if not _is_pool(e)]
    if bad:
        raise ValueError(
            f"expected queue names, each optionally :WEIGHT (1 to 1000), such as "
            f'["flowqd-queue:3", "bulk:1"], got {_show(bad)}'
        )
    names = [parse_pool(e)[0] for e in value]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"expected each queue once, got {', '.join(twice)} more than once")


@attrs.frozen
class WorkerConfig:
    concurrency: int = attrs.field(default=10000, validator=_positive)
    health_host: str = "127.0.0.1"
    health_port: int = attrs.field(default=5566, validator=_port)
    lock_ttl_s: float = attrs.field(default=30.0, validator=_positive)
    stalled_interval_s: float = attrs.field(default=30.0, validator=_positive)
    shutdown_grace_s: float = attrs.field(default=30.0, validator=_non_negative)
    job_timeout_s: float = attrs.field(default=300.0, validator=_positive)
    # Queues this worker takes jobs from, each NAME or NAME:WEIGHT; empty: the
    # default queue (queue.name). Weights split concurrency into one pool per queue.
    queues: list[str] = attrs.field(factory=list, validator=_pools)


@attrs.frozen
class QueueConfig:
    broker: Literal["auto", "memory", "redis"] = "auto"
    name: str = attrs.field(default="flowqd-queue", validator=_queue_name)
    event_stream_max_len: int = attrs.field(default=10000, validator=_positive)
    remove_on_age_s: float = attrs.field(default=86400.0, validator=_positive)
    remove_on_count: int = attrs.field(default=10000, validator=_non_negative)
    max_stalled: int = attrs.field(default=1, validator=_non_negative)
    max_attempts: int = attrs.field(default=1, validator=_positive)
    backoff_s: float = attrs.field(default=1.0, validator=_non_negative)
    # Enqueue requests a minute into this queue, shared by every main (0: no limit).
    per_minute: int = attrs.field(default=0, validator=_non_negative)


# The [queue] keys a [queues.NAME] table may set; the others (broker, name) are
# the deployment's, not one queue's.
QUEUE_SETTINGS = (
    "event_stream_max_len",
    "remove_on_age_s",
    "remove_on_count",
    "max_stalled",
    "max_attempts",
    "backoff_s",
    "per_minute",
)


@attrs.frozen
class QueueSettings:
    """One ``[queues.NAME]`` table: a key left out takes its ``[queue]`` value."""

    event_stream_max_len: int | None = attrs.field(default=None, validator=_positive)
    remove_on_age_s: float | None = attrs.field(default=None, validator=_positive)
    remove_on_count: int | None = attrs.field(default=None, validator=_non_negative)
    max_stalled: int | None = attrs.field(default=None, validator=_non_negative)
    max_attempts: int | None = attrs.field(default=None, validator=_positive)
    backoff_s: float | None = attrs.field(default=None, validator=_non_negative)
    per_minute: int | None = attrs.field(default=None, validator=_non_negative)


assert tuple(f.name for f in attrs.fields(QueueSettings)) == QUEUE_SETTINGS


@attrs.frozen
class MemoryConfig:
    """Conversation memory (``Conversations``): turns per session, kept in the broker."""

    enabled: bool = True
    max_turns: int = attrs.field(default=50, validator=_positive)
    # Encoded turn data per conversation; a turn alone larger than this is cut to fit.
    max_bytes: int = attrs.field(
        default=65536, validator=_check(lambda x: x >= 1024, "a value of 1024 or more")
    )
    ttl_s: float = attrs.field(default=7 * 86400.0, validator=_positive)
    # Conversations kept per flow (every API key's together); the least recently
    # active beyond this are forgotten when another one is written.
    max_sessions: int = attrs.field(default=10000, validator=_positive)


@attrs.frozen
class RedisConfig:
    url: str | None = None
    host: str = "localhost"
    port: int = attrs.field(default=6379, validator=_port)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    db: int = attrs.field(default=0, validator=_non_negative)
    tls: bool = False
    tls_cert: str | None = None
    tls_key: str | None = attrs.field(default=None, repr=False)
    tls_ca: str | None = None
    keep_alive_ms: int | None = None
    connect_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    command_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    max_connections: int = attrs.field(default=32, validator=_positive)
    # Sentinel: the primary of ``sentinel_master`` is found through these
    # sentinels (host:port) and followed across failovers; url/host/port unused.
    sentinels: list[str] = attrs.field(factory=list, validator=_host_ports)
    sentinel_master: str | None = None
    # The sentinels' own login and TLS (their ACL is often not the data nodes').
    sentinel_username: str | None = None
    sentinel_password: str | None = attrs.field(default=None, repr=False)
    sentinel_tls: bool = False
    # Redis Cluster: commands go to their slot's primary; the seeds are url (or
    # host:port) and ``nodes``.
    cluster: bool = False
    nodes: list[str] = attrs.field(factory=list, validator=_host_ports)
    # Replicas that must acknowledge each enqueue and flush (WAIT); 0: none.
    wait_replicas: int = attrs.field(default=0, validator=[_non_negative, attrs.validators.le(16)])
    wait_timeout_s: float = attrs.field(default=0.5, validator=_positive)


@attrs.frozen
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    access: bool = True  # one flowqd.access line per HTTP request on main


@attrs.frozen
class DashboardConfig:
    enabled: bool = False


@attrs.frozen
class PluginsConfig:
    modules: list[str] = attrs.Factory(list)
    paths: list[str] = attrs.Factory(list)
    disable: list[str] = attrs.Factory(list)


@attrs.frozen
class FlowsConfig:
    paths: list[str] = attrs.Factory(list)
    max_nodes: int = attrs.field(default=1000, validator=_positive)


@attrs.frozen
class SchedulesConfig:
    # Run the scheduler on this main process (every main may: ticks are
    # claimed atomically in the broker, so each fires one job however many run).
    enabled: bool = True
    # A schedule with missed = "skip" fires a tick no later than this after its time.
    grace_s: float = attrs.field(default=60.0, validator=_non_negative)


def _egress_rules(_instance: object, _attribute: object, value: list[str]) -> None:
    # The rule syntax lives with the policy; imported late because the policy
    # module reads this one.
    from flowqd.executors._egress import parse_rule

    for index, entry in enumerate(value):
        try:
            parse_rule(entry)
        except ValueError as exc:
            raise ValueError(f"{exc} (entry {index})") from None


@attrs.frozen
class EgressConfig:
    # Hosts, addresses or networks (CIDR) the http and llm nodes may reach;
    # empty: any that deny and private do not refuse.
    allow: list[str] = attrs.field(factory=list, validator=lambda *a: _egress_rules(*a))
    # Hosts, addresses or networks they may never reach (checked first).
    deny: list[str] = attrs.field(factory=list, validator=lambda *a: _egress_rules(*a))
    # Loopback, private and link-local addresses: "auto" refuses them when API
    # keys are configured, "deny" always, "allow" never. An allow entry wins.
    private: Literal["auto", "allow", "deny"] = "auto"


@attrs.frozen
class SecurityConfig:
    secret_key: str | None = attrs.field(default=None, repr=False)
    secret_key_file: str | None = None


@attrs.frozen
class Config:
    role: Role = "all"
    server: ServerConfig = attrs.Factory(ServerConfig)
    worker: WorkerConfig = attrs.Factory(WorkerConfig)
    queue: QueueConfig = attrs.Factory(QueueConfig)
    redis: RedisConfig = attrs.Factory(RedisConfig)
    log: LogConfig = attrs.Factory(LogConfig)
    dashboard: DashboardConfig = attrs.Factory(DashboardConfig)
    plugins: PluginsConfig = attrs.Factory(PluginsConfig)
    flows: FlowsConfig = attrs.Factory(FlowsConfig)
    schedules: SchedulesConfig = attrs.Factory(SchedulesConfig)
    security: SecurityConfig = attrs.Factory(SecurityConfig)
    auth: AuthConfig = attrs.Factory(AuthConfig)
    limits: LimitsConfig = attrs.Factory(LimitsConfig)
    egress: EgressConfig = attrs.Factory(EgressConfig)
    memory: MemoryConfig = attrs.Factory(MemoryConfig)
    # The queues besides the default one ([queue], QUEUE_NAME), by name.
    queues: dict[str, QueueSettings] = attrs.Factory(dict)
    # Where the values came from; not configuration itself.
    source: str = attrs.field(default="defaults", eq=False)
    redis_configured: bool = attrs.field(default=False, eq=False)

    @property
    def broker(self) -> Literal["memory", "redis"]:
        """The broker this process uses, with ``auto`` resolved."""
        if self.queue.broker != "auto":
            return self.queue.broker
        if self.role == "all" and not self.redis_configured:
            return "memory"
        return "redis"

    @property
    def queue_names(self) -> tuple[str, ...]:
        """Every queue of the deployment, the default one (``queue.name``) first."""
        return (self.queue.name, *self.queues)

    def queue_config(self, name: str) -> QueueConfig:
        """The settings of queue ``name``: ``[queue]``'s, with its ``[queues.NAME]`` keys."""
        if name == self.queue.name:
            return self.queue
        settings = self.queues[name]
        changes = {k: v for k in QUEUE_SETTINGS if (v := getattr(settings, k)) is not None}
        return attrs.evolve(self.queue, name=name, **changes)

    def worker_pools(self) -> list[tuple[str, int]]:
        """(queue, weight) for each pool this worker runs: ``worker.queues``, else
        the default queue alone."""
        return [parse_pool(e) for e in self.worker.queues] or [(self.queue.name, 1)]


SECTIONS: dict[str, type[Any]] = {
    name: tp for name, tp in typing.get_type_hints(Config).items() if attrs.has(tp)
}
SECRET_KEYS = {
    ("redis", "password"),
    ("redis", "tls_key"),
    ("redis", "sentinel_password"),
    ("security", "secret_key"),
}
# Flowise's queue-mode variables, honoured unchanged.
FLOWISE_ENV: dict[str, tuple[str, str]] = {
    "WORKER_CONCURRENCY": ("worker", "concurrency"),
    "QUEUE_NAME": ("queue", "name"),
    "QUEUE_REDIS_EVENT_STREAM_MAX_LEN": ("queue", "event_stream_max_len"),
    "REMOVE_ON_AGE": ("queue", "remove_on_age_s"),
    "REMOVE_ON_COUNT": ("queue", "remove_on_count"),
    "REDIS_URL": ("redis", "url"),
    "REDIS_HOST": ("redis", "host"),
    "REDIS_PORT": ("redis", "port"),
    "REDIS_USERNAME": ("redis", "username"),
    "REDIS_PASSWORD": ("redis", "password"),
    "REDIS_TLS": ("redis", "tls"),
    "REDIS_CERT": ("redis", "tls_cert"),
    "REDIS_KEY": ("redis", "tls_key"),
    "REDIS_CA": ("redis", "tls_ca"),
    "REDIS_KEEP_ALIVE": ("redis", "keep_alive_ms"),
    "ENABLE_BULLMQ_DASHBOARD": ("dashboard", "enabled"),
    "PORT": ("server", "port"),
    "WORKER_PORT": ("worker", "health_port"),
    # Named in the design; shorter than FLOWQD_SECURITY__SECRET_KEY, which also works.
    "FLOWQD_SECRET_KEY": ("security", "secret_key"),
}
_MODE_TO_BROKER = {"main": "memory", "queue": "redis"}
SEARCH_PATH = ("./flowqd.toml", "/etc/flowqd/flowqd.toml")

_converter = cattrs.Converter(forbid_extra_keys=True)


def _strict_scalar(value: Any, cls: type[Any]) -> Any:
    # cattrs would happily turn "5" into 5 or 1 into True; a TOML file that
    # says a string where a number belongs is a mistake worth reporting.
    if cls is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, cls) or (cls is int and isinstance(value, bool)):
        raise TypeError(f"expected {_describe(cls)}, got {_show(value)}")
    return value


for _scalar in (str, int, float, bool):
    _converter.register_structure_hook(_scalar, _strict_scalar)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        item = _describe(get_args(tp)[0]).removeprefix("a ").removeprefix("an ")
        return f"a list of {item}s"
    if origin is dict:
        return f"a table of {_describe(get_args(tp)[1]).removeprefix('a ').removeprefix('an ')}s"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_types(section: str) -> dict[str, Any]:
    hints = typing.get_type_hints(SECTIONS[section])
    return {f.name: hints[f.name] for f in attrs.fields(SECTIONS[section])}


def unknown_key(path: tuple[str, ...], spell: Callable[[str], str] = str) -> str:
    """Why ``path`` is no key of flowqd.toml, worded the same for the file, the
    environment and ``--set``: the keys that do exist there, and the nearest one
    (spelled by ``spell``, e.g. as an environment variable) when it looks like a typo."""
    dotted = ".".join(path)
    if path[0] in SECTIONS:
        keys = sorted(_field_types(path[0]))
        known = f"known keys in [{path[0]}]: " + ", ".join(keys)
        guess = _nearest(dotted, [f"{path[0]}.{k}" for k in keys])
    else:
        known = "known top-level keys: role, " + ", ".join(f"[{s}]" for s in SECTIONS)
        if len(path) == 1:  # role or a table
            guess = _nearest(dotted, ["role", *SECTIONS])
            if guess in SECTIONS:
                guess, spell = f"[{guess}]", str
        else:
            guess = _nearest(dotted, ["role", *_all_keys()])
    hint = f"; did you mean {spell(guess)}?" if guess else ""
    return f"{dotted}: unknown key; {known}{hint}"


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s in SECTIONS for k in _field_types(s)]


def _nearest(word: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.75)
    return match[0] if match else None


def _env_name(dotted: str) -> str:
    """``worker.concurrency`` with its variable: ``... (FLOWQD_WORKER__CONCURRENCY)``."""
    return f"{dotted} (FLOWQD_{dotted.upper().replace('.', '__')})"


def _parse_env_value(raw: str, tp: Any) -> Any:
    """Turn an environment string into the value the field's type wants."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if raw == "":
            return None
        return _parse_env_value(raw, inner[0])
    if origin in (list, dict) and raw.lstrip()[:1] in ("[", "{"):
        # TOML's own spelling also works: FLOWQD_PLUGINS__PATHS='["/a", "/b"]'
        try:
            return tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(
                f"expected a TOML {'array' if origin is list else 'table'}, got {raw!r} ({exc})"
            ) from None
    if origin is list:
        item = get_args(tp)[0]
        return [_parse_env_value(part.strip(), item) for part in raw.split(",") if part.strip()]
    if origin is dict:
        # "a=1,b=2", the environment's spelling of a TOML table
        value_type = get_args(tp)[1]
        out = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            key, sep, text = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected NAME=VALUE pairs separated by commas, got {raw!r}")
            out[key.strip()] = _parse_env_value(text.strip(), value_type)
        return out
    if tp is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    return raw


class _Layers:
    """Raw values per key path, each remembering where it came from."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], Any] = {}
        self.sources: dict[tuple[str, ...], str] = {}
        self.problems: list[str] = []
        # Queues declared by a [queues.NAME] table (even an empty one), and where.
        self.queue_sources: dict[str, str] = {}

    def set(self, path: tuple[str, ...], value: Any, source: str) -> None:
        self.values[path] = value
        self.sources[path] = source

    def add_file(self, path: Path) -> None:
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            self.problems.append(f"{path}: cannot read the config file: {exc.strerror}")
            return
        except tomllib.TOMLDecodeError as exc:
            self.problems.append(f"{path}: not valid TOML: {exc}")
            return
        for key, value in data.items():
            if key == "role":
                self.set(("role",), value, str(path))
            elif key == "queues":
                self._add_queues(path, value)
            elif key in SECTIONS:
                if not isinstance(value, dict):
                    self.problems.append(
                        f"{path}: {key}: expected a table [{key}], got {_show(value)}"
                    )
                    continue
                known = _field_types(key)
                for sub, subvalue in value.items():
                    if sub not in known:
                        self.problems.append(f"{path}: {unknown_key((key, sub))}")
                    else:
                        self.set((key, sub), subvalue, str(path))
            else:
                self.problems.append(f"{path}: {unknown_key((key,))}")

    def _add_queues(self, path: Path, value: Any) -> None:
        if not isinstance(value, dict):
            self.problems.append(
                f"{path}: queues: expected one table per queue, [queues.NAME], got {_show(value)}"
            )
            return
        for name, table in value.items():
            if not isinstance(table, dict):
                self.problems.append(
                    f"{path}: queues.{name}: expected a table [queues.{name}] of queue "
                    f"settings ({', '.join(QUEUE_SETTINGS)}), got {_show(table)}"
                )
                continue
            self.declare_queue(name, str(path))
            for sub, subvalue in table.items():
                if sub not in QUEUE_SETTINGS:
                    self.problems.append(f"{path}: {_unknown_queue_key(name, sub)}")
                else:
                    self.set(("queues", name, sub), subvalue, str(path))

    def declare_queue(self, name: str, source: str) -> None:
        self.queue_sources.setdefault(name, source)

    def add_env_value(self, name: str, path: tuple[str, ...], raw: str) -> None:
        self.add_string(f"environment variable {name}", path, raw)

    def add_string(self, source: str, path: tuple[str, ...], raw: str) -> None:
        if path == ("role",):
            tp: Any = Role
        elif path[0] == "queues":
            tp = _QUEUE_SETTING_TYPES[path[2]]
            self.declare_queue(path[1], source)
        else:
            tp = _field_types(path[0])[path[1]]
        try:
            value = _parse_env_value(raw, tp)
        except ValueError as exc:
            self.problems.append(f"{source}: {'.'.join(path)}: {exc}")
            return
        self.set(path, value, source)

    def add_env(self, environ: Mapping[str, str]) -> None:
        # Flowise's names first, so the FLOWQD_ spelling of a key wins over them.
        mode = environ.get("MODE")
        if mode is not None:
            broker = _MODE_TO_BROKER.get(mode.strip().lower())
            if broker is None:
                self.problems.append(
                    f"environment variable MODE: queue.broker: expected 'main' or 'queue', "
                    f"got {mode!r}"
                )
            else:
                self.set(("queue", "broker"), broker, "environment variable MODE")
        for name, path in FLOWISE_ENV.items():
            if name in environ:
                self.add_env_value(name, path, environ[name])
        for name, raw in sorted(environ.items()):
            if not name.startswith("FLOWQD_") or name in ("FLOWQD_CONFIG", "FLOWQD_SECRET_KEY"):
                continue
            rest = name[len("FLOWQD_") :].lower()
            if rest == "role":
                self.add_env_value(name, ("role",), raw)
                continue
            section, sep, key = rest.partition("__")
            if section == "queues":
                queue, sep, sub = key.rpartition("__")
                if queue and sub in QUEUE_SETTINGS:
                    self.add_env_value(name, ("queues", queue, sub), raw)
                else:
                    self.problems.append(
                        f"environment variable {name}: expected FLOWQD_QUEUES__<QUEUE>__<KEY> "
                        f"with KEY one of {', '.join(s.upper() for s in QUEUE_SETTINGS)} "
                        "(the queue's name in lower case)"
                    )
                continue
            if not sep:
                bare = {key.partition(".")[2]: key for key in _all_keys()} | {"role": "role"}
                near = _nearest(rest, list(bare))
                guess = None if near is None else bare[near]
                self.problems.append(
                    f"environment variable {name}: unknown setting; use FLOWQD_ROLE or "
                    "FLOWQD_<SECTION>__<KEY> naming a key of flowqd.toml"
                    + (f"; did you mean {_env_name(guess)}?" if guess else "")
                )
            elif section not in SECTIONS or key not in _field_types(section):
                self.problems.append(
                    f"environment variable {name}: {unknown_key((section, key), _env_name)}"
                )
            else:
                self.add_env_value(name, (section, key), raw)

    def add_overrides(self, overrides: Sequence[str]) -> None:
        for item in overrides:
            dotted, sep, raw = item.partition("=")
            section, _, key = dotted.strip().partition(".")
            path = (section, key) if key else (section,)
            if section == "queues" and sep:
                queue, _, sub = key.rpartition(".")
                if queue and sub in QUEUE_SETTINGS:
                    self.add_string(f"--set {dotted}", ("queues", queue, sub), raw)
                else:
                    self.problems.append(f"--set {dotted}: {_unknown_queue_key(queue, sub)}")
                continue
            if not sep:
                self.problems.append(
                    f"--set {item}: expected KEY=VALUE with KEY a key of flowqd.toml, "
                    "such as worker.concurrency=100"
                )
            elif path != ("role",) and (
                len(path) != 2 or section not in SECTIONS or key not in _field_types(section)
            ):
                self.problems.append(f"--set {dotted}: {unknown_key(path)}")
            else:
                self.add_string(f"--set {dotted}", path, raw)

    def build(self) -> Config:
        tree: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        role: Any = "all"
        queues: dict[str, dict[str, Any]] = {name: {} for name in self.queue_sources}
        for path, raw in self.values.items():
            try:
                if path[0] == "queues":
                    _, name, key = path
                    field = attrs.fields_dict(QueueSettings)[key]
                    value = _converter.structure(raw, _QUEUE_SETTING_TYPES[key])
                    if field.validator is not None:
                        field.validator(None, field, value)
                    queues[name][key] = value
                    continue
                if path == ("role",):
                    if raw not in ROLES:
                        raise ValueError(f"expected {_describe(Role)}, got {_show(raw)}")
                    role = raw
                    continue
                section, key = path
                field = attrs.fields_dict(SECTIONS[section])[key]
                value = _converter.structure(raw, _field_types(section)[key])
                if field.validator is not None:
                    field.validator(None, field, value)
                tree[section][key] = value
            except Exception as exc:
                where = f"{self.sources[path]}: {'.'.join(path)}"
                self.problems.append(f"{where}: {_explain(exc, path, raw)}")
        default = tree["queue"].get("name", attrs.fields(QueueConfig).name.default)
        for name, source in self.queue_sources.items():
            if not re.fullmatch(r"[A-Za-z0-9_.:-]+", name):
                self.problems.append(
                    f"{source}: queues.{name}: a queue name takes letters, digits and _ . : - "
                    "only (it becomes part of Redis key names)"
                )
            elif name == default:
                self.problems.append(
                    f"{source}: queues.{name}: {name!r} is the default queue (queue.name); "
                    "set its keys in [queue] instead"
                )
        if self.problems:
            raise ConfigError(self.problems)
        sections = {s: SECTIONS[s](**values) for s, values in tree.items()}
        settings = {name: QueueSettings(**values) for name, values in queues.items()}
        return Config(role=role, queues=settings, **sections)


_QUEUE_SETTING_TYPES = typing.get_type_hints(QueueSettings)


def _unknown_queue_key(queue: str, key: str) -> str:
    return (
        f"queues.{queue}.{key}: unknown key; known keys in [queues.NAME]: "
        f"{', '.join(QUEUE_SETTINGS)} (the others are the deployment's, in [queue])"
    )


def _explain(exc: Exception, path: tuple[str, ...], raw: Any) -> str:
    if isinstance(exc, (TypeError, ValueError)) and str(exc).startswith("expected "):
        return str(exc)
    if path[0] == "queues":
        tp = _QUEUE_SETTING_TYPES[path[2]]
    else:
        tp = Role if path == ("role",) else _field_types(path[0])[path[1]]
    return f"expected {_describe(tp)}, got {_show(raw)}"


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: ``--config``, ``$FLOWQD_CONFIG``, ``./flowqd.toml``, ``/etc/flowqd``."""
    if explicit:
        return Path(explicit)
    if environ.get("FLOWQD_CONFIG"):
        return Path(environ["FLOWQD_CONFIG"])
    for candidate in SEARCH_PATH:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def load_config(
    *,
    config_file: str | None = None,
    role: str | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration, or raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    layers = _Layers()
    path = find_config_file(config_file, environ)
    if path is not None:
        if not path.is_file():
            raise ConfigError([f"{path}: config file not found; fix --config or FLOWQD_CONFIG"])
        layers.add_file(path)
    layers.add_env(environ)
    layers.add_overrides(overrides)
    if role is not None:
        layers.set(("role",), role, "--role")
    config = layers.build()  # raises with every problem found on the way
    redis_configured = any(p[0] == "redis" for p in layers.values)
    config = attrs.evolve(
        config,
        source=str(path) if path else "defaults and environment",
        redis_configured=redis_configured,
    )
    _check_role(config, layers.sources.get(("queue", "broker")))
    _check_topology(config.redis)
    _check_pools(config, layers.sources.get(("worker", "queues"), "defaults"))
    if config.redis.wait_replicas and config.redis.wait_timeout_s >= config.server.broker_timeout_s:
        raise ConfigError(
            [
                f"redis.wait_timeout_s ({config.redis.wait_timeout_s:g}) must be shorter than "
                f"server.broker_timeout_s ({config.server.broker_timeout_s:g}): otherwise an "
                "enqueue the replicas do not acknowledge times out instead of saying so"
            ]
        )
    return config


def _check_pools(config: Config, source: str) -> None:
    pools = config.worker_pools()
    if config.worker.concurrency < len(pools):
        raise ConfigError(
            [
                f"worker.concurrency = {config.worker.concurrency} is fewer than the "
                f"{len(pools)} queues of worker.queues ({source}): each queue's pool needs "
                "a job slot; raise worker.concurrency"
            ]
        )
    unknown = [n for n, _ in config.worker_pools() if n not in config.queue_names]
    if unknown:
        raise ConfigError(
            [
                f"{source}: worker.queues: {', '.join(map(repr, unknown))}: not "
                f"{'a configured queue' if len(unknown) == 1 else 'configured queues'}"
                f"; configured: {', '.join(config.queue_names)}. Declare one with a "
                f"[queues.{unknown[0]}] table in flowqd.toml (or FLOWQD_QUEUES__"
                f"{unknown[0].upper()}__MAX_ATTEMPTS=1 and the like)"
            ]
        )


def _check_topology(redis: RedisConfig) -> None:
    problems = []
    if redis.sentinels and not redis.sentinel_master:
        problems.append(
            "redis.sentinels is set but redis.sentinel_master is not: name the master the "
            "sentinels monitor (the name in their `sentinel monitor NAME ...` line)"
        )
    if redis.sentinel_master and not redis.sentinels:
        problems.append(
            "redis.sentinel_master is set but redis.sentinels is empty: list the sentinels "
            'as host:port, e.g. sentinels = ["10.0.0.5:26379", "10.0.0.6:26379"]'
        )
    if redis.cluster and redis.sentinels:
        problems.append(
            "redis.cluster and redis.sentinels are both set: a Redis Cluster fails over by "
            "itself; keep one of them"
        )
    if redis.cluster and redis.db:
        problems.append(
            f"redis.db = {redis.db} with redis.cluster: Redis Cluster has database 0 only"
        )
    if problems:
        raise ConfigError(problems)


def _check_role(config: Config, broker_source: str | None) -> None:
    if config.server.processes > 1 and config.broker == "memory":
        raise ConfigError(
            [
                f"server.processes = {config.server.processes} needs Redis: the embedded "
                "broker lives in one process; set REDIS_URL (or redis.url) or use "
                "server.processes = 1"
            ]
        )
    set_redis = (
        "set REDIS_URL (or redis.url in flowqd.toml), e.g. REDIS_URL=redis://127.0.0.1:6379/0"
    )
    if config.broker == "redis" and not config.redis_configured:
        # Never fall back to localhost:6379 unasked: a forgotten REDIS_URL would
        # otherwise look like a working setup that loses everything on restart.
        if config.queue.broker == "auto":
            why, other = f"role {config.role!r} needs Redis", "--role all"
        elif broker_source == "environment variable MODE":
            why, other = "MODE=queue selects the Redis broker", "--role all without MODE"
        else:
            why = f"queue.broker = 'redis' ({broker_source}) selects the Redis broker"
            other = "--role all with queue.broker 'auto'"
        raise ConfigError(
            [
                f"{why}, but no Redis is configured: {set_redis}; only {other} runs on the "
                "embedded broker (one process, nothing durable)"
            ]
        )
    if config.role != "all" and config.broker == "memory":
        raise ConfigError(
            [
                f"role {config.role!r} needs Redis, but queue.broker is 'memory' "
                f"({broker_source}): set queue.broker = 'redis' (MODE=queue) and REDIS_URL or "
                "redis.url; only --role all can run with the embedded broker"
            ]
        )


def as_toml_dict(config: Config, *, mask_secrets: bool = True) -> dict[str, Any]:
    """The effective configuration as plain data, secrets replaced by ``***``."""
    out: dict[str, Any] = {"role": config.role}
    for section in SECTIONS:
        values = attrs.asdict(getattr(config, section))
        for key in values:
            if mask_secrets and (section, key) in SECRET_KEYS and values[key] is not None:
                values[key] = "***"
        if section == "redis" and mask_secrets and values.get("url"):
            values["url"] = mask_url(values["url"])
        out[section] = values
    if config.queues:
        out["queues"] = {
            name: {k: v for k, v in attrs.asdict(settings).items() if v is not None}
            for name, settings in config.queues.items()
        }
    return out


def mask_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
