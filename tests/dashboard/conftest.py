"""The dashboard's JSON routes run against both brokers."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", "redis"])
def broker_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for ``open_api``: the embedded broker, or a real redis-server."""
    if request.param == "memory":
        return {}
    return {
        "REDIS_URL": request.getfixturevalue("redis_url"),
        "QUEUE_NAME": request.getfixturevalue("queue_name"),
    }
