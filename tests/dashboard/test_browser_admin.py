"""The dashboard's bull-board features in Debian's headless Chromium, on a real daemon.

An admin retries every failed job, cleans a state, deletes and promotes a job,
reads a failing node's traceback; a retried job's detail shows both runs; the
event list keeps its last event in view; the page fits a 420 px window; counts
read "1 job", not "1 jobs". A non-admin key sees its own jobs and no
queue-wide figures, and no traceback. Assertions are on the page (playwright's
waits bound each one); nothing sleeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from flowqd.auth import hash_key, new_key
from tests.daemonproc import start_daemon
from tests.dashboard.test_browser import (
    ARTIFACTS,
    CHROMIUM,
    LAUNCH_ARGS,
    WAIT_MS,
    free_port,
    need_browser,
)

# A chain of nodes: about a hundred events, more than the event list shows at once.
CHAIN = 48


def flows(closed_port: int) -> dict[str, dict[str, Any]]:
    chain = [{"id": "n0", "type": "echo", "label": "Step 0"}] + [
        {
            "id": f"n{i}",
            "type": "template",
            "label": f"Step {i}",
            "params": {"template": "{q}."},
            "inputs": {"q": f"n{i - 1}"},
        }
        for i in range(1, CHAIN)
    ]
    return {
        "echo": {"nodes": [{"id": "say", "type": "echo", "label": "Echo"}], "output": "say"},
        "chain": {"nodes": chain, "output": f"n{CHAIN - 1}"},
        "slow": {
            "nodes": [{"id": "wait", "type": "delay", "params": {"ms": 120_000}}],
            "output": "wait",
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


class Session:
    """One signed-in browser page and an API client with the same key."""

    def __init__(self, browser: Any, api: str, key: str, problems: list[str]) -> None:
        from playwright.sync_api import expect

        self.context = browser.new_context(
            viewport={"width": 1440, "height": 960}, color_scheme="light"
        )
        self.context.set_default_timeout(WAIT_MS)
        self.page = page = self.context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda m: (
                problems.append(f"console: {m.text}")
                if m.type == "error" and "Failed to load resource" not in m.text
                else None
            ),
        )
        self.client = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        page.goto(f"{api}/admin/queues")
        page.fill("#key", key)
        page.click("#signin-submit")
        expect(page.locator("#app")).to_be_visible()

    def enqueue(self, flow: str, **extra: Any) -> str:
        response = self.client.post(
            "/api/v1/jobs", json={"flow": flow, "inputs": {"question": "q"}, **extra}
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def row(self, job_id: str) -> Any:
        return self.page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')

    def close(self) -> None:
        self.client.close()
        self.context.close()


def admin_tour(s: Session) -> None:
    from playwright.sync_api import expect

    page = s.page
    expect(page.locator("#admin-actions")).to_be_visible()
    expect(page.locator("#workers-summary")).to_have_text("1 of 1 worker ready · 0 jobs held")

    # ---- a failing node's traceback -------------------------------------------------
    failed = [s.enqueue("broken") for _ in range(3)]
    for job_id in failed:
        expect(s.row(job_id)).to_have_attribute("data-status", "failed")
    expect(page.locator("#count-failed")).to_have_text("3")
    s.row(failed[0]).click()
    expect(page.locator("#detail-trace")).to_be_visible()
    page.click("#detail-trace summary")
    expect(page.locator("#detail-traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator('#detail-events li[data-event="error"]')).to_have_count(1)

    # ---- retry all failed: the detail keeps the first run's events ------------------------
    page.click("#retry-all")
    expect(page.locator("#retry-all")).to_have_text("Retry every failed job?")
    page.click("#retry-all")
    expect(page.locator("#toast")).to_contain_text("3 failed jobs queued again.")
    for job_id in failed:
        expect(s.row(job_id).locator("td").nth(3)).to_have_text("2 / 2")
        expect(s.row(job_id)).to_have_attribute("data-status", "failed")
    events = page.locator("#detail-events li")
    expect(page.locator('#detail-events li[data-event="retried"]')).to_have_count(1)
    expect(page.locator('#detail-events li[data-event="error"]')).to_have_count(2)
    expect(page.locator('#detail-events li[data-event="started"]')).to_have_count(2)
    expect(events.last).to_have_attribute("data-event", "error")
    expect(page.locator("#events-state")).to_have_text("· ended")
    expect(page.locator("#detail-facts")).to_contain_text("2 of 2")

    # ---- the event list scrolls, its last event in view ------------------------------------
    chain = s.enqueue("chain")
    s.row(chain).click()
    expect(page.locator("#detail")).to_have_attribute("data-job-id", chain)
    expect(page.locator('#detail-events li[data-event="end"]')).to_have_count(1)
    expect(events).to_have_count(2 + 2 * CHAIN)
    view = page.evaluate(
        """() => {
          // The panel sticks below the header once the page is scrolled down to it.
          window.scrollTo(0, document.documentElement.scrollHeight);
          const list = document.getElementById("detail-events");
          const last = list.lastElementChild.getBoundingClientRect();
          const box = list.getBoundingClientRect();
          const panel = document.getElementById("detail").getBoundingClientRect();
          return {scrolls: list.scrollHeight > list.clientHeight,
                  atEnd: list.scrollTop + list.clientHeight >= list.scrollHeight - 2,
                  lastInList: last.bottom <= box.bottom + 1 && last.top >= box.top - 1,
                  listInPanel: box.bottom <= panel.bottom + 1,
                  panelInWindow: panel.bottom <= window.innerHeight + 1};
        }"""
    )
    assert view == {
        "scrolls": True,
        "atEnd": True,
        "lastInList": True,
        "listInPanel": True,
        "panelInWindow": True,
    }, view

    # ---- promote a delayed job; delete one -----------------------------------------------
    later = s.enqueue("echo", delay_s=3600)
    expect(s.row(later)).to_have_attribute("data-status", "delayed")
    s.row(later).locator('button[data-action="promote"]').click()
    expect(s.row(later)).to_have_attribute("data-status", "completed")
    s.row(later).click()
    expect(page.locator("#detail")).to_have_attribute("data-job-id", later)
    page.click("#detail-delete")
    expect(page.locator("#detail-delete")).to_have_text("Delete for good?")
    page.click("#detail-delete")
    expect(s.row(later)).to_have_count(0)
    expect(page.locator("#detail")).to_be_hidden()
    assert s.client.get(f"/api/v1/jobs/{later}").status_code == 404

    # ---- "1 job waiting": one slot, held by a long job -------------------------------------
    slow = s.enqueue("slow")
    expect(s.row(slow)).to_have_attribute("data-status", "active")
    waiting = s.enqueue("echo")
    expect(page.locator("#reasons")).to_contain_text("Workers at full capacity with 1 job waiting")
    expect(page.locator("#workers-summary")).to_have_text("1 of 1 worker ready · 1 job held")
    s.row(slow).locator('button[data-action="cancel"]').click()
    expect(s.row(waiting)).to_have_attribute("data-status", "completed")

    # ---- clean a state --------------------------------------------------------------------
    expect(page.locator("#count-completed")).not_to_have_text("0")
    page.select_option("#clean-state", "completed")
    page.click("#clean-btn")
    page.click("#clean-btn")
    expect(page.locator("#count-completed")).to_have_text("0")
    expect(page.locator('#jobs-body tr[data-status="completed"]')).to_have_count(0)
    assert s.client.get("/api/v1/queue").json()["counts"]["completed"] == 0
    expect(page.locator("#count-failed")).to_have_text("3")

    # ---- a 420 px window: the header wraps, nothing overflows sideways -----------------------
    s.row(failed[1]).click()
    expect(page.locator("#detail")).to_have_attribute("data-job-id", failed[1])
    page.locator("#toast").evaluate("toast => { toast.hidden = true; }")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-admin.png"))
    page.set_viewport_size({"width": 420, "height": 860})
    expect(page.locator("#sign-out")).to_be_in_viewport()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 420, width
    box = page.locator("#sign-out").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 420, box
    page.screenshot(path=str(ARTIFACTS / "dashboard-420.png"), full_page=True)


def non_admin_tour(s: Session, admin: Session) -> None:
    from playwright.sync_api import expect

    page = s.page
    mine = s.enqueue("broken")
    theirs = admin.enqueue("echo")
    expect(s.row(mine)).to_have_attribute("data-status", "failed")
    expect(page.locator("#scope-note")).to_be_visible()
    for hidden in ("#counts", "#throughput-panel", "#admin-actions"):
        expect(page.locator(hidden)).to_be_hidden()
    # The tabs name the states without numbers; only her own job is listed.
    expect(page.locator('#tabs [data-tab="all"]')).to_have_text("All")
    expect(page.locator('#tabs [data-tab="failed"]')).to_have_text("Failed")
    expect(page.locator("#jobs-body tr[data-job-id]")).to_have_count(1)
    expect(s.row(theirs)).to_have_count(0)
    expect(page.locator("#workers-body td").nth(2)).to_have_text("\u2013")  # "unknown"
    expect(page.locator("#workers-summary")).to_have_text("1 of 1 worker ready")
    s.row(mine).click()
    expect(page.locator("#detail-error")).to_be_visible()
    expect(page.locator("#detail-trace")).to_have_count(0)
    expect(page.locator("#detail-delete")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "dashboard-non-admin.png"))
    # Nothing the page received holds one either.
    job = s.client.get(f"/api/v1/jobs/{mine}").json()
    assert "traceback" not in job["error"]


def run_browser(api: str, admin_key: str, alice_key: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            admin = Session(browser, api, admin_key, problems)
            admin_tour(admin)
            alice = Session(browser, api, alice_key, problems)
            non_admin_tour(alice, admin)
            admin.close()
            alice.close()
        finally:
            browser.close()
    assert not problems, problems


async def test_admin_features_and_what_a_non_admin_sees(tmp_path: Path) -> None:
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
        "server.port=0",
        "--set",
        "worker.health_port=0",
        # One slot: a long job fills the workers, so a second one waits.
        "--set",
        "worker.concurrency=1",
        "--set",
        f"auth.keys_file={keys_file}",
        "--set",
        "egress.allow=127.0.0.1",
    ]
    with trio.fail_after(180):
        async with start_daemon(args, cwd=str(tmp_path)) as daemon:
            async with httpx.AsyncClient(
                base_url=daemon.api, timeout=10, headers={"Authorization": f"Bearer {admin_key}"}
            ) as client:
                for flow_id, document in flows(free_port()).items():
                    response = await client.put(f"/api/v1/flows/{flow_id}", json=document)
                    assert response.status_code == 200, response.text
            # Playwright's waits bound the thread (WAIT_MS each); trio cannot cancel it.
            await trio.to_thread.run_sync(run_browser, daemon.api, admin_key, alice_key)
