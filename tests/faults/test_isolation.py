"""Two API keys on real main and worker processes: the second key cannot read,
stream, list or cancel the first key's jobs, nor see a credential's value.

Langflow keeps an owner per job and lets only the owner read or cancel it;
flowqd does the same, answering 404 (another key's job is not even confirmed
to exist), and credential values never leave the workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from flowqd.auth import hash_key, new_key
from tests.daemonproc import start_daemon
from tests.faults.helpers import assert_no_crash, delay_flow, redis_env, settings
from tests.flows.httpserver import Request, open_http_server, send_json
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

SECRET = "sk-isolation-" + "7" * 24


async def _service(request: Request, stream: trio.SocketStream) -> None:
    await send_json(stream, 200, {"ok": True})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_second_key_cannot_read_stream_cancel_or_see_credentials(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    admin, alice, bob = new_key(), new_key(), new_key()
    keys = ",".join(
        [f"admin:{hash_key(admin)}:admin", f"alice:{hash_key(alice)}", f"bob:{hash_key(bob)}"]
    )
    env = {**redis_env(redis_server.url, queue_name), "FLOWQD_SECRET_KEY": "isolation-secret"}
    seen_by_bob: list[httpx.Response] = []
    with trio.fail_after(60):
        async with (
            open_http_server(_service) as service,
            start_daemon(
                ["--role", "main", *settings(auth__keys=keys)], env=env, cwd=str(tmp_path)
            ) as main,
            start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)) as worker,
            httpx.AsyncClient(base_url=main.api, timeout=20) as client,
        ):

            async def as_bob(
                method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
            ) -> httpx.Response:
                response = await client.request(
                    method, path, headers={**bearer(bob), **(headers or {})}, **kw
                )
                seen_by_bob.append(response)
                return response

            stored = await client.put(
                "/api/v1/credentials/api-token", headers=bearer(admin), json={"value": SECRET}
            )
            assert stored.status_code == 204, stored.text
            call = {
                "id": "call",
                "nodes": [
                    {
                        "id": "h",
                        "type": "http",
                        "params": {"url": f"{service.url}/v1", "credential": "api-token"},
                    }
                ],
                "output": "h",
            }
            for doc in (call, delay_flow("slow", 60_000)):
                put = await client.put(
                    f"/api/v1/flows/{doc['id']}", headers=bearer(admin), json=doc
                )
                assert put.status_code == 200, put.text

            running = await client.post(
                "/api/v1/jobs",
                headers=bearer(alice),
                json={"flow": "slow", "inputs": {"question": "mine"}},
            )
            assert running.status_code == 202, running.text
            job = running.json()["id"]
            answer = await client.post(
                "/api/v1/prediction/call", headers=bearer(alice), json={"question": "use the key"}
            )
            assert answer.status_code == 200, answer.text
            done = answer.json()["executionId"]
            # The worker did use the credential: the service saw it.
            assert service.requests[-1].headers["authorization"] == f"Bearer {SECRET}"

            for target in (job, done):
                assert (await as_bob("GET", f"/api/v1/jobs/{target}")).status_code == 404
                assert (await as_bob("GET", f"/api/v1/jobs/{target}/events")).status_code == 404
                assert (
                    await as_bob(
                        "GET", f"/api/v1/jobs/{target}/events", headers={"Last-Event-ID": "0-0"}
                    )
                ).status_code == 404
                assert (
                    await as_bob("GET", f"/api/v1/jobs/{target}/events?after=0")
                ).status_code == 404
                assert (await as_bob("POST", f"/api/v1/jobs/{target}/cancel")).status_code == 404
                for who in ({}, bearer("fqd_not-a-key")):
                    for method, path in (
                        ("GET", f"/api/v1/jobs/{target}"),
                        ("GET", f"/api/v1/jobs/{target}/events"),
                        ("POST", f"/api/v1/jobs/{target}/cancel"),
                    ):
                        refused = await client.request(method, path, headers=who)
                        assert refused.status_code == 401, refused.text
            # The same job id sent by bob is refused (409) and shows nothing of alice's.
            reuse = await as_bob("POST", "/api/v1/jobs", json={"flow": "slow", "job_id": job})
            assert reuse.status_code == 409, reuse.text
            assert "alice" not in reuse.text and "active" not in reuse.text
            assert (await as_bob("GET", f"/api/v1/jobs/{job}")).status_code == 404
            listed = await as_bob("GET", "/api/v1/jobs")
            assert listed.status_code == 200
            assert {j["id"] for j in listed.json()["jobs"]} & {job, done} == set()
            for status in ("active", "completed", "waiting"):
                listed = await as_bob("GET", f"/api/v1/jobs?status={status}&limit=1000")
                assert {j["id"] for j in listed.json()["jobs"]} & {job, done} == set()
            assert (await as_bob("GET", "/api/v1/credentials")).status_code == 403
            assert (
                await as_bob("PUT", "/api/v1/credentials/api-token", json={"value": "stolen"})
            ).status_code == 403
            assert (await as_bob("DELETE", "/api/v1/credentials/api-token")).status_code == 403
            # Any key may run a flow, so it sees its inputs; the document (URL,
            # credential name) is for admin keys.
            flow = await as_bob("GET", "/api/v1/flows/call")
            assert flow.status_code == 200 and flow.json() == {
                "id": "call",
                "version": 1,
                "inputs": [],
            }
            queue = await as_bob("GET", "/api/v1/queue")
            assert queue.json()["workers"] and all(
                set(w) == {"id", "ready", "jobs_held", "concurrency", "started_at", "last_seen"}
                for w in queue.json()["workers"]
            )
            await as_bob("GET", "/metrics")

            # Alice's job was untouched by all of that, and she can still act on it.
            mine = (await client.get(f"/api/v1/jobs/{job}", headers=bearer(alice))).json()
            assert mine["status"] == "active" and not mine["cancel_requested"], mine
            own_record = await client.get(f"/api/v1/jobs/{done}", headers=bearer(alice))
            own_events = await client.get(f"/api/v1/jobs/{done}/events", headers=bearer(alice))
            admin_view = await client.get(f"/api/v1/jobs/{job}", headers=bearer(admin))
            assert admin_view.status_code == 200  # admin keys see every job
            names = await client.get("/api/v1/credentials", headers=bearer(admin))
            assert names.json() == {"credentials": ["api-token"]}
            cancel = await client.post(f"/api/v1/jobs/{job}/cancel", headers=bearer(alice))
            assert cancel.status_code in (200, 202), cancel.text
            assert_no_crash(main, worker)
    for response in [*seen_by_bob, own_record, own_events, names]:
        assert SECRET not in response.text
    assert SECRET not in main.text() and SECRET not in worker.text()
    print(
        f"\nisolation: {len(seen_by_bob)} requests with the second key, none saw the first "
        "key's jobs (404) or a credential value; no key or a wrong key: 401"
    )
