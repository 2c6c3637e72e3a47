"""The OpenAPI document and the app's routes name the same operations, both ways.

The document is written by hand (flowqd/api/openapi.py); this keeps it true:
a route added without its entry, an entry left behind by a removed route, a
method or a ``{param}`` that differs, or a route that needs no key while the
document says it does (or the reverse), fails here.
"""

from __future__ import annotations

import re

import trio
from quart_trio import QuartTrio

from flowqd.api import openapi
from flowqd.api.authn import access_of
from tests.api.conftest import open_api

IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
# Quart's own /static/<filename> (no folder behind it: every request is a 404).
QUART_STATIC = "static"


def routes(app: QuartTrio) -> dict[tuple[str, str], str]:
    """(OpenAPI path, lower-case method) -> endpoint, for every route of ``app``."""
    found: dict[tuple[str, str], str] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == QUART_STATIC:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            assert (path, method.lower()) not in found, (path, method)
            found[path, method.lower()] = rule.endpoint
    return found


def documented() -> dict[tuple[str, str], dict[str, object]]:
    return {
        (path, method): operation
        for path, operations in openapi.spec()["paths"].items()
        for method, operation in operations.items()
    }


async def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    with trio.fail_after(15):
        async with open_api(worker=False) as api:
            served = routes(api.app)
    described = documented()
    assert served, "no routes read from the app"
    missing = sorted(set(served) - set(described))
    assert not missing, f"routes the OpenAPI document lacks (add them to openapi.PATHS): {missing}"
    stale = sorted(set(described) - set(served))
    assert not stale, f"operations in the OpenAPI document that no route serves: {stale}"


async def test_the_document_says_which_routes_need_no_key() -> None:
    with trio.fail_after(15):
        async with open_api(worker=False) as api:
            served = routes(api.app)
            keyless = {
                op
                for op, endpoint in served.items()
                if access_of(api.app.view_functions[endpoint]) != "key"
            }
    # security: [] is how OpenAPI says an operation needs no credentials.
    said = {op for op, operation in documented().items() if operation.get("security") == []}
    assert keyless == said
    assert ("/api/v1/ping", "get") in keyless and ("/api/v1/jobs", "post") not in keyless


def test_path_parameters_are_read_from_every_converter() -> None:
    # <path:name> and <flow_id> both become {name}: a converter the pattern
    # missed would make a route look undocumented.
    app = QuartTrio(__name__)

    @app.get("/a/<flow_id>/b/<path:name>")
    async def handler(flow_id: str, name: str) -> str:
        return ""

    assert ("/a/{flow_id}/b/{name}", "get") in routes(app)
