"""One /metrics view across the API processes of one main (``server.processes``).

The kernel hands each connection to any of the processes on the port, so
each must answer a scrape with everyone's figures. Every process keeps its
own registry in memory (the per-request update stays a dict operation) and
writes a snapshot of it, as JSON, to a runtime directory the parent owns:
once a second, when it answers a scrape, and when it stops. The process
answering a scrape merges the others' latest snapshots into its live figures
(flowqd/metrics.py says how each metric merges).

Counters never go backwards: a process writes its snapshot before it
answers a scrape, so nothing shown is missing from its file, and a process
restarted in the same slot carries its predecessor's counters and histograms
over from that file. What a sibling did in its last second shows one scrape
later; a sibling killed with -9 loses at most that second.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import attrs
import orjson
import trio

from flowqd.logs import ThrottledLog
from flowqd.metrics import Registry, Snapshot

log = logging.getLogger("flowqd")
_throttled = ThrottledLog(log)

# Set in an extra API process's environment by its parent (not FLOWQD_*: those are settings).
DIR_ENV = "_FLOWQD_METRICS_DIR"
PROCESS_ENV = "_FLOWQD_API_PROCESS"
PUBLISH_EVERY_S = 1.0


@attrs.define(eq=False)
class MetricsShare:
    """This process's part of the shared view: ``process`` names its slot ("1" is the parent)."""

    directory: Path
    process: str
    registry: Registry

    @property
    def path(self) -> Path:
        return self.directory / f"{self.process}.json"

    def publish(self) -> None:
        data = orjson.dumps(self.registry.snapshot(self.process))
        staging = self.directory / f".{self.process}.tmp"
        staging.write_bytes(data)
        os.replace(staging, self.path)  # readers see the old file or the new one, never half

    def others(self) -> list[Snapshot]:
        found: list[Snapshot] = []
        for path in sorted(self.directory.glob("*.json")):
            if path == self.path:
                continue
            try:
                found.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # gone with its directory at shutdown
        return found

    def render(self) -> bytes:
        """Every process's figures; this one's written first (see the module docstring)."""
        _publish_quietly(self)
        return self.registry.render(self.others(), process=self.process)

    def resume(self) -> None:
        """Carry over the counters of the process that held this slot before."""
        try:
            previous = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        self.registry.resume(previous)


def child_env(share: MetricsShare | None, number: int) -> dict[str, str]:
    """What the parent puts in extra API process ``number``'s environment."""
    if share is None:
        return {}
    return {DIR_ENV: str(share.directory), PROCESS_ENV: str(number)}


def _runtime_dir(environ: Mapping[str, str]) -> str:
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    return runtime if runtime and os.path.isdir(runtime) else tempfile.gettempdir()


async def run_metrics_share(
    registry: Registry,
    refresh: Callable[[], Awaitable[None]],
    processes: int,
    *,
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[MetricsShare | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish this process's figures until cancelled; ``started()`` with its share.

    The parent (``processes`` > 1) makes the directory and removes it when
    cancelled, after its children have stopped; an extra API process finds it
    in its environment. With one process, ``started(None)`` and return.
    ``refresh`` updates the figures read from elsewhere (the broker's) before
    each periodic snapshot.
    """
    environ = os.environ if environ is None else environ
    inherited = environ.get(DIR_ENV)
    if inherited:
        share = MetricsShare(Path(inherited), environ.get(PROCESS_ENV, str(os.getpid())), registry)
        share.resume()
    elif processes > 1:
        directory = Path(tempfile.mkdtemp(prefix="flowqd-metrics-", dir=_runtime_dir(environ)))
        share = MetricsShare(directory, "1", registry)
    else:
        task_status.started(None)
        return
    try:
        task_status.started(share)
        while True:
            await refresh()
            _publish_quietly(share)
            await trio.sleep(PUBLISH_EVERY_S)
    finally:
        if inherited:
            _publish_quietly(share)  # the last figures, for the one restarted in this slot
        else:
            shutil.rmtree(share.directory, ignore_errors=True)


def _publish_quietly(share: MetricsShare) -> None:
    try:
        share.publish()
    except FileNotFoundError:
        pass  # the parent removed the directory: stopping
    except OSError as exc:
        _throttled.warning(
            "metrics-share",
            "cannot write this process's metrics to %s (%s): scrapes of the other API "
            "processes miss its latest figures; check the space and permissions there",
            share.directory,
            exc,
        )
