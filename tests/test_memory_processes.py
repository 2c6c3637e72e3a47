"""Conversation memory across real processes: a main and a worker on Redis, Flowise's
prediction route, and an OpenAI-compatible server on loopback that answers with
what it was sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.daemonproc import start_daemon
from tests.flows.httpserver import Request, chunk, open_http_server, send_head
from tests.redisproc import RedisServer


def chat_flow(base_url: str) -> dict[str, Any]:
    return {
        "id": "chat",
        "nodes": [
            {
                "id": "answer",
                "type": "llm",
                "inputs": {"prompt": "$question"},
                "params": {"base_url": base_url, "model": "echo", "memory": {"turns": 10}},
            }
        ],
        "output": "answer",
    }


async def _echo(request: Request, stream: trio.SocketStream) -> None:
    """Answers with every message it was sent, as ``role: content`` lines."""
    lines = [f"{m['role']}: {m['content']}" for m in request.json()["messages"]]
    await send_head(stream, 200, [("Content-Type", "text/event-stream")])
    await stream.send_all(chunk("\n".join(lines)) + chunk(None, "stop") + b"data: [DONE]\n\n")


async def test_the_second_answer_of_a_session_knows_the_first(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    with trio.fail_after(60):
        async with (
            open_http_server(_echo) as llm,
            start_daemon(["--role", "main"], env=env, cwd=str(tmp_path)) as main,
            start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)),
            httpx.AsyncClient(base_url=main.api, timeout=30) as client,
        ):
            put = await client.put("/api/v1/flows/chat", json=chat_flow(f"{llm.url}/v1"))
            assert put.status_code in (200, 201), put.text

            async def ask(question: str, session: str) -> dict[str, str]:
                body = {"question": question, "overrideConfig": {"sessionId": session}}
                response = await client.post("/api/v1/prediction/chat", json=body)
                assert response.status_code == 200, response.text
                answer: dict[str, str] = response.json()
                return answer

            first = await ask("My name is Ann.", "s-1")
            assert first["text"] == "user: My name is Ann." and first["sessionId"] == "s-1"
            second = await ask("What is my name?", "s-1")
            assert second["text"] == (
                "user: My name is Ann.\nassistant: user: My name is Ann.\nuser: What is my name?"
            )
            # The second LLM request carried the first question and answer.
            assert llm.requests[1].json()["messages"] == [
                {"role": "user", "content": "My name is Ann."},
                {"role": "assistant", "content": "user: My name is Ann."},
                {"role": "user", "content": "What is my name?"},
            ]
            # Another session starts afresh.
            other = await ask("Who am I?", "s-2")
            assert other["text"] == "user: Who am I?"
