"""docs/chat.md's chatbot, run as written: a main and a worker process on Redis.

The flow is read from the page (only its LLM server's address is replaced),
so the page cannot drift from what runs. The model is a local
OpenAI-compatible server that answers from what it was sent: offered tools
and not yet given a result, it calls ``weather`` for the city the user said
they live in (anywhere in the messages, earlier turns included); otherwise it
echoes every message back. So the second answer can only name Paris if the
first turn reached the model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from tests.daemonproc import start_daemon
from tests.flows.httpserver import (
    Request,
    open_http_server,
    send_head,
    text_answer,
    tool_calls_answer,
)
from tests.redisproc import RedisServer

CHAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "chat.md"
FIRST = "Hi, I am Ada and I live in Paris."
SECOND = "What is the weather like where I live?"


def documented_flow(base_url: str) -> dict[str, Any]:
    """The page's flow document, its llm nodes pointed at ``base_url``."""
    blocks = re.findall(r"```json\n(.*?)```", CHAT_DOC.read_text(), flags=re.S)
    # The other JSON blocks are answers, abridged with "…".
    flows = [orjson.loads(block) for block in blocks if '"nodes"' in block]
    assert len(flows) == 1, "docs/chat.md shows one flow document"
    flow: dict[str, Any] = flows[0]
    for node in flow["nodes"]:
        if node["type"] == "llm":
            node["params"]["base_url"] = base_url
    return flow


def heard(messages: list[dict[str, Any]]) -> str:
    return " | ".join(f"{m['role']}: {m['content']}" for m in messages if m.get("content"))


async def echo_model(request: Request, stream: trio.SocketStream) -> None:
    body = request.json()
    messages = body["messages"]
    if body.get("tools") and not any(m["role"] == "tool" for m in messages):
        said = " ".join(m["content"] for m in messages if m["role"] == "user")
        found = re.search(r"live in (\w+)", said)
        arguments = orjson.dumps({"city": found[1] if found else "nowhere"}).decode()
        reply = tool_calls_answer(("call-1", "weather", [arguments]), usage=(30, 8))
    else:
        reply = text_answer(["heard ", heard(messages)], usage=(50, 12))
    await send_head(stream, 200, [("Content-Type", "text/event-stream")])
    await stream.send_all(reply)


def statuses(job: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(n["nodeId"], n["status"], n.get("calledBy")) for n in job["nodes"]]


async def test_the_documented_chatbot_remembers_routes_and_calls_its_tool(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with open_http_server(echo_model) as model:
            flows = tmp_path / "flows"
            flows.mkdir()
            (flows / "support.json").write_bytes(orjson.dumps(documented_flow(f"{model.url}/v1")))
            env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
            async with (
                start_daemon(
                    ["--role", "main", "--set", f"flows.paths={flows}"], env=env, cwd=str(tmp_path)
                ) as main,
                start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)),
                httpx.AsyncClient(base_url=main.api, timeout=30) as client,
            ):

                async def ask(question: str) -> dict[str, Any]:
                    response = await client.post(
                        "/api/v1/prediction/support",
                        json={
                            "question": question,
                            "chatId": "c-1",
                            "overrideConfig": {"sessionId": "ada-1"},
                        },
                    )
                    assert response.status_code == 200, response.text
                    answer: dict[str, Any] = response.json()
                    assert answer["sessionId"] == "ada-1" and answer["chatId"] == "c-1"
                    return answer

                first = await ask(FIRST)
                assert first["text"] == (
                    f"heard system: You are a friendly assistant. | user: {FIRST}"
                )
                second = await ask(SECOND)
                # The tool's argument came from the first turn, through memory.
                assert "tool: sunny and 21 degrees in Paris" in second["text"]
                assert (
                    f"user: {FIRST} | assistant: {first['text']} | user: {SECOND}"
                    in (second["text"])
                )

                chat, offered, answered = (r.json() for r in model.requests)
                assert "tools" not in chat
                assert [t["function"]["name"] for t in offered["tools"]] == ["weather"]
                assert [m["role"] for m in offered["messages"]] == [
                    "system",
                    "user",
                    "assistant",
                    "user",
                ]
                assert answered["messages"][-1]["content"] == "sunny and 21 degrees in Paris"

                jobs = [
                    (await client.get(f"/api/v1/jobs/{a['executionId']}")).json()
                    for a in (first, second)
                ]
                assert statuses(jobs[0]) == [
                    ("route", "FINISHED", None),
                    ("forecast", "SKIPPED", None),
                    ("chat", "FINISHED", None),
                ]
                assert statuses(jobs[1]) == [
                    ("route", "FINISHED", None),
                    ("chat", "SKIPPED", None),
                    ("weather", "FINISHED", "forecast"),
                    ("forecast", "FINISHED", None),
                ]
                assert jobs[1]["usage"]["total_tokens"] == 30 + 8 + 50 + 12

                listed = await client.get(
                    "/api/v1/chatmessage/support", params={"sessionId": "ada-1"}
                )
                assert listed.status_code == 200
                messages = listed.json()
                assert [(m["role"], m["content"]) for m in messages] == [
                    ("userMessage", FIRST),
                    ("apiMessage", first["text"]),
                    ("userMessage", SECOND),
                    ("apiMessage", second["text"]),
                ]
                assert {m["executionId"] for m in messages[2:]} == {second["executionId"]}
                cleared = await client.delete(
                    "/api/v1/chatmessage/support", params={"sessionId": "ada-1"}
                )
                assert cleared.json() == {"raw": [], "affected": 4}
