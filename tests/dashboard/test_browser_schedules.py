"""The dashboard's Schedules panel in Debian's headless Chromium, on a real daemon.

An admin sees every schedule with its next run, pauses and resumes one, adds
one with the form, deletes one (asked twice), and sees an every-second
schedule's jobs run; a non-admin key sees no panel. Assertions are on the page
(playwright's waits bound each one); nothing sleeps.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from flowqd.auth import hash_key, new_key
from tests.daemonproc import start_daemon
from tests.dashboard.test_browser import ARTIFACTS, CHROMIUM, LAUNCH_ARGS, WAIT_MS, need_browser
from tests.dashboard.test_browser_admin import Session

ECHO = {"nodes": [{"id": "say", "type": "echo", "label": "Echo"}], "output": "say"}


def schedules_tour(s: Session) -> None:
    from playwright.sync_api import expect

    page = s.page
    panel = page.locator("#schedules-panel")
    expect(panel).to_be_visible()
    nightly = page.locator('#schedules-body tr[data-schedule-id="nightly"]')
    expect(nightly.locator("td").nth(2)).to_have_text("0 3 * * * (Europe/Paris)")
    expect(nightly.locator(".next-run")).to_contain_text("in ")
    expect(page.locator("#schedules-summary")).to_have_text("2 schedules")

    # ---- pause and resume ----------------------------------------------------------
    nightly.locator('button[data-sched-action="pause"]').click()
    expect(nightly).to_have_attribute("data-paused", "true")
    expect(nightly.locator(".next-run")).to_have_text("paused")
    expect(page.locator("#schedules-summary")).to_have_text("2 schedules, 1 paused")
    assert s.client.get("/api/v1/schedules/nightly").json()["paused"] is True
    nightly.locator('button[data-sched-action="resume"]').click()
    expect(nightly).to_have_attribute("data-paused", "false")

    # ---- the every-second schedule's jobs run ----------------------------------------
    ticking = page.locator('#schedules-body tr[data-schedule-id="ticking"]')
    expect(ticking.locator("td").nth(2)).to_have_text("every 1 s")
    expect(ticking.locator("td").nth(4)).not_to_have_text("\u2013")  # a tick was claimed
    expect(page.locator('#jobs-body tr[data-job-id^="sched:ticking:"]').first).to_be_visible()

    # ---- add one with the form -------------------------------------------------------
    page.fill("#sched-id", "weekly")
    page.fill("#sched-flow", "echo")
    page.fill("#sched-when", "0 8 * * 1")
    page.fill("#sched-zone", "Asia/Tokyo")
    page.fill("#sched-inputs", '{"question": "monday"}')
    page.click("#sched-add")
    expect(page.locator("#toast")).to_contain_text("Schedule weekly saved.")
    weekly = page.locator('#schedules-body tr[data-schedule-id="weekly"]')
    expect(weekly.locator("td").nth(2)).to_have_text("0 8 * * 1 (Asia/Tokyo)")
    made = s.client.get("/api/v1/schedules/weekly").json()
    assert made["inputs"] == {"question": "monday"} and made["owner"] == "admin"
    # A bad one: the API's message, naming the path, in the toast.
    page.fill("#sched-id", "bad")
    page.fill("#sched-flow", "echo")
    page.fill("#sched-when", "not cron")
    page.click("#sched-add")
    expect(page.locator("#toast")).to_contain_text("$.cron")

    # ---- delete: asked twice ---------------------------------------------------------
    delete = weekly.locator('button[data-sched-action="delete"]')
    delete.click()
    expect(delete).to_have_text("Delete for good?")
    delete.click()
    expect(weekly).to_have_count(0)
    assert s.client.get("/api/v1/schedules/weekly").status_code == 404
    page.screenshot(path=str(ARTIFACTS / "dashboard-schedules.png"), full_page=True)


def run_browser(api: str, admin_key: str, alice_key: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    problems: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            admin = Session(browser, api, admin_key, problems)
            schedules_tour(admin)
            alice = Session(browser, api, alice_key, problems)
            expect(alice.page.locator("#jobs-body")).to_be_attached()
            expect(alice.page.locator("#schedules-panel")).to_be_hidden()
            admin.close()
            alice.close()
        finally:
            browser.close()
    # No script error; Session lets the failed PUT's "Failed to load resource" pass.
    assert not problems, problems


async def test_schedules_panel(tmp_path: Path) -> None:
    need_browser()
    admin_key, alice_key = new_key(), new_key()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"admin:{hash_key(admin_key)}:admin\nalice:{hash_key(alice_key)}\n")
    args = [
        "--role",
        "all",
        "--set",
        "dashboard.enabled=true",
        "--set",
        f"auth.keys_file={keys_file}",
    ]
    with trio.fail_after(120):
        async with start_daemon(args, cwd=str(tmp_path)) as daemon:
            async with httpx.AsyncClient(
                base_url=daemon.api, timeout=10, headers={"Authorization": f"Bearer {admin_key}"}
            ) as client:
                assert (await client.put("/api/v1/flows/echo", json=ECHO)).status_code == 200
                for sid, body in (
                    ("nightly", {"flow": "echo", "cron": "0 3 * * *", "timezone": "Europe/Paris"}),
                    ("ticking", {"flow": "echo", "interval_s": 1, "inputs": {"question": "t"}}),
                ):
                    made = await client.put(f"/api/v1/schedules/{sid}", json=body)
                    assert made.status_code == 200, made.text
            # Playwright's waits bound the thread (WAIT_MS each); trio cannot cancel it.
            await trio.to_thread.run_sync(run_browser, daemon.api, admin_key, alice_key)
