"""A small Prometheus text-format registry: counters, gauges and histograms.

Enough for flowqd's own figures without a dependency; values live in plain
dicts because everything runs on one trio thread, so the per-request update
is a dict operation and nothing more.

A registry can also show the figures of several processes as one
(``server.processes``): each process writes a ``snapshot()`` of its own, and
the one answering a scrape renders its live figures merged with the others'
snapshots (``render(others, process=...)``). How a metric is merged is its
``across``: summed (counters, histograms, most gauges), one series per
process (``process="N"``), or only the answering process's (figures every
process reads alike at scrape, such as the queue depth). flowqd/metrics_share.py
moves the snapshots between processes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

_LabelKey = tuple[tuple[str, str], ...]
Across = Literal["sum", "process", "local"]
# One process's figures, as JSON: {"process": "2", "metrics": {name: {"kind", "help",
# "across", "series": [[labels, value], ...]}}} where labels is a list of [name,
# value] pairs and value a number, or a histogram's bucket counts followed by its
# sum and count. Kind and help travel along: a process may have metrics the one
# answering has not (the parent's worker under --role all).
Snapshot = dict[str, Any]
_Value = float | list[float]


def _labels(key: _LabelKey, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in key]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    # Not {:g}: six digits would round a start time or a byte count.
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _add(into: dict[_LabelKey, _Value], key: _LabelKey, value: _Value) -> None:
    held = into.get(key)
    if held is None:
        into[key] = list(value) if isinstance(value, list) else value
    elif isinstance(held, list) and isinstance(value, list):
        into[key] = [a + b for a, b in zip(held, value, strict=True)]
    elif isinstance(held, float | int) and isinstance(value, float | int):
        into[key] = held + value


class Counter:
    """A total that only grows; ``read`` mirrors one kept elsewhere, read at scrape."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        help: str,
        read: Callable[[], float] | None = None,
        *,
        across: Across = "sum",
    ) -> None:
        self.name, self.help, self.read, self.across = name, help, read, across
        self.values: dict[_LabelKey, float] = {}
        # Carried over from the process this one replaced (metrics_share), so
        # a restarted API process does not make a sum go backwards.
        self.base: dict[_LabelKey, _Value] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def current(self) -> dict[_LabelKey, _Value]:
        """Every series' value now, including what was carried over."""
        out: dict[_LabelKey, _Value] = dict(self.base)
        live = {(): float(self.read())} if self.read is not None else self.values
        for key, value in live.items():
            _add(out, key, value)
        return out


class Gauge(Counter):
    kind = "gauge"


class Histogram:
    kind = "histogram"
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.across: Across = "sum"
        self.series: dict[_LabelKey, list[float]] = {}  # bucket counts, then sum, then count
        self.base: dict[_LabelKey, _Value] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [0.0] * (len(self.BUCKETS) + 2)
        index = bisect.bisect_left(self.BUCKETS, value)
        if index < len(self.BUCKETS):
            series[index] += 1
        series[-2] += value
        series[-1] += 1

    def current(self) -> dict[_LabelKey, _Value]:
        out: dict[_LabelKey, _Value] = dict(self.base)
        for key, series in self.series.items():
            _add(out, key, series)
        return out


Metric = Counter | Gauge | Histogram
M = TypeVar("M", Counter, Gauge, Histogram)


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        # Called before each snapshot or render: figures read at scrape (/proc).
        self.collectors: list[Callable[[], None]] = []

    def add(self, metric: M) -> M:
        """Register ``metric``; one already registered under its name is returned
        instead, so parts sharing a registry (``--role all``) share the figure."""
        held = self.metrics.get(metric.name)
        if held is None:
            self.metrics[metric.name] = metric
            return metric
        if type(held) is not type(metric):
            raise ValueError(
                f"metric {metric.name} is registered twice, as a {held.kind} and a "
                f"{metric.kind}: give one of them another name"
            )
        return held

    def snapshot(self, process: str) -> Snapshot:
        """This process's figures, for the process answering the next scrape."""
        for collect in self.collectors:
            collect()
        return {
            "process": process,
            "metrics": {
                name: {
                    "kind": metric.kind,
                    "help": metric.help,
                    "across": metric.across,
                    "series": [[list(key), value] for key, value in metric.current().items()],
                }
                for name, metric in self.metrics.items()
            },
        }

    def resume(self, snapshot: Snapshot) -> None:
        """Carry over the counters and histograms of the process this one replaced."""
        for name, entry in snapshot.get("metrics", {}).items():
            metric = self.metrics.get(name)
            if metric is None or metric.kind == "gauge":
                continue
            metric.base = {_key(labels): value for labels, value in entry.get("series", [])}

    def render(self, others: Sequence[Snapshot] = (), process: str | None = None) -> bytes:
        """The text format: this process's figures, merged with ``others`` (see the
        module docstring); ``process`` names this one in ``process="N"`` series."""
        for collect in self.collectors:
            collect()
        metrics = dict(self.metrics)
        for snapshot in others:
            for name, entry in snapshot.get("metrics", {}).items():
                if name not in metrics:
                    metrics[name] = _known_elsewhere(name, entry)
        lines: list[str] = []
        for metric in metrics.values():
            series = _merge(metric, others, process)
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(_samples(metric, series))
        return ("\n".join(lines) + "\n").encode()


