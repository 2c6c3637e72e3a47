"""Versioned flows, kept by the broker and compiled once per version."""

from __future__ import annotations

import builtins
import tomllib
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import orjson
import trio

from flowqd.config import FlowsConfig
from flowqd.errors import FlowValidationError
from flowqd.executors.base import Executor
from flowqd.flows.model import CompiledFlow
from flowqd.flows.validate import compile_flow

FLOW_SUFFIXES = (".json", ".toml")
DEFAULT_MAX_NODES = FlowsConfig().max_nodes


class FlowBackend(Protocol):
    """The ``FlowDocuments`` role of a queue backend (``broker.flow_documents``).

    Restated here, not imported: flows run the same under any backend and
    import nothing of ``flowqd.queue``.
    """

    async def put_flow(self, flow_id: str, document: bytes) -> int: ...
    async def get_flow(
        self, flow_id: str, version: int | None = None
    ) -> tuple[int, bytes] | None: ...
    async def list_flows(self) -> dict[str, int]: ...
    async def delete_flow(self, flow_id: str) -> bool: ...


def parse_flow_file(path: Path) -> dict[str, Any]:
    """Read a flow document from a ``.json`` or ``.toml`` file.

    Raises FlowValidationError naming the file when it cannot be read or parsed.
    """
    where = str(path)
    if path.suffix not in FLOW_SUFFIXES:
        raise FlowValidationError([(where, "flow files end in .json or .toml")])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlowValidationError([(where, f"cannot read the file: {exc.strerror}")]) from None
    try:
        document = tomllib.loads(data.decode()) if path.suffix == ".toml" else orjson.loads(data)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FlowValidationError([(where, f"not valid TOML: {exc}")]) from None
    except orjson.JSONDecodeError as exc:
        raise FlowValidationError([(where, f"not valid JSON: {exc}")]) from None
    if not isinstance(document, dict):
        raise FlowValidationError([(where, "expected a flow object with id, nodes and output")])
    return document


