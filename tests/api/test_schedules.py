"""Schedules through the API: create, list, get, pause, resume, delete (admin keys only),
422 with the JSON path of each problem, and a schedule's ticks run as jobs."""

from __future__ import annotations

import time

import trio

from flowqd.schedules import Scheduler
from tests.api.conftest import ADMIN_KEY, ALICE_KEY, bearer, keyring, open_api


async def test_schedule_crud() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            admin = bearer(ADMIN_KEY)
            body = {"flow": "greet", "cron": "0 9 * * 1-5", "timezone": "Europe/Paris"}
            before = time.time()
            made = await api.client.put("/api/v1/schedules/mornings", json=body, headers=admin)
            assert made.status_code == 200, made.text
            view = made.json()
            assert view | {"next_run_at": None} == {
                "id": "mornings",
                "flow": "greet",
                "cron": "0 9 * * 1-5",
                "interval_s": None,
                "timezone": "Europe/Paris",
                "inputs": {},
                "missed": "once",
                "owner": "admin",
                "paused": False,
                "next_run_at": None,
                "last_tick_at": None,
            }
            assert before < view["next_run_at"] <= before + 4 * 86400
            every = {"flow": "echo", "interval_s": 30, "inputs": {"question": "hi"}}
            made = await api.client.put("/api/v1/schedules/often", json=every, headers=admin)
            assert made.json()["next_run_at"] >= before + 30
            listed = (await api.client.get("/api/v1/schedules", headers=admin)).json()
            assert [s["id"] for s in listed["schedules"]] == ["mornings", "often"]

            paused = await api.client.post("/api/v1/schedules/often/pause", headers=admin)
            assert paused.json()["paused"] is True and paused.json()["next_run_at"] is None
            got = (await api.client.get("/api/v1/schedules/often", headers=admin)).json()
            assert got["paused"] is True
            # The same definition again changes nothing: still paused.
            again = await api.client.put("/api/v1/schedules/often", json=every, headers=admin)
            assert again.json()["paused"] is True
            resumed = await api.client.post("/api/v1/schedules/often/resume", headers=admin)
            assert resumed.json()["paused"] is False
            assert resumed.json()["next_run_at"] >= time.time() + 29

            assert (
                await api.client.delete("/api/v1/schedules/often", headers=admin)
            ).status_code == 204
            for method, path in (
                ("GET", "/api/v1/schedules/often"),
                ("DELETE", "/api/v1/schedules/often"),
                ("POST", "/api/v1/schedules/often/pause"),
                ("POST", "/api/v1/schedules/often/resume"),
            ):
                gone = await api.client.request(method, path, headers=admin)
                assert gone.status_code == 404, (method, path)
                assert "GET /api/v1/schedules lists schedules" in gone.json()["message"]


async def test_schedules_need_an_admin_key() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            alice = bearer(ALICE_KEY)
            body = {"flow": "echo", "interval_s": 5}
            for method, path in (
                ("GET", "/api/v1/schedules"),
                ("PUT", "/api/v1/schedules/x"),
                ("GET", "/api/v1/schedules/x"),
                ("POST", "/api/v1/schedules/x/pause"),
                ("DELETE", "/api/v1/schedules/x"),
            ):
                answer = await api.client.request(method, path, json=body, headers=alice)
                assert answer.status_code == 403, (method, path)
                assert "admin API key" in answer.json()["message"]


async def test_invalid_schedule_is_422_with_paths() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            bad = await api.client.put(
                "/api/v1/schedules/x",
                json={"flow": "echo", "cron": "every day", "timezone": "Nowhere/City", "x": 1},
            )
            assert bad.status_code == 422
            assert [p["path"] for p in bad.json()["problems"]] == ["$.x", "$.cron", "$.timezone"]
            unknown = await api.client.put(
                "/api/v1/schedules/x", json={"flow": "nope", "interval_s": 5}
            )
            assert unknown.status_code == 422
            assert unknown.json()["problems"] == [
                {
                    "path": "$.flow",
                    "message": "no valid flow 'nope' is registered (GET /api/v1/flows)",
                }
            ]
            other = await api.client.put(
                "/api/v1/schedules/x", json={"id": "y", "flow": "echo", "interval_s": 5}
            )
            assert [p["path"] for p in other.json()["problems"]] == ["$.id"]
            not_object = await api.client.put("/api/v1/schedules/x", json=[1])
            assert not_object.status_code == 422
            assert (await api.client.get("/api/v1/schedules")).json() == {"schedules": []}


async def test_a_schedule_runs_its_flow_as_jobs() -> None:
    with trio.fail_after(20):
        async with open_api() as api:
            made = await api.client.put(
                "/api/v1/schedules/hello",
                json={"flow": "greet", "interval_s": 1, "inputs": {"question": "cron"}},
            )
            assert made.status_code == 200
            scheduler = Scheduler.create(
                api.broker.schedules,
                api.broker.jobs,
                api.context.flows,
                api.config.schedules,
                api.context.registry,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(scheduler.run, api.shutdown)
                tick = round(made.json()["next_run_at"] * 1000)
                job_id = f"sched:hello:{tick}"
                while True:
                    job = await api.client.get(f"/api/v1/jobs/{job_id}")
                    if job.status_code == 200 and job.json()["status"] == "completed":
                        break
                    await trio.sleep(0.1)
                assert job.json()["result"] == "Hello cron"
                metrics = (await api.client.get("/metrics")).text
                assert 'flowqd_schedule_ticks_total{flow="greet",outcome="fired"}' in metrics
                nursery.cancel_scope.cancel()
