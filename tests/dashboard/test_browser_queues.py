"""The dashboard with two queues, in Debian's headless Chromium: every queue shown,
one picked, its jobs listed and its pause button acting on it alone.

A real daemon (``--role all``, two worker pools); the browser runs in a worker
thread as in test_browser.py, every wait bounded by playwright's timeouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.daemonproc import start_daemon
from tests.dashboard.test_browser import CHROMIUM, LAUNCH_ARGS, WAIT_MS, need_browser

DEFAULT, BULK = "flowqd-queue", "bulk"
FLOWS: dict[str, dict[str, Any]] = {
    "echo": {"nodes": [{"id": "say", "type": "echo"}], "output": "say"},
    "bulk-echo": {"queue": BULK, "nodes": [{"id": "say", "type": "echo"}], "output": "say"},
}


def run_browser(api: str, profile: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    problems: list[str] = []
    with sync_playwright() as pw, httpx.Client(base_url=api, timeout=10) as client:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        try:
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

            def enqueue(flow: str, n: int) -> list[str]:
                body = {"jobs": [{"flow": flow, "inputs": {"question": str(i)}} for i in range(n)]}
                answer = client.post("/api/v1/jobs", json=body)
                assert answer.status_code == 202, answer.text
                return [j["id"] for j in answer.json()["jobs"]]

            in_default = enqueue("echo", 2)
            in_bulk = enqueue("bulk-echo", 3)
            page.goto(f"{api}/admin/queues")
            expect(page.locator("#app")).to_be_visible()
            # Every queue in the overview, with its own counts.
            select = page.locator("#queue-select")
            expect(select).to_be_visible()
            expect(select.locator("option")).to_have_count(2)
            expect(select).to_have_value(DEFAULT)
            default_row = page.locator(f'#queues-body tr[data-queue="{DEFAULT}"]')
            bulk_row = page.locator(f'#queues-body tr[data-queue="{BULK}"]')
            expect(default_row.locator('td[data-state="completed"]')).to_have_text("2")
            expect(bulk_row.locator('td[data-state="completed"]')).to_have_text("3")
            # The default queue's jobs only, until another queue is picked.
            rows = page.locator("#jobs-body tr[data-job-id]")
            expect(rows).to_have_count(2)
            assert {rows.nth(i).get_attribute("data-job-id") for i in range(2)} == set(in_default)
            select.select_option(BULK)
            expect(rows).to_have_count(3)
            assert {rows.nth(i).get_attribute("data-job-id") for i in range(3)} == set(in_bulk)
            expect(page.locator("#count-completed")).to_have_text("3")
            rows.first.click()
            expect(page.locator("#detail-facts")).to_contain_text(BULK)
            # Pausing acts on the queue shown, and on no other.
            page.click("#pause-btn")
            expect(page.locator("#pause-btn")).to_have_text("Resume queue")
            expect(bulk_row.locator(".ready")).to_have_text("paused")
            expect(default_row.locator(".ready")).to_have_text("running")
            assert client.get("/api/v1/queue", params={"queue": BULK}).json()["paused"] is True
            assert client.get("/api/v1/queue").json()["paused"] is False
            # A row of the overview picks its queue too.
            default_row.click()
            expect(select).to_have_value(DEFAULT)
            expect(rows).to_have_count(2)
            expect(page.locator("#pause-btn")).to_have_text("Pause queue")
        finally:
            context.close()
    assert not problems, problems


async def test_dashboard_shows_and_filters_every_queue(tmp_path: Path) -> None:
    need_browser()
    config = tmp_path / "flowqd.toml"
    config.write_text(f"[queues.{BULK}]\n")
    args = [
        "--role",
        "all",
        "--config",
        str(config),
        "--queues",
        f"{DEFAULT},{BULK}",
        "--set",
        "dashboard.enabled=true",
    ]
    with trio.fail_after(120):
        async with start_daemon(args, cwd=str(tmp_path)) as daemon:
            async with httpx.AsyncClient(base_url=daemon.api, timeout=10) as client:
                for flow_id, document in FLOWS.items():
                    response = await client.put(f"/api/v1/flows/{flow_id}", json=document)
                    assert response.status_code == 200, response.text
            profile = tmp_path / "chromium-profile"
            profile.mkdir()
            await trio.to_thread.run_sync(run_browser, daemon.api, profile)
