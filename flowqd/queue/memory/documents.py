"""``FlowDocuments`` and ``SealedSecrets`` of the embedded backend."""

from __future__ import annotations

import attrs
import trio


@attrs.define(eq=False)
class MemoryFlowDocuments:
    _current: dict[str, int] = attrs.Factory(dict)
    _highest: dict[str, int] = attrs.Factory(dict)  # versions are never reused
    _documents: dict[tuple[str, int], bytes] = attrs.Factory(dict)

    async def put_flow(self, flow_id: str, document: bytes) -> int:
        await trio.lowlevel.checkpoint()
        current = self._current.get(flow_id)
        if current is not None and self._documents[(flow_id, current)] == document:
            return current
        version = self._highest.get(flow_id, 0) + 1
        self._highest[flow_id] = version
        self._documents[(flow_id, version)] = bytes(document)
        self._current[flow_id] = version
        return version

    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        await trio.lowlevel.checkpoint()
        if version is None:
            version = self._current.get(flow_id)
            if version is None:
                return None
        document = self._documents.get((flow_id, version))
        return None if document is None else (version, document)

    async def list_flows(self) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        return dict(self._current)

    async def delete_flow(self, flow_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._current.pop(flow_id, None) is not None


@attrs.define(eq=False)
class MemorySecrets:
    _sealed: dict[str, bytes] = attrs.Factory(dict)

    async def put_secret(self, name: str, sealed: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._sealed[name] = bytes(sealed)

    async def get_secret(self, name: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._sealed.get(name)

    async def list_secrets(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self._sealed)

    async def delete_secret(self, name: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._sealed.pop(name, None) is not None
