"""The dashboard end to end: a real daemon (``--role all``) and Debian's headless Chromium.

The browser runs in a worker thread (playwright's sync API brings its own
event loop, which must not share a thread with trio). Every browser wait is
bounded by playwright's timeouts, every HTTP call by httpx's; nothing sleeps.
The screenshot goes to ``artifacts/dashboard.png`` at the repository root.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from flowqd.api.dashboard import COOKIE
from flowqd.auth import hash_key, new_key
from tests.daemonproc import start_daemon

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000


def need_browser() -> None:
    """Skip without Chromium or playwright, unless the run requires them (scripts/test.sh)."""
    problems = []
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("playwright is not installed (pip install -e '.[test]')")
    if problems:
        message = "the browser test needs " + "; ".join(problems)
        if os.environ.get("REQUIRE_BROWSER_TESTS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    """A loopback port nobody listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def flows(fixable_port: int, closed_port: int) -> dict[str, dict[str, Any]]:
    return {
        "hello": {
            "nodes": [
                {
                    "id": "think",
                    "type": "delay",
                    "label": "Think",
                    "params": {"ms": 4000},
                    "inputs": {"q": "$question"},
                },
                {
                    "id": "greet",
                    "type": "template",
                    "label": "Greet",
                    "params": {"template": "Hello {q}"},
                    "inputs": {"q": "think"},
                },
            ],
            "output": "greet",
        },
        "echo": {"nodes": [{"id": "say", "type": "echo", "label": "Echo"}], "output": "say"},
        # A branch taken and one skipped.
        "route": {
            "nodes": [
                {
                    "id": "pick",
                    "type": "condition",
                    "label": "Pick",
                    "params": {"cases": [{"name": "yes", "equals": "y"}], "default": "no"},
                },
                {"id": "taken", "type": "echo", "label": "Taken", "when": {"pick": "no"}},
                {"id": "not_taken", "type": "echo", "label": "Not taken", "when": {"pick": "yes"}},
            ],
            "output": ["not_taken", "taken"],
        },
        "slow": {
            "nodes": [
                {
                    "id": "wait",
                    "type": "delay",
                    "label": "Wait a long time",
                    "params": {"ms": 120_000},
                }
            ],
            "output": "wait",
        },
        # Fails until something listens on the port: then a retry succeeds.
        "fetch": {
            "nodes": [
                {
                    "id": "call",
                    "type": "http",
                    "label": "Call the service",
                    "params": {"url": f"http://127.0.0.1:{fixable_port}/status", "timeout_s": 5},
                }
            ],
            "output": "call",
        },
        "broken": {
            "nodes": [
                {
                    "id": "call",
                    "type": "http",
                    "label": "Call a dead service",
                    "params": {"url": f"http://127.0.0.1:{closed_port}/", "timeout_s": 5},
                }
            ],
            "output": "call",
        },
    }


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"service": "up"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_browser(api: str, key: str, fixable_port: int, profile: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    problems: list[str] = []
    with (
        sync_playwright() as pw,
        httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as client,
    ):
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=LAUNCH_ARGS,
            viewport={"width": 1440, "height": 960},
            color_scheme="light",
        )
        try:
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            # Refused loads (the 401s this test provokes) are expected; anything else
            # logged as an error (a CSP violation, a script error) is not.
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console: {m.text}")
                    if m.type == "error" and "Failed to load resource" not in m.text
                    else None
                ),
            )

            def enqueue(flow: str, inputs: dict[str, Any] | None = None) -> str:
                response = client.post("/api/v1/jobs", json={"flow": flow, "inputs": inputs or {}})
                assert response.status_code == 202, response.text
                job_id: str = response.json()["id"]
                return job_id

            def row(job_id: str) -> Any:
                return page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')

            # ---- sign in -----------------------------------------------------------
            first = page.goto(f"{api}/admin/queues")
            assert first is not None and first.status == 401
            expect(page.locator("#signin-form")).to_be_visible()
            expect(page.locator("#app")).to_be_hidden()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-signin.png"))
            page.fill("#key", "fqd_not-a-key")
            page.click("#signin-submit")
            expect(page.locator("#signin-error")).to_have_text("Unknown API key.")
            page.fill("#key", key)
            page.click("#signin-submit")
            expect(page.locator("#app")).to_be_visible()
            expect(page.locator("#who")).to_have_text("signed in as admin (admin)")
            session = [c for c in context.cookies() if c["name"] == COOKIE]
            assert len(session) == 1 and session[0]["httpOnly"]
            assert session[0]["sameSite"] == "Strict" and key not in session[0]["value"]
            expect(page.locator("#health")).to_have_attribute("data-level", "ok")
            expect(page.locator("#workers-body .ready:not(.no)")).to_have_count(1)

            # Some history, so the counts and the chart have something to show.
            for i in range(8):
                enqueue("echo", {"question": f"warm-up {i}"})

            # ---- a job appears, runs (events live), completes ---------------------------
            hello = enqueue("hello", {"question": "browser"})
            expect(row(hello)).to_be_visible()
            expect(row(hello)).to_have_attribute("data-status", "active")
            row(hello).click()
            detail = page.locator("#detail")
            expect(detail).to_have_attribute("data-job-id", hello)
            expect(page.locator('#detail-events li[data-event="started"]')).to_have_count(1)
            expect(page.locator("#events-state")).to_have_text("· live")
            expect(page.locator('#detail-events li[data-event="end"]')).to_have_count(1)
            expect(row(hello)).to_have_attribute("data-status", "completed")
            expect(page.locator("#detail-status")).to_have_text("completed")
            expect(page.locator("#detail-result")).to_have_text('"Hello browser"')
            expect(page.locator("#detail-nodes .node")).to_have_count(2)
            expect(page.locator("#detail-inputs")).to_contain_text('"question": "browser"')

            # ---- a branch not taken: its node says skipped, and why ----------------------
            routed = enqueue("route", {"question": "n"})
            expect(row(routed)).to_have_attribute("data-status", "completed")
            row(routed).click()
            expect(detail).to_have_attribute("data-job-id", routed)
            skipped = page.locator('#detail-nodes .node[data-node-id="not_taken"]')
            expect(skipped.locator(".badge")).to_have_text("skipped")
            expect(skipped.locator("pre")).to_have_text("pick chose 'no'")
            expect(page.locator('#detail-nodes .node[data-node-id="taken"] .badge')).to_have_text(
                "finished"
            )

            # ---- cancel a running job ---------------------------------------------------
            slow = enqueue("slow")
            expect(row(slow)).to_have_attribute("data-status", "active")
            row(slow).locator('button[data-action="cancel"]').click()
            expect(row(slow)).to_have_attribute("data-status", "cancelled")
            assert client.get(f"/api/v1/jobs/{slow}").json()["status"] == "cancelled"

            # ---- retry a failed job, once its cause is fixed ------------------------------
            fetch = enqueue("fetch")
            expect(row(fetch)).to_have_attribute("data-status", "failed")
            row(fetch).click()
            expect(page.locator("#detail-error")).to_contain_text(f":{fixable_port}/status")
            with serving(fixable_port):
                page.click("#detail-retry")
                expect(row(fetch)).to_have_attribute("data-status", "completed")
                expect(page.locator("#detail-status")).to_have_text("completed")
            job = client.get(f"/api/v1/jobs/{fetch}").json()
            assert job["status"] == "completed" and job["result"]["json"] == {"service": "up"}

            # A failure left in place: the page should say the queue needs attention.
            broken = enqueue("broken")
            expect(row(broken)).to_have_attribute("data-status", "failed")
            expect(page.locator("#health")).to_have_attribute("data-level", "warn")
            expect(page.locator("#reasons")).to_contain_text("failed in the last 5 minutes")
            expect(page.locator("#count-failed")).to_have_text("1")
            expect(page.locator("#count-cancelled")).to_have_text("1")

            # ---- search by flow and by id; a state's own list -----------------------------
            rows = page.locator("#jobs-body tr[data-job-id]")
            page.fill("#search", "fetch")
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-job-id", fetch)
            page.fill("#search", slow[:10])
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-job-id", slow)
            page.fill("#search", "")
            expect(rows).to_have_count(13)
            page.click('.count[data-state="cancelled"]')
            expect(rows).to_have_count(1)
            page.click('#tabs [data-tab="all"]')
            expect(rows).to_have_count(13)

            # ---- pause and resume ---------------------------------------------------------
            page.click("#pause-btn")
            expect(page.locator("#pause-btn")).to_have_text("Resume queue")
            expect(page.locator("#reasons")).to_contain_text("Queue paused")
            assert client.get("/api/v1/queue").json()["paused"] is True
            page.click("#pause-btn")
            expect(page.locator("#pause-btn")).to_have_text("Pause queue")
            assert client.get("/api/v1/queue").json()["paused"] is False

            # ---- throughput and the picture -----------------------------------------------
            expect(page.locator("#chart rect.completed")).not_to_have_count(0)
            expect(page.locator("#rate-completed")).not_to_have_text("\u2013")  # "no data"
            row(hello).click()
            expect(page.locator('#detail-events li[data-event="end"]')).to_have_count(1)
            # The last action's notice would cover the detail panel in the picture.
            page.locator("#toast").evaluate("toast => { toast.hidden = true; }")
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # ---- sign out -----------------------------------------------------------------
            page.click("#sign-out")
            expect(page.locator("#signin-form")).to_be_visible()
            assert not [c for c in context.cookies() if c["name"] == COOKIE]
        finally:
            context.close()
    assert not problems, problems


async def test_dashboard_in_a_real_browser(tmp_path: Path) -> None:
    need_browser()
    key = new_key()
    fixable_port, closed_port = free_port(), free_port()
    args = [
        "--role",
        "all",
        "--set",
        "dashboard.enabled=true",
        "--set",
        "server.port=0",
        "--set",
        "worker.health_port=0",
        "--set",
        f"auth.keys=admin:{hash_key(key)}:admin",
        # With keys, loopback is refused to the http node unless allowed (egress.private).
        "--set",
        "egress.allow=127.0.0.1",
    ]
    with trio.fail_after(150):
        async with start_daemon(args, cwd=str(tmp_path)) as daemon:
            async with httpx.AsyncClient(
                base_url=daemon.api, timeout=10, headers={"Authorization": f"Bearer {key}"}
            ) as client:
                for flow_id, document in flows(fixable_port, closed_port).items():
                    response = await client.put(f"/api/v1/flows/{flow_id}", json=document)
                    assert response.status_code == 200, response.text
            profile = tmp_path / "chromium-profile"
            profile.mkdir()
            # Playwright's waits bound the thread (WAIT_MS each); trio cannot cancel it.
            await trio.to_thread.run_sync(run_browser, daemon.api, key, fixable_port, profile)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
