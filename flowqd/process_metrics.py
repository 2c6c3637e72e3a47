"""The standard ``process_*`` metrics and ``flowqd_build_info``, for every /metrics.

Read from /proc/self at scrape, as Prometheus' own client libraries do, so
they cost nothing between scrapes. Linux is the target; where /proc is not
there, what cannot be read is left out rather than shown as 0.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from pathlib import Path

import attrs

from flowqd._version import __version__
from flowqd.metrics import Counter, Gauge, Registry

PROC = Path("/proc")


@attrs.frozen
class _Stat:
    cpu_s: float
    virtual_bytes: float
    resident_bytes: float
    start_time_s: float | None


def _read_stat(proc: Path) -> _Stat | None:
    try:
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = (proc / "self" / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    boot = _boot_time(proc)
    return _Stat(
        cpu_s=(int(fields[11]) + int(fields[12])) / ticks,  # utime + stime
        virtual_bytes=float(fields[20]),
        resident_bytes=float(int(fields[21]) * os.sysconf("SC_PAGE_SIZE")),
        start_time_s=None if boot is None else boot + int(fields[19]) / ticks,
    )


def _boot_time(proc: Path) -> float | None:
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def add_process_metrics(registry: Registry, role: str, proc: Path = PROC) -> None:
    """Register ``process_*`` (one series per API process under ``server.processes``)
    and ``flowqd_build_info{version, python, role} 1``."""
    add = registry.add
    info = add(
        Gauge(
            "flowqd_build_info",
            "Always 1; the labels say which flowqd and Python this process runs, in which role.",
            across="local",
        )
    )
    info.set(1, version=__version__, python=platform.python_version(), role=role)
    cpu = add(
        Counter("process_cpu_seconds_total", "User and system CPU time spent.", across="process")
    )
    max_fds = add(
        Gauge("process_max_fds", "Maximum number of open file descriptors.", across="process")
    )
    stat = _read_stat(proc)
    if stat is None:
        # No /proc: CPU and the descriptor limit are all that can be read.
        def collect_portable() -> None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu.set(usage.ru_utime + usage.ru_stime)
            max_fds.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])

        registry.collectors.append(collect_portable)
        return
    virtual = add(
        Gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", across="process")
    )
    resident = add(
        Gauge("process_resident_memory_bytes", "Resident memory size in bytes.", across="process")
    )
    open_fds = add(Gauge("process_open_fds", "Number of open file descriptors.", across="process"))
    start = add(
        Gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            across="process",
        )
    )

    def collect() -> None:
        now = _read_stat(proc)
        if now is None:
            return
        cpu.set(now.cpu_s)
        virtual.set(now.virtual_bytes)
        resident.set(now.resident_bytes)
        if now.start_time_s is not None:
            start.set(now.start_time_s)
        with contextlib.suppress(OSError):
            open_fds.set(len(os.listdir(proc / "self" / "fd")))
        max_fds.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    registry.collectors.append(collect)
