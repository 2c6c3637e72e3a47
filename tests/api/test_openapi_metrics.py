"""The OpenAPI document covers every route; /metrics has requests, latencies, outcomes, depth,
and the broker's figures as named metrics."""

from __future__ import annotations

import re

import trio

from flowqd.api.app import create_app
from tests.api.conftest import open_api


async def test_openapi_describes_every_route_and_method() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            spec = (await api.client.get("/api/v1/openapi.json")).json()
            app = create_app(api.context)
            routes = 0
            for rule in app.url_map.iter_rules():
                if rule.endpoint == "static":
                    continue
                path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
                assert path in spec["paths"], path
                for method in rule.methods or ():
                    if method in ("HEAD", "OPTIONS"):
                        continue
                    operation = spec["paths"][path][method.lower()]
                    assert operation["summary"] and operation["responses"], (path, method)
                    routes += 1
            assert routes == sum(len(ops) for ops in spec["paths"].values())
            error = spec["components"]["schemas"]["Error"]
            assert error["required"] == ["statusCode", "success", "message"]


async def test_metrics_count_requests_latencies_outcomes_and_queue_depth() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            await api.client.post("/api/v1/prediction/echo", json={"question": "q"})
            await api.client.post("/api/v1/prediction/boom", json={"question": "q"})
            await api.client.post("/api/v1/prediction/nope", json={"question": "q"})
            text = (await api.client.get("/metrics")).text
            lines = set(text.splitlines())
            route = 'route="/api/v1/prediction/<flow_id>"'
            assert f'flowqd_api_requests_total{{method="POST",{route},status="200"}} 1' in lines
            assert f'flowqd_api_requests_total{{method="POST",{route},status="404"}} 1' in lines
            assert f"flowqd_api_request_seconds_count{{{route}}} 3" in lines
            assert 'flowqd_api_jobs_total{outcome="completed"} 1' in lines
            assert 'flowqd_api_jobs_total{outcome="failed"} 1' in lines
            assert 'flowqd_queue_jobs{queue="flowqd-queue",state="completed"} 1' in lines
            assert 'flowqd_queue_jobs{queue="flowqd-queue",state="failed"} 1' in lines
            assert 'flowqd_queue_paused{queue="flowqd-queue"} 0' in lines
            assert "flowqd_broker_up 1" in lines
            # The broker's figures are named metrics of their own, not one lumped gauge
            # (the embedded broker has none to report: their HELP and TYPE only).
            assert "# TYPE flowqd_redis_connections_open gauge" in lines
            assert "# TYPE flowqd_redis_doorbells_total counter" in lines
            assert "flowqd_broker_stat" not in text
