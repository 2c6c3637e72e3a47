"""Flowise's chat-message routes on both brokers: read, order, filters, scope by key, delete.

Turns are written through the broker as a worker writes them: a job is
enqueued, claimed and completed with its turn (``Outcome.turn``), so each
turn's date is the test's to choose. The last test writes them through real
predictions instead.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from flowqd.jobs import ConversationKey, JobSpec, Outcome, OutcomeKind, Turn, TurnWrite
from tests.api.conftest import ADMIN_KEY, ALICE_KEY, BOB_KEY, Api, bearer, keyring, open_api

# 2025-01-13T10:00:00Z, and the turns an hour apart after it.
T0 = datetime.datetime(2025, 1, 13, 10, tzinfo=datetime.UTC).timestamp()
HOUR = 3600.0
ROUTE = "/api/v1/chatmessage/echo"


@pytest.fixture(params=["memory", "redis"])
def broker_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {}
    redis_url: str = request.getfixturevalue("redis_url")
    queue_name: str = request.getfixturevalue("queue_name")
    return {"REDIS_URL": redis_url, "QUEUE_NAME": queue_name}


@asynccontextmanager
async def keyed_api(environ: dict[str, str]) -> AsyncIterator[Api]:
    # No worker: the test completes the jobs itself, with the turns it chooses.
    async with open_api(keys=keyring(), worker=False, environ=environ) as api:
        yield api


async def write_turn(
    api: Api,
    owner: str | None,
    session: str,
    question: str,
    answer: str,
    at: float,
    chat_id: str | None = None,
) -> str:
    """Complete a job of ``owner`` with one turn of ``session``, as a worker would."""
    broker = api.broker
    [job_id] = await broker.jobs.enqueue(
        [JobSpec("echo", 1, {"question": question, "sessionId": session}, owner=owner)]
    )
    [claimed] = await broker.work.claim("test-worker", 1, lock_ttl_s=30, block_s=5)
    assert claimed.job.id == job_id
    turn = TurnWrite(
        ConversationKey("echo", session, owner), Turn(job_id, chat_id, question, answer, at)
    )
    outcome = Outcome(job_id, claimed.token, OutcomeKind.COMPLETED, result=answer, turn=turn)
    assert await broker.work.flush([], [outcome]) == [True]
    return job_id


async def messages(api: Api, key: str, flow: str = "echo", **params: str) -> list[dict[str, Any]]:
    response = await api.client.get(
        f"/api/v1/chatmessage/{flow}", params=params, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def contents(found: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in found]


async def alices_two_chats(api: Api) -> list[str]:
    """Session s1: two turns (chat c1, then chat c2); session s2: one turn between them."""
    return [
        await write_turn(api, "alice", "s1", "q1", "a1", T0, chat_id="c1"),
        await write_turn(api, "alice", "s2", "q-other", "a-other", T0 + HOUR, chat_id="c9"),
        await write_turn(api, "alice", "s1", "q2", "a2", T0 + 2 * HOUR, chat_id="c2"),
    ]


async def test_a_conversation_reads_as_flowise_messages_two_a_turn(
    broker_env: dict[str, str],
) -> None:
    with trio.fail_after(30):
        async with keyed_api(broker_env) as api:
            first, _, second = await alices_two_chats(api)
            found = await messages(api, ALICE_KEY, sessionId="s1")
            assert contents(found) == ["q1", "a1", "q2", "a2"]
            assert [m["role"] for m in found] == ["userMessage", "apiMessage"] * 2
            question, answer = found[0], found[1]
            assert question["chatflowid"] == "echo" and question["sessionId"] == "s1"
            assert question["chatId"] == "c1" and found[2]["chatId"] == "c2"
            assert question["chatType"] == "EXTERNAL" and question["memoryType"] is None
            assert question["createdDate"] == "2025-01-13T10:00:00.000Z"
            assert found[3]["createdDate"] == "2025-01-13T12:00:00.000Z"
            assert question["executionId"] == answer["executionId"] == first
            assert found[3]["executionId"] == second
            assert question["sourceDocuments"] is None and answer["usedTools"] is None
            ids = [m["id"] for m in found]
            assert len(set(ids)) == 4
            # Ids are the messages' own: the same on every read.
            assert [m["id"] for m in await messages(api, ALICE_KEY, sessionId="s1")] == ids
            newest_first = await messages(api, ALICE_KEY, sessionId="s1", order="DESC")
            assert contents(newest_first) == ["a2", "q2", "a1", "q1"]
            also = await messages(api, ALICE_KEY, sessionId="s1", sortOrder="desc")
            assert contents(also) == contents(newest_first)
            # No session: every conversation of the key, by date.
            every = await messages(api, ALICE_KEY)
            assert contents(every) == ["q1", "a1", "q-other", "a-other", "q2", "a2"]


async def test_dates_chat_ids_chat_types_and_message_ids_filter(
    broker_env: dict[str, str],
) -> None:
    with trio.fail_after(30):
        async with keyed_api(broker_env) as api:
            await alices_two_chats(api)
            later = await messages(api, ALICE_KEY, startDate="2025-01-13T10:30:00.000Z")
            assert contents(later) == ["q-other", "a-other", "q2", "a2"]
            # Both ends inclusive; a time without an offset is UTC.
            middle = await messages(
                api, ALICE_KEY, startDate="2025-01-13T11:00:00", endDate="2025-01-13T11:00:00Z"
            )
            assert contents(middle) == ["q-other", "a-other"]
            # A date alone is its midnight: nothing on the 13th is before the 13th.
            assert await messages(api, ALICE_KEY, endDate="2025-01-13") == []
            by_chat = await messages(api, ALICE_KEY, chatId="c2")
            assert contents(by_chat) == ["q2", "a2"]
            assert contents(await messages(api, ALICE_KEY, chatId="c1", sessionId="s2")) == []
            assert await messages(api, ALICE_KEY, chatType="INTERNAL") == []
            external = await messages(api, ALICE_KEY, chatType='["INTERNAL","EXTERNAL"]')
            assert len(external) == 6
            one = (await messages(api, ALICE_KEY, sessionId="s1"))[3]
            assert await messages(api, ALICE_KEY, messageId=one["id"]) == [one]
            # Flowise's page and limit page through conversations, most recent first.
            page = await messages(api, ALICE_KEY, page="2", limit="1")
            assert contents(page) == ["q-other", "a-other"]


async def test_a_key_reads_and_clears_only_its_own_conversations(
    broker_env: dict[str, str],
) -> None:
    with trio.fail_after(30):
        async with keyed_api(broker_env) as api:
            await alices_two_chats(api)
            await write_turn(api, "bob", "s1", "bob-q", "bob-a", T0 + 3 * HOUR)
            # The same session id is another conversation under another key.
            assert contents(await messages(api, BOB_KEY, sessionId="s1")) == ["bob-q", "bob-a"]
            assert contents(await messages(api, BOB_KEY)) == ["bob-q", "bob-a"]
            cleared = await api.client.delete(
                ROUTE, params={"sessionId": "s1"}, headers=bearer(BOB_KEY)
            )
            assert cleared.status_code == 200 and cleared.json() == {"raw": [], "affected": 2}
            assert contents(await messages(api, ALICE_KEY, sessionId="s1")) == [
                "q1",
                "a1",
                "q2",
                "a2",
            ]
            nothing = await api.client.delete(
                ROUTE, params={"sessionId": "s1"}, headers=bearer(BOB_KEY)
            )
            assert nothing.json() == {"raw": [], "affected": 0}
            assert await messages(api, BOB_KEY) == []


async def test_an_admin_key_reads_and_clears_every_keys_conversations(
    broker_env: dict[str, str],
) -> None:
    with trio.fail_after(30):
        async with keyed_api(broker_env) as api:
            await alices_two_chats(api)
            await write_turn(api, "bob", "s1", "bob-q", "bob-a", T0 + 3 * HOUR)
            every = await messages(api, ADMIN_KEY)
            alices = ["q1", "a1", "q-other", "a-other", "q2", "a2"]
            assert contents(every) == [*alices, "bob-q", "bob-a"]
            both = await messages(api, ADMIN_KEY, sessionId="s1")
            assert contents(both) == ["q1", "a1", "q2", "a2", "bob-q", "bob-a"]
            cleared = await api.client.delete(
                ROUTE, params={"sessionId": "s1"}, headers=bearer(ADMIN_KEY)
            )
            assert cleared.json() == {"raw": [], "affected": 6}
            assert contents(await messages(api, ADMIN_KEY)) == ["q-other", "a-other"]


async def test_delete_by_session_by_chat_id_and_all(broker_env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with keyed_api(broker_env) as api:
            await alices_two_chats(api)
            await write_turn(api, "alice", "s3", "q3", "a3", T0 + 4 * HOUR, chat_id="c3")
            await write_turn(api, "alice", "s4", "q4", "a4", T0 + 5 * HOUR, chat_id="c4")

            async def delete(**params: str) -> Any:
                response = await api.client.delete(ROUTE, params=params, headers=bearer(ALICE_KEY))
                assert response.status_code == 200, response.text
                return response.json()["affected"]

            assert await delete(sessionId="s2") == 2
            # chatId: every conversation holding a message of that chat, whole.
            assert await delete(chatId="c2") == 4
            assert await delete(chatId="c2") == 0
            assert contents(await messages(api, ALICE_KEY)) == ["q3", "a3", "q4", "a4"]
            assert await delete(chatType="INTERNAL") == 0
            assert await delete() == 4
            assert await messages(api, ALICE_KEY) == []


async def test_bad_parameters_unknown_flows_and_missing_keys_are_refused() -> None:
    with trio.fail_after(30):
        async with keyed_api({}) as api:
            alice = bearer(ALICE_KEY)
            for params, name in [
                ({"order": "sideways"}, "order"),
                ({"startDate": "yesterday"}, "startDate"),
                ({"endDate": "2025-13-45"}, "endDate"),
                ({"startDate": "2025-01-14", "endDate": "2025-01-13"}, "startDate"),
                ({"chatType": "PRIVATE"}, "chatType"),
                ({"chatType": '["EXTERNAL", 3]'}, "chatType"),
                ({"page": "0"}, "page"),
                ({"limit": "-1"}, "limit"),
            ]:
                response = await api.client.get(ROUTE, params=params, headers=alice)
                assert response.status_code == 400, (params, response.text)
                body = response.json()
                assert f"query parameter {name} " in body["message"], body
                assert body["problems"][0]["path"] == name
            for name in ("startDate", "endDate", "messageId"):
                refused = await api.client.delete(ROUTE, params={name: "x"}, headers=alice)
                assert refused.status_code == 400 and name in refused.json()["message"]
            for method in ("GET", "DELETE"):
                unknown = await api.client.request(
                    method, "/api/v1/chatmessage/nope", headers=alice
                )
                assert unknown.status_code == 404
                assert "Chatflow nope not found" in unknown.json()["message"]
                anonymous = await api.client.request(method, ROUTE)
                assert anonymous.status_code == 401
            # Parameters flowqd has nothing for are accepted, as Flowise ignores what it lacks.
            ignored = {"memoryType": "Buffer Memory", "feedback": "true", "hardDelete": "true"}
            assert (await api.client.get(ROUTE, params=ignored, headers=alice)).json() == []


async def test_predictions_of_a_session_list_as_its_messages(broker_env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            answers = []
            for question, chat in (("one", None), ("two", "chat-2")):
                body: dict[str, Any] = {"question": question, "overrideConfig": {"sessionId": "s"}}
                if chat is not None:
                    body["chatId"] = chat
                response = await api.client.post(
                    "/api/v1/prediction/greet", json=body, headers=bearer(ALICE_KEY)
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
            # A chatId alone is the session.
            alone = await api.client.post(
                "/api/v1/prediction/greet",
                json={"question": "three", "chatId": "chat-3"},
                headers=bearer(ALICE_KEY),
            )
            found = await messages(api, ALICE_KEY, "greet", sessionId="s")
            assert contents(found) == ["one", "Hello one", "two", "Hello two"]
            assert [m["chatId"] for m in found] == [answers[0]["chatId"]] * 2 + ["chat-2"] * 2
            assert [m["executionId"] for m in found[::2]] == [a["executionId"] for a in answers]
            by_chat = await messages(api, ALICE_KEY, "greet", sessionId="chat-3")
            assert contents(by_chat) == ["three", "Hello three"]
            assert by_chat[0]["executionId"] == alone.json()["executionId"]
            assert await messages(api, BOB_KEY, "greet", sessionId="s") == []
