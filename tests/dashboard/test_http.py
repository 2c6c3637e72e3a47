"""The dashboard over plain HTTP: off by default, never open with keys, cookie sign-in and
its same-origin rule, static files from the package; and the JSON routes the page added
(retry, job search, throughput).

Rules as everywhere: loopback, port 0, ``trio.fail_after`` around I/O, no sleeps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import trio

from flowqd.api import dashboard
from flowqd.api.assets import ASSETS, load_assets
from flowqd.api.dashboard import COOKIE, CSRF_HEADER
from flowqd.api.throughput import FinishRate
from flowqd.auth import KeyRing, hash_key
from flowqd.sessions import SEPARATOR, SessionSigner
from tests.api.conftest import ADMIN_KEY, ALICE_KEY, Api, bearer, keyring, make_config, open_api
from tests.api.sse import parse_sse

ON = "dashboard.enabled=true"
HTML = {"Accept": "text/html,application/xhtml+xml"}
CSRF = {CSRF_HEADER: "1"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def cookie_client(api: Api, value: str) -> httpx.AsyncClient:
    """A client that sends the session cookie and nothing else, like a browser would."""
    return httpx.AsyncClient(base_url=api.url, timeout=10, cookies={COOKIE: value})


async def sign_in(api: Api, key: str) -> str:
    """The session cookie's value the dashboard's sign-in answers with for ``key``."""
    ok = await api.client.post(
        "/admin/queues/session", json={"key": key}, headers={**CSRF, **SAME_ORIGIN}
    )
    assert ok.status_code == 200, ok.text
    api.client.cookies.clear()  # the shared client stays a cookie-less API client
    return ok.cookies[COOKIE]


async def wait_until_finished(api: Api, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    # The event stream ends with the terminal event: no polling, no sleeps.
    stream = await api.client.get(f"/api/v1/jobs/{job_id}/events", headers=headers)
    assert stream.status_code == 200
    events, _ = parse_sse(stream.content)
    assert events[-1].name in ("end", "error", "cancelled")
    job: dict[str, Any] = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
    return job


async def test_page_is_404_json_when_disabled() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            for path in (
                "/admin/queues",
                "/admin/queues/static/dashboard.js",
                "/admin/queues/session",
            ):
                response = await api.client.get(path, headers=HTML)
                assert response.status_code == 404, path
                assert response.headers["content-type"] == "application/json"
                assert "dashboard.enabled" in response.json()["message"]
            signed = await api.client.post(
                "/admin/queues/session", json={"key": ADMIN_KEY}, headers=CSRF
            )
            assert signed.status_code == 404 and "set-cookie" not in signed.headers
            # With the dashboard off, no cookie stands in for the bearer header.
            async with cookie_client(api, ADMIN_KEY) as browser:
                assert (await browser.get("/api/v1/queue", headers=SAME_ORIGIN)).status_code == 401


async def test_page_is_401_without_a_key_when_keys_are_configured() -> None:
    with trio.fail_after(15):
        for anonymous in (False, True):
            async with open_api(ON, keys=keyring(allow_anonymous=anonymous)) as api:
                page = await api.client.get("/admin/queues", headers=HTML)
                assert page.status_code == 401, anonymous
                assert page.headers["content-type"].startswith("text/html")
                assert 'data-view="signin"' in page.text and 'id="signin-form"' in page.text
                api_call = await api.client.get("/admin/queues")
                assert api_call.status_code == 401
                assert api_call.json()["statusCode"] == 401
                assert (await api.client.get("/admin/queues/session")).status_code == 401
                if not anonymous:  # auth.allow_anonymous opens the API, never the page
                    for path in ("/api/v1/queue", "/api/v1/queue/throughput", "/api/v1/jobs"):
                        assert (await api.client.get(path)).status_code == 401, path
                signed = await api.client.get(
                    "/admin/queues", headers={**HTML, **bearer(ALICE_KEY)}
                )
                assert signed.status_code == 200 and 'data-view="app"' in signed.text
                csp = signed.headers["content-security-policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert signed.headers["cache-control"] == "no-store"


async def test_without_keys_the_page_opens_on_loopback() -> None:
    with trio.fail_after(15):
        async with open_api(ON) as api:
            page = await api.client.get("/admin/queues", headers=HTML)
            assert page.status_code == 200 and 'data-view="app"' in page.text
            who = (await api.client.get("/admin/queues/session")).json()
            assert who == {"name": None, "admin": True, "open": True}


async def test_static_files_come_from_the_package() -> None:
    assets = load_assets()
    shipped = {p.name for p in (Path(dashboard.__file__).parent / "static").iterdir()}
    assert set(assets) == set(ASSETS) == shipped  # a new file must be named in ASSETS
    with trio.fail_after(15):
        async with open_api(ON, keys=keyring()) as api:
            script = await api.client.get("/admin/queues/static/dashboard.js")
            assert script.status_code == 200
            assert script.headers["content-type"].startswith("text/javascript")
            assert script.content == assets["dashboard.js"].body
            again = await api.client.get(
                "/admin/queues/static/dashboard.js",
                headers={"If-None-Match": script.headers["etag"]},
            )
            assert again.status_code == 304 and again.content == b""
            css = await api.client.get("/admin/queues/static/dashboard.css")
            assert css.headers["content-type"].startswith("text/css")
            for name in ("nope.js", "index.html", "../app.py", "%2e%2e/app.py"):
                assert (await api.client.get(f"/admin/queues/static/{name}")).status_code == 404
            # Nothing the page loads comes from another host.
            page = assets["index.html"].body.decode()
            assert "http://" not in page and "https://" not in page.replace("http://www.w3.org", "")


async def test_cookie_sign_in_then_the_api_accepts_the_cookie() -> None:
    with trio.fail_after(15):
        async with open_api(ON, keys=keyring()) as api:
            wrong = await api.client.post(
                "/admin/queues/session", json={"key": "fqd_nope"}, headers=CSRF
            )
            assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
            no_header = await api.client.post("/admin/queues/session", json={"key": ADMIN_KEY})
            assert no_header.status_code == 403 and "set-cookie" not in no_header.headers
            cross = await api.client.post(
                "/admin/queues/session",
                json={"key": ADMIN_KEY},
                headers={**CSRF, "Sec-Fetch-Site": "cross-site"},
            )
            assert cross.status_code == 403
            empty = await api.client.post("/admin/queues/session", json={}, headers=CSRF)
            assert empty.status_code == 422

            ok = await api.client.post(
                "/admin/queues/session", json={"key": ADMIN_KEY}, headers={**CSRF, **SAME_ORIGIN}
            )
            assert ok.status_code == 200, ok.text
            assert ok.json() == {"name": "admin", "admin": True, "open": False}
            set_cookie = ok.headers["set-cookie"]
            attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")}
            assert {"httponly", "path", "max-age"} <= attributes
            assert "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
            value = ok.cookies[COOKIE]
            # A signed token naming the key, not the key nor its stored hash.
            assert ADMIN_KEY not in value and hash_key(ADMIN_KEY) not in value
            assert value.split(SEPARATOR)[1:3] == ["admin", "1"]

            async with cookie_client(api, value) as browser:
                page = await browser.get("/admin/queues", headers={**HTML, **SAME_ORIGIN})
                assert page.status_code == 200 and 'data-view="app"' in page.text
                typed = await browser.get(
                    "/admin/queues", headers={**HTML, "Sec-Fetch-Site": "none"}
                )
                assert typed.status_code == 200
                assert (await browser.get("/api/v1/queue", headers=SAME_ORIGIN)).json()[
                    "paused"
                ] is False
                who = await browser.get("/admin/queues/session", headers=SAME_ORIGIN)
                assert who.json()["name"] == "admin"
                paused = await browser.post("/api/v1/queue/pause", headers={**CSRF, **SAME_ORIGIN})
                assert paused.status_code == 200 and paused.json() == {"paused": True}
                assert await api.broker.control.is_paused()
                await browser.post("/api/v1/queue/resume", headers={**CSRF, **SAME_ORIGIN})
                assert not await api.broker.control.is_paused()
                out = await browser.delete("/admin/queues/session", headers={**CSRF, **SAME_ORIGIN})
                assert out.status_code == 204
                assert "Max-Age=0" in out.headers["set-cookie"]

            async with cookie_client(api, "fqd_revoked-or-made-up") as stranger:
                assert (await stranger.get("/api/v1/queue")).status_code == 401
                page = await stranger.get("/admin/queues", headers=HTML)
                assert page.status_code == 401 and 'data-view="signin"' in page.text


async def test_cross_site_post_with_only_the_cookie_is_refused(broker_env: dict[str, str]) -> None:
    with trio.fail_after(20):
        async with open_api(ON, keys=keyring(), environ=broker_env) as api:
            job = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "slow"}, headers=bearer(ALICE_KEY)
                )
            ).json()["id"]
            async with cookie_client(api, await sign_in(api, ALICE_KEY)) as browser:
                attempts: list[dict[str, str]] = [
                    {},  # a plain HTML form from anywhere: no custom header possible
                    {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"},  # another port of the same host
                    {**CSRF, "Sec-Fetch-Site": "cross-site"},
                    {**CSRF, "Sec-Fetch-Site": "same-site"},
                    {**CSRF, "Sec-Fetch-Site": "none"},
                    {"Origin": "http://evil.example", "Content-Type": "text/plain"},
                ]
                for headers in attempts:
                    refused = await browser.post(f"/api/v1/jobs/{job}/cancel", headers=headers)
                    assert refused.status_code == 403, headers
                    assert (
                        CSRF_HEADER in refused.json()["message"]
                        or "own origin" in refused.json()["message"]
                    )
                read = await browser.get(
                    f"/api/v1/jobs/{job}", headers={"Sec-Fetch-Site": "cross-site"}
                )
                assert read.status_code == 403
                assert (await api.broker.jobs.get_job(job)).cancel_requested is False  # type: ignore[union-attr]
                status = (await api.broker.jobs.get_job(job)).status  # type: ignore[union-attr]
                assert status.value in ("waiting", "active")

                done = await browser.post(
                    f"/api/v1/jobs/{job}/cancel", headers={**CSRF, **SAME_ORIGIN}
                )
                assert done.status_code in (200, 202), done.text
            finished = await wait_until_finished(api, job, bearer(ALICE_KEY))
            assert finished["status"] == "cancelled"


def _edit(token: str, field: int, value: str) -> str:
    parts = token.split(SEPARATOR)
    parts[field] = value
    return SEPARATOR.join(parts)


async def _jobs_status(api: Api, cookie: str) -> int:
    async with cookie_client(api, cookie) as browser:
        return (await browser.get("/api/v1/jobs", headers=SAME_ORIGIN)).status_code


async def test_a_tampered_forged_or_expired_session_is_401() -> None:
    with trio.fail_after(15):
        async with open_api(ON, keys=keyring()) as api:
            token = await sign_in(api, ALICE_KEY)
            assert await _jobs_status(api, token) == 200
            _, _, _, expires, _, signature = token.split(SEPARATOR)
            assert int(expires) - time.time() > dashboard.COOKIE_MAX_AGE_S - 60
            flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
            sessions = api.context.keys.sessions
            digest = hash_key(ALICE_KEY)
            refused = {
                "another name": _edit(token, 1, "admin"),
                "admin flag": _edit(token, 2, "1"),
                "later expiry": _edit(token, 3, str(int(expires) + 3600)),
                "signature": _edit(token, 5, flipped),
                "the key itself": ALICE_KEY,
                "expired": sessions.issue("alice", False, digest, expires=int(time.time()) - 1),
                "another secret": SessionSigner(b"other").issue(
                    "alice", False, digest, expires=int(time.time()) + 60
                ),
                "signed as admin": sessions.issue("alice", True, digest, expires=int(expires)),
            }
            for what, cookie in refused.items():
                async with cookie_client(api, cookie) as browser:
                    answer = await browser.get("/api/v1/jobs", headers=SAME_ORIGIN)
                    assert answer.status_code == 401, what
                    assert "sign in again" in answer.json()["message"], what
                    page = await browser.get("/admin/queues", headers=HTML)
                    assert page.status_code == 401 and 'data-view="signin"' in page.text, what
            # The same signer with a good expiry passes: "expired" failed on its expiry.
            fresh = sessions.issue("alice", False, digest, expires=int(time.time()) + 60)
            assert await _jobs_status(api, fresh) == 200


async def test_a_revoked_or_replaced_key_ends_its_sessions(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"alice:{hash_key(ALICE_KEY)}\nadmin:{hash_key(ADMIN_KEY)}:admin\n")
    ring = KeyRing.from_config(make_config(ON, f"auth.keys_file={keys_file}"))

    def rewrite(text: str) -> None:
        temp = tmp_path / "keys.new"
        temp.write_text(text)
        temp.replace(keys_file)

    async def until(cookie: str, status: int) -> None:
        # The main looks at the file at most once a second.
        for _ in range(100):
            if await _jobs_status(api, cookie) == status:
                return
            await trio.sleep(0.05)
        raise AssertionError(f"still not {status} after 5 s")

    with trio.fail_after(20):
        async with open_api(ON, keys=ring) as api:
            alice, root = await sign_in(api, ALICE_KEY), await sign_in(api, ADMIN_KEY)
            # Same name, admin now: a session signed in without admin rights ends.
            rewrite(f"alice:{hash_key(ALICE_KEY)}:admin\nadmin:{hash_key(ADMIN_KEY)}:admin\n")
            await until(alice, 401)
            alice = await sign_in(api, ALICE_KEY)
            # Same name, a new key (a rotation after a leak): the old key's session ends.
            rewrite(f"alice:{hash_key('fqd_rotated')}:admin\nadmin:{hash_key(ADMIN_KEY)}:admin\n")
            await until(alice, 401)
            assert await _jobs_status(api, root) == 200
            rewrite("")  # admin revoked too
            await until(root, 401)
            no_key = await api.client.get("/api/v1/jobs")
            assert no_key.status_code == 401  # every key revoked closes the API, never opens it


async def test_retry_a_failed_job_and_only_a_failed_or_cancelled_one(
    broker_env: dict[str, str],
) -> None:
    with trio.fail_after(20):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            alice = bearer(ALICE_KEY)
            failed_id = (
                await api.client.post("/api/v1/jobs", json={"flow": "boom"}, headers=alice)
            ).json()["id"]
            failed = await wait_until_finished(api, failed_id, alice)
            assert failed["status"] == "failed" and failed["links"]["retry"].endswith("/retry")
            other = await api.client.post(
                f"/api/v1/jobs/{failed_id}/retry", headers=bearer("fqd_bob-key-for-tests")
            )
            assert other.status_code == 404
            again = await api.client.post(f"/api/v1/jobs/{failed_id}/retry", headers=alice)
            assert again.status_code == 202, again.text
            assert again.json()["status"] in ("waiting", "active")
            assert again.json()["error"] is None
            rerun = await wait_until_finished(api, failed_id, alice)
            assert rerun["status"] == "failed" and rerun["attempts"] == 2  # the count goes on

            ok_id = (
                await api.client.post(
                    "/api/v1/jobs",
                    json={"flow": "echo", "inputs": {"question": "q"}},
                    headers=alice,
                )
            ).json()["id"]
            assert (await wait_until_finished(api, ok_id, alice))["status"] == "completed"
            refused = await api.client.post(f"/api/v1/jobs/{ok_id}/retry", headers=alice)
            assert refused.status_code == 409 and "completed" in refused.json()["message"]
            assert (
                await api.client.post("/api/v1/jobs/nope/retry", headers=alice)
            ).status_code == 404


async def test_job_search_by_id_or_flow_with_paging(broker_env: dict[str, str]) -> None:
    with trio.fail_after(20):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            alice, admin = bearer(ALICE_KEY), bearer(ADMIN_KEY)
            body = {
                "jobs": [{"flow": "echo", "inputs": {"question": str(i)}} for i in range(5)]
                + [{"flow": "topic", "inputs": {"topic": "t"}, "job_id": "topic-job-1"}]
            }
            ids = [
                j["id"]
                for j in (await api.client.post("/api/v1/jobs", json=body, headers=alice)).json()[
                    "jobs"
                ]
            ]
            theirs = (
                await api.client.post(
                    "/api/v1/jobs",
                    json={"flow": "topic", "inputs": {"topic": "b"}},
                    headers=bearer("fqd_bob-key-for-tests"),
                )
            ).json()["id"]
            for job_id in [*ids, theirs]:
                await wait_until_finished(api, job_id, admin)

            async def search(headers: dict[str, str], **params: str) -> dict[str, Any]:
                response = await api.client.get("/api/v1/jobs", params=params, headers=headers)
                assert response.status_code == 200, response.text
                found: dict[str, Any] = response.json()
                return found

            by_flow = await search(alice, q="TOP", status="completed")
            assert [j["id"] for j in by_flow["jobs"]] == ["topic-job-1"]  # not bob's
            assert len((await search(admin, q="top"))["jobs"]) == 2
            exact = await search(alice, q=ids[2])
            assert [j["id"] for j in exact["jobs"]] == [ids[2]]
            prefix = await search(alice, q=ids[3][:10])
            assert ids[3] in [j["id"] for j in prefix["jobs"]]
            assert (await search(alice, q=theirs))["jobs"] == []  # bob's job stays hidden
            assert (await search(alice, q=ids[2], status="failed"))["jobs"] == []

            echo = set(ids[:5])
            page1 = await search(alice, flow="echo", limit="3")
            page2 = await search(alice, flow="echo", limit="3", offset="3")
            assert page1["has_more"] is True and page2["has_more"] is False
            got = [j["id"] for j in page1["jobs"] + page2["jobs"]]
            assert len(got) == 5 and set(got) == echo
            assert page1["scan_limited"] is False
            plain = await search(admin, status="completed", limit="6")
            assert len(plain["jobs"]) == 6 and plain["has_more"] is True


async def test_throughput_counts_each_finish_once(broker_env: dict[str, str]) -> None:
    with trio.fail_after(20):
        async with open_api(environ=broker_env) as api:
            first = [
                (
                    await api.client.post(
                        "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "q"}}
                    )
                ).json()["id"]
                for _ in range(3)
            ]
            failed = (await api.client.post("/api/v1/jobs", json={"flow": "boom"})).json()["id"]
            for job_id in [*first, failed]:
                await wait_until_finished(api, job_id, {})
            answer = (await api.client.get("/api/v1/queue/throughput")).json()
            assert answer["last_5_min"] == {"completed": 3, "failed": 1}
            assert answer["buckets"][-1]["start"] <= answer["now"]
            assert sum(b["completed"] for b in answer["buckets"]) == 3
            assert len(answer["buckets"]) == answer["window_s"] / answer["bucket_s"]

            # A sampler of its own, with explicit clocks: the second sample reads only
            # what finished since the first, however the pages overlap.
            rate = FinishRate(api.broker.jobs, min_interval_s=0)
            await rate.sample(time.time())
            more = [
                (
                    await api.client.post(
                        "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "q"}}
                    )
                ).json()["id"]
                for _ in range(4)
            ]
            for job_id in more:
                await wait_until_finished(api, job_id, {})
            await rate.sample(time.time())
            await rate.sample(time.time())
            snap = rate.snapshot(time.time())
            assert snap["last_5_min"] == {"completed": 7, "failed": 1}
            assert snap["per_minute"]["completed"] > 0
            # Past the window, nothing is left.
            later = time.time() + rate.window_s + rate.bucket_s
            await rate.sample(later)
            assert rate.snapshot(later)["last_5_min"] == {"completed": 0, "failed": 0}
