"""A prediction's ``history``: Flowise's entries are accepted in both spellings, any
other entry is a 422 naming its path (before a job is made)."""

from __future__ import annotations

import trio

from tests.api.conftest import open_api


async def test_a_malformed_history_entry_is_422_naming_each() -> None:
    history = [
        {"role": "userMessage", "content": "a"},
        {"role": "bot", "content": "b"},
        "just text",
        {"type": "apiMessage", "message": "ok"},
        {"role": "apiMessage", "content": 5},
    ]
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/prediction/echo", json={"question": "q", "history": history}
            )
            assert response.status_code == 422, response.text
            problems = response.json()["problems"]
            assert [p["path"] for p in problems] == ["$.history[1]", "$.history[2]", "$.history[4]"]
            assert "userMessage" in problems[0]["message"]
            listing = await api.client.get("/api/v1/jobs", params={"status": "completed"})
            assert listing.json()["jobs"] == []


async def test_flowise_history_entries_are_accepted() -> None:
    history = [
        {"role": "userMessage", "content": "a"},
        {"type": "apiMessage", "message": "b"},
    ]
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/prediction/echo", json={"question": "q", "history": history}
            )
            assert response.status_code == 200, response.text
            assert response.json()["text"] == "q"
