"""A small Prometheus text-format registry: counters, gauges and histograms.

Enough for flowqd's own figures without a dependency; values live in plain
dicts because everything runs on one trio thread.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import TypeVar

_LabelKey = tuple[tuple[str, str], ...]


def _labels(key: _LabelKey, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in key]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[_LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def samples(self) -> Iterable[str]:
        for key, value in self.values.items():
            yield f"{self.name}{_labels(key)} {value:g}"


class Gauge(Counter):
    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help)
        self.read = read

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def samples(self) -> Iterable[str]:
        if self.read is not None:
            yield f"{self.name} {self.read():g}"
        else:
            yield from super().samples()


class Histogram:
    kind = "histogram"
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.series: dict[_LabelKey, list[float]] = {}  # bucket counts, then sum, then count

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

    def samples(self) -> Iterable[str]:
        for key, series in self.series.items():
            running = 0.0
            for bound, count in zip(self.BUCKETS, series, strict=False):
                running += count
                le = f'le="{bound:g}"'
                yield f"{self.name}_bucket{_labels(key, le)} {running:g}"
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(key, inf)} {series[-1]:g}"
            yield f"{self.name}_sum{_labels(key)} {series[-2]:g}"
            yield f"{self.name}_count{_labels(key)} {series[-1]:g}"


Metric = Counter | Gauge | Histogram
M = TypeVar("M", Counter, Gauge, Histogram)


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def add(self, metric: M) -> M:
        self.metrics.append(metric)
        return metric

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self.metrics:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return ("\n".join(lines) + "\n").encode()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
