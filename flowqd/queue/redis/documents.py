"""``FlowDocuments`` and ``SealedSecrets`` of the Redis backend."""

from __future__ import annotations

import attrs

from flowqd.queue.redis.backend import RedisBackend


@attrs.define(eq=False)
class RedisFlowDocuments:
    _backend: RedisBackend

    async def put_flow(self, flow_id: str, document: bytes) -> int:
        return int(await self._backend.scripts.put_flow((flow_id, document)))

    async def get_flow(self, flow_id: str, version: int | None = None) -> tuple[int, bytes] | None:
        reply = await self._backend.scripts.get_flow((flow_id, b"" if version is None else version))
        return None if reply is None else (int(reply[0]), reply[1])

    async def list_flows(self) -> dict[str, int]:
        reply = await self._backend.redis.execute(b"HGETALL", self._backend.keys.flows)
        return {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def delete_flow(self, flow_id: str) -> bool:
        return bool(await self._backend.redis.execute(b"HDEL", self._backend.keys.flows, flow_id))


@attrs.define(eq=False)
class RedisSecrets:
    _backend: RedisBackend

    async def put_secret(self, name: str, sealed: bytes) -> None:
        await self._backend.redis.execute(b"HSET", self._backend.keys.secrets, name, sealed)

    async def get_secret(self, name: str) -> bytes | None:
        backend = self._backend
        value: bytes | None = await backend.redis.execute(b"HGET", backend.keys.secrets, name)
        return value

    async def list_secrets(self) -> list[str]:
        backend = self._backend
        names = await backend.redis.execute(b"HKEYS", backend.keys.secrets)
        return sorted(n.decode() for n in names)

    async def delete_secret(self, name: str) -> bool:
        backend = self._backend
        return bool(await backend.redis.execute(b"HDEL", backend.keys.secrets, name))