def canonical(document: Mapping[str, Any]) -> bytes:
    """The stored form: equal documents give equal bytes, whatever their key order."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


class FlowStore:
    """Flows by id and version. Versions never change, so compiled ones are cached.

    The one flow cache of a process: an LRU of compiled versions that the
    worker reads without an await for every job (``cached``), and a fetch
    per version at a time, so a burst of jobs of an uncached flow costs one
    backend call, not one per job.
    """

    CACHE_SIZE = 1024

    def __init__(
        self,
        backend: FlowBackend,
        executors: Mapping[str, Executor],
        *,
        max_nodes: int = DEFAULT_MAX_NODES,
        queues: Collection[str] | None = None,
    ) -> None:
        self._backend = backend
        self._executors = executors
        self._max_nodes = max_nodes
        self._queues = queues  # a registered flow's "queue" must be one of these
        self._cache: OrderedDict[tuple[str, int], CompiledFlow] = OrderedDict()
        # Versions being fetched, and the event their waiters wait on.
        self._loads: dict[tuple[str, int], trio.Event] = {}

    def compile(self, document: Mapping[str, Any]) -> CompiledFlow:
        """Validate a flow for registration (``flows.max_nodes`` applies); no broker call.

        Raises FlowValidationError with every problem. Callers that bound the
        broker exchange with a deadline call this first, outside it: validation
        is CPU, and its time must not read as a slow broker.
        """
        return compile_flow(
            document, self._executors, max_nodes=self._max_nodes, queues=self._queues
        )

    async def put(self, document: Mapping[str, Any]) -> tuple[str, int]:
        """Validate and store a flow; return ``(flow_id, version)``.

        An unchanged document keeps its current version. Raises
        FlowValidationError with every problem.
        """
        return await self.store(self.compile(document))

    async def store(self, flow: CompiledFlow) -> tuple[str, int]:
        """Store a flow ``compile`` returned; return ``(flow_id, version)``."""
        try:
            stored = canonical(flow.document)
        except TypeError as exc:  # only from Python callers: files and JSON bodies encode
            raise FlowValidationError([("$", f"not JSON-compatible: {exc}")]) from None
        current = await self._backend.get_flow(flow.id)
        if current is not None and current[1] == stored:
            version = current[0]
        else:
            version = await self._backend.put_flow(flow.id, stored)
        self._remember(flow.id, version, flow)
        return flow.id, version

    def cached(self, flow_id: str, version: int) -> CompiledFlow | None:
        """The compiled flow if the cache holds it, else None; no await, no backend call.

        The worker's look-up for every job, so as cheap as can be: it leaves
        the LRU order alone (a busy version evicted is fetched once more).
        """
        return self._cache.get((flow_id, version))

    async def get(self, flow_id: str, version: int | None = None) -> CompiledFlow | None:
        """The flow at ``version`` (None: current), compiled; None if unknown.

        Raises FlowValidationError if a stored version no longer validates
        (its node type's plugin was removed, say).
        """
        if version is None:
            return await self._fetch(flow_id, None)
        key = (flow_id, version)
        flow = self._cache.get(key)
        if flow is not None:
            self._cache.move_to_end(key)
            return flow
        loading = self._loads.get(key)
        if loading is not None:
            await loading.wait()  # then from the cache, or a call of our own if it failed
            return self.cached(flow_id, version) or await self._fetch(flow_id, version)
        self._loads[key] = loading = trio.Event()
        try:
            return await self._fetch(flow_id, version)
        finally:
            del self._loads[key]
            loading.set()

    async def _fetch(self, flow_id: str, version: int | None) -> CompiledFlow | None:
        found = await self._backend.get_flow(flow_id, version)
        if found is None:
            return None
        stored_version, data = found
        cached = self._cache.get((flow_id, stored_version))
        if cached is not None:
            return cached
        flow = compile_flow(orjson.loads(data), self._executors)
        return self._remember(flow_id, stored_version, flow)

    async def current_version(self, flow_id: str) -> int | None:
        flow = await self.get(flow_id)
        return None if flow is None else flow.version

    async def list(self) -> dict[str, int]:
        """Flow id -> current version."""
        return await self._backend.list_flows()

    async def delete(self, flow_id: str) -> bool:
        """Forget the flow's current version; jobs already queued still run theirs."""
        return await self._backend.delete_flow(flow_id)

    async def load_paths(self, paths: Sequence[str]) -> builtins.list[tuple[str, int]]:
        """Register every ``.json``/``.toml`` flow in the folders (or files) ``paths``.

        Everything is checked before anything is stored: FlowValidationError
        lists every problem of every file, each path prefixed by the file.
        """
        problems: builtins.list[tuple[str, str]] = []
        flows: builtins.list[CompiledFlow] = []
        seen: dict[str, Path] = {}
        for file in _flow_files(paths, problems):
            try:
                document = parse_flow_file(file)
                # A flow file's schedules are flowqd.schedules' (files.py), not the flow's.
                document.pop("schedules", None)
                flow = self.compile(document)
            except FlowValidationError as exc:
                problems.extend(
                    (p if p == str(file) else f"{file}: {p}", m) for p, m in exc.problems
                )
                continue
            if flow.id in seen:
                problems.append(
                    (f"{file}: $.id", f"flow id {flow.id!r} also defined in {seen[flow.id]}")
                )
                continue
            seen[flow.id] = file
            flows.append(flow)
        if problems:
            raise FlowValidationError(problems)
        return [await self.store(flow) for flow in flows]

    def _remember(self, flow_id: str, version: int, flow: CompiledFlow) -> CompiledFlow:
        flow = attrs.evolve(flow, version=version)
        self._cache[(flow_id, version)] = flow
        self._cache.move_to_end((flow_id, version))
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return flow


def _flow_files(paths: Sequence[str], problems: list[tuple[str, str]]) -> list[Path]:
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in FLOW_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            problems.append((entry, "flows.paths: no such folder or file"))
    return files
