from __future__ import annotations

import pytest

from flowqd.config import PluginsConfig
from flowqd.executors.base import Executor
from flowqd.plugins import collect_executors, load_plugins


@pytest.fixture(scope="session")
def executors() -> dict[str, Executor]:
    """The built-in executors only: installed add-ons must not change these tests."""
    return collect_executors(load_plugins(PluginsConfig(disable=["example"])))
