"""Waiting between reconnect attempts."""

from __future__ import annotations

import random

import trio


class Backoff:
    """Exponential backoff with jitter, capped at ``maximum`` seconds.

    Each ``wait()`` sleeps a random time between half and all of the current
    delay (so many clients that lost the same Redis do not return in step),
    then doubles the delay up to ``maximum``. Call ``reset()`` after a success.
    """

    def __init__(self, initial: float = 0.05, maximum: float = 5.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial} and {maximum}")
        self.initial = initial
        self.maximum = maximum
        self._delay = initial

    @property
    def delay(self) -> float:
        """The upper bound of the next wait."""
        return self._delay

    async def wait(self) -> None:
        delay = self._delay
        self._delay = min(delay * 2, self.maximum)
        await trio.sleep(delay * (0.5 + random.random() / 2))

    def reset(self) -> None:
        self._delay = self.initial
