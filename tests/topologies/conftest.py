"""The Sentinel topology (one primary, one replica, three sentinels), started
once per session; ``sentinels`` hands it to a test healthy, and makes it
healthy again afterwards for the next one (a killed node restarted as a
replica of the new primary, or everything rebuilt)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sentinelproc import SentinelTopology


@pytest.fixture(scope="session")
def sentinel_topology() -> Iterator[SentinelTopology]:
    topology = SentinelTopology()
    topology.start()
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture
def sentinels(sentinel_topology: SentinelTopology) -> Iterator[SentinelTopology]:
    """The session topology, healthy on entry and on exit. Which node is the
    primary changes from test to test: ask ``primary()``."""
    sentinel_topology.restore()
    yield sentinel_topology
    sentinel_topology.restore()
