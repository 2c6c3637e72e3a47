"""Backoff: doubling, jitter, cap, reset (on trio's autojump clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from flowqd.backoff import Backoff


async def test_doubles_with_jitter_up_to_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    bounds = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for bound in bounds:
        assert backoff.delay == pytest.approx(bound)
        start = trio.current_time()
        await backoff.wait()
        waited = trio.current_time() - start
        assert bound / 2 <= waited <= bound + 1e-9


async def test_jitter_spreads_waits(autojump_clock: trio.testing.MockClock) -> None:
    waits = set()
    for _ in range(20):
        backoff = Backoff(initial=1.0, maximum=1.0)
        start = trio.current_time()
        await backoff.wait()
        waits.add(round(trio.current_time() - start, 6))
    assert len(waits) > 10


async def test_reset_starts_over(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(initial=0.05, maximum=5.0)
    for _ in range(5):
        await backoff.wait()
    assert backoff.delay == pytest.approx(1.6)
    backoff.reset()
    assert backoff.delay == pytest.approx(0.05)
    start = trio.current_time()
    await backoff.wait()
    assert trio.current_time() - start <= 0.05 + 1e-9


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=2.0, maximum=1.0)
    with pytest.raises(ValueError):
        Backoff(initial=0.0)
