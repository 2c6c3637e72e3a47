"""Progress and priority on the dashboard, in Debian's headless Chromium, on a real daemon.

A plugin (loaded from ``plugins.paths``) reports progress and runs on; the
job list and the job's detail show how far it is, and follow it when it
moves. Assertions are on the page (playwright's waits bound each one).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import trio

from flowqd.auth import hash_key, new_key
from tests.daemonproc import start_daemon
from tests.dashboard.test_browser import ARTIFACTS, CHROMIUM, LAUNCH_ARGS, WAIT_MS, need_browser
from tests.dashboard.test_browser_admin import Session

PLUGIN = textwrap.dedent("""
    import attrs
    import trio

    from flowqd import Executor, hookimpl


    @attrs.frozen
    class NoParams:
        pass


    async def steps(ctx):
        ctx.progress(0.4)
        await trio.sleep(1.5)
        ctx.progress(0.8)
        await trio.sleep(600)  # until cancelled


    async def counted(ctx):
        ctx.progress({"done": 3, "of": 10})
        await trio.sleep(600)


    @hookimpl
    def flowqd_executors():
        return [
            Executor(type="steps", params=NoParams, run=steps, description="40%, then 80%"),
            Executor(type="counted", params=NoParams, run=counted, description="3 of 10"),
        ]
""")


def run_browser(api: str, key: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            s = Session(browser, api, key, problems)
            page = s.page
            steps = s.enqueue("steps")
            counted = s.enqueue("counted", priority=5)
            expect(s.row(steps)).to_have_attribute("data-status", "active")
            expect(s.row(counted).locator(".progress")).to_have_text(" 3 / 10")
            expect(s.row(counted).locator(".priority")).to_have_text(" p5")
            expect(s.row(steps).locator(".priority")).to_have_count(0)  # 0: nothing shown
            # It moves on: the list and the open detail follow.
            s.row(steps).click()
            expect(page.locator("#detail")).to_have_attribute("data-job-id", steps)
            expect(page.locator('#detail-facts dd[data-fact="progress"]')).to_have_text("80%")
            expect(s.row(steps).locator(".progress")).to_have_text(" 80%")
            expect(page.locator('#detail-events li[data-event="progress"]')).to_have_count(2)
            expect(page.locator('#detail-facts dd[data-fact="priority"]')).to_have_text(
                "0 (default)"
            )
            s.row(counted).click()
            expect(page.locator('#detail-facts dd[data-fact="progress"]')).to_have_text("3 / 10")
            expect(page.locator('#detail-facts dd[data-fact="priority"]')).to_have_text(
                "5 (higher runs first)"
            )
            page.locator("#toast").evaluate("toast => { toast.hidden = true; }")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-progress.png"))
            for job_id in (steps, counted):
                s.row(job_id).locator('button[data-action="cancel"]').click()
                expect(s.row(job_id)).to_have_attribute("data-status", "cancelled")
                # An ended job's row no longer shows progress; its record keeps it.
                expect(s.row(job_id).locator(".progress")).to_have_count(0)
            assert s.client.get(f"/api/v1/jobs/{steps}").json()["progress"] == 0.8
            s.close()
        finally:
            browser.close()
    assert not problems, problems


async def test_progress_and_priority_on_the_dashboard(tmp_path: Path) -> None:
    need_browser()
    key = new_key()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "progress_steps.py").write_text(PLUGIN)
    args = [
        "--role",
        "all",
        "--set",
        "dashboard.enabled=true",
        "--set",
        f"auth.keys=admin:{hash_key(key)}:admin",
        "--set",
        f"plugins.paths={plugins}",
    ]
    with trio.fail_after(120):
        async with start_daemon(args, cwd=str(tmp_path)) as daemon:
            async with httpx.AsyncClient(
                base_url=daemon.api, timeout=10, headers={"Authorization": f"Bearer {key}"}
            ) as client:
                for flow_id in ("steps", "counted"):
                    document = {"nodes": [{"id": "n", "type": flow_id}], "output": "n"}
                    response = await client.put(f"/api/v1/flows/{flow_id}", json=document)
                    assert response.status_code in (200, 201), response.text
            await trio.to_thread.run_sync(run_browser, daemon.api, key)
