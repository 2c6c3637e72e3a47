"""Helpers for the Redis client tests: looking at Redis's own view of clients."""

from __future__ import annotations

from collections.abc import Callable

import trio

from flowqd.redis import Redis


async def clients_named(observer: Redis, name: str) -> list[dict[str, str]]:
    """Redis's CLIENT LIST entries whose name is ``name``."""
    listing = await observer.execute("CLIENT", "LIST", "TYPE", "normal")
    clients = []
    for line in listing.decode().splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        if fields.get("name") == name:
            clients.append(fields)
    return clients


async def kill_clients(observer: Redis, name: str) -> int:
    """CLIENT KILL every connection named ``name``; how many there were."""
    clients = await clients_named(observer, name)
    for client in clients:
        await observer.execute("CLIENT", "KILL", "ID", client["id"])
    return len(clients)


async def wait_until_clients(
    observer: Redis, name: str, predicate: Callable[[list[dict[str, str]]], bool]
) -> list[dict[str, str]]:
    """Poll CLIENT LIST until ``predicate`` holds for the clients named ``name``.

    Redis notices a closed socket on its next event-loop pass; this waits for
    that (callers bound it with ``trio.fail_after``).
    """
    while True:
        clients = await clients_named(observer, name)
        if predicate(clients):
            return clients
        await trio.sleep(0.002)


def blocked(clients: list[dict[str, str]]) -> bool:
    return any("b" in client["flags"] for client in clients)