def _known_elsewhere(name: str, entry: Mapping[str, Any]) -> Metric:
    """An empty metric of this process, to merge another process's series into."""
    kind, help = entry.get("kind"), str(entry.get("help", ""))
    if kind == "histogram":
        return Histogram(name, help)
    across: Across = entry.get("across", "sum")
    return (Gauge if kind == "gauge" else Counter)(name, help, across=across)


def _key(labels: Iterable[Sequence[str]]) -> _LabelKey:
    return tuple(sorted((str(k), str(v)) for k, v in labels))


def _merge(
    metric: Metric, others: Sequence[Snapshot], process: str | None
) -> dict[_LabelKey, _Value]:
    own = metric.current()
    if metric.across == "local" or not others:
        if metric.across == "process" and process is not None:
            return {_key([*key, ("process", process)]): v for key, v in own.items()}
        return own
    parts: list[tuple[str, Mapping[_LabelKey, _Value]]] = [(process or "1", own)]
    for snapshot in others:
        found = snapshot.get("metrics", {}).get(metric.name, {}).get("series", [])
        parts.append((str(snapshot.get("process", "?")), {_key(k): v for k, v in found}))
    out: dict[_LabelKey, _Value] = {}
    for number, series in parts:
        for key, value in series.items():
            if metric.across == "process":
                key = _key([*key, ("process", number)])
            _add(out, key, value)
    return out


def _samples(metric: Metric, series: Mapping[_LabelKey, _Value]) -> Iterable[str]:
    if metric.kind != "histogram":
        for key, value in series.items():
            if not isinstance(value, list):
                yield f"{metric.name}{_labels(key)} {_number(value)}"
        return
    for key, counts in series.items():
        if not isinstance(counts, list):
            continue
        running = 0.0
        for bound, count in zip(Histogram.BUCKETS, counts, strict=False):
            running += count
            le = f'le="{bound:g}"'
            yield f"{metric.name}_bucket{_labels(key, le)} {_number(running)}"
        inf = 'le="+Inf"'
        yield f"{metric.name}_bucket{_labels(key, inf)} {_number(counts[-1])}"
        yield f"{metric.name}_sum{_labels(key)} {_number(counts[-2])}"
        yield f"{metric.name}_count{_labels(key)} {_number(counts[-1])}"


# What QueueControl.statistics() reports, each figure a metric of its own
# (one name per figure on main and worker alike): key -> (name, kind, help).
BROKER_FIGURES: dict[str, tuple[str, str, str]] = {
    "open_connections": (
        "flowqd_redis_connections_open",
        "gauge",
        "Connections to Redis this process holds open: pooled (idle or in use) and dedicated.",
    ),
    "idle_connections": (
        "flowqd_redis_connections_idle",
        "gauge",
        "Pooled Redis connections open and idle.",
    ),
    "in_use_connections": (
        "flowqd_redis_connections_in_use",
        "gauge",
        "Pool slots held by a running Redis command now.",
    ),
    "dedicated_connections": (
        "flowqd_redis_connections_dedicated",
        "gauge",
        "Redis connections outside the pool: blocking claims and the event subscription.",
    ),
    "waiting_tasks": (
        "flowqd_redis_waiting_tasks",
        "gauge",
        "Commands waiting for a free Redis pool slot now (the pool is too small if this stays up).",
    ),
    "event_rings": (
        "flowqd_redis_doorbells_total",
        "counter",
        "Doorbell messages (jobs with new events) this process received from Redis.",
    ),
}


class BrokerFigures:
    """The broker's own figures (Redis connections and the like), read at scrape.

    The embedded broker reports none; its metrics then have no samples.
    """

    def __init__(self, registry: Registry) -> None:
        self.metrics: dict[str, Counter] = {}
        for key, (name, kind, help) in BROKER_FIGURES.items():
            cls = Gauge if kind == "gauge" else Counter
            self.metrics[key] = registry.add(cls(name, help))

    def record(self, statistics: Mapping[str, Any]) -> None:
        for key, value in statistics.items():
            metric = self.metrics.get(key)
            if metric is None or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                metric.set(value)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
