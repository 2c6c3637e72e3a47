"""Conversation memory through a real worker loop on every broker kind: the turn a
completed job writes, ``ctx.history`` (stored turns after the request's history),
and what writes no turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from flowqd import Executor, NodeContext
from flowqd.config import PluginsConfig
from flowqd.flows import FlowStore
from flowqd.jobs import ConversationKey, Job, JobSpec, JobStatus
from flowqd.metrics import Registry
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import Broker, open_broker
from flowqd.worker import Worker, WorkerMetrics
from tests.test_worker import make_config, redis_url_of


@attrs.frozen
class RecallParams:
    turns: int | None = None
    fail: bool = False


async def _recall(ctx: NodeContext) -> Any:
    if ctx.params.fail:
        raise RuntimeError("no answer")
    return {"session": ctx.session_id, "history": await ctx.history(ctx.params.turns)}


RECALL = Executor(
    type="recall", params=RecallParams, run=_recall, description="answers with ctx.history"
)
FLOWS = [
    {"id": "chat", "nodes": [{"id": "r", "type": "recall"}], "output": "r"},
    {
        "id": "last",
        "nodes": [{"id": "r", "type": "recall", "params": {"turns": 1}}],
        "output": "r",
    },
    {
        "id": "fails",
        "nodes": [{"id": "r", "type": "recall", "params": {"fail": True}}],
        "output": "r",
    },
]


@attrs.define(eq=False)
class Chat:
    broker: Broker
    flows: FlowStore

    async def ask(self, flow_id: str, owner: str | None = None, **inputs: Any) -> Job:
        version = await self.flows.current_version(flow_id)
        assert version is not None
        spec = JobSpec(flow_id=flow_id, flow_version=version, inputs=inputs, owner=owner)
        [job_id] = await self.broker.jobs.enqueue([spec])
        async with self.broker.jobs.open_event_watch(job_id) as batches:
            async for _ in batches:
                pass  # ends after the terminal event
        job = await self.broker.jobs.get_job(job_id)
        assert job is not None
        return job


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_chat(
    broker_kind: str, request: pytest.FixtureRequest, queue_name: str
) -> Callable[..., AbstractAsyncContextManager[Chat]]:
    redis_url = redis_url_of(broker_kind, request)

    @asynccontextmanager
    async def factory(*overrides: str) -> AsyncIterator[Chat]:
        config = make_config(broker_kind, redis_url, queue_name, *overrides)
        found = collect_executors(load_plugins(PluginsConfig()))
        found["recall"] = RECALL

        async def no_credentials(name: str) -> str:
            raise AssertionError(name)

        async with open_broker(config) as broker, trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            flows = FlowStore(broker.flow_documents, found)
            for doc in FLOWS:
                await flows.put(doc)
            worker = Worker(
                broker.work,
                flows,
                config,
                WorkerMetrics(Registry()),
                credential=no_credentials,
                conversations=broker.conversations,
            )
            shutdown = trio.Event()
            await nursery.start(worker.run, shutdown)
            yield Chat(broker, flows)
            nursery.cancel_scope.cancel()

    return factory


def said(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


async def test_each_completed_job_adds_a_turn_the_next_one_recalls(open_chat: Any) -> None:
    with trio.fail_after(30):
        async with open_chat() as chat:
            first = await chat.ask("chat", question="hi", sessionId="s1", chatId="c1")
            assert first.status == JobStatus.COMPLETED
            assert first.result == {"session": "s1", "history": []}
            second = await chat.ask("chat", question="and?", sessionId="s1", chatId="c2")
            # The first answer as Flowise's text: a result that is not a string, as JSON.
            answer = '{"session":"s1","history":[]}'
            assert second.result == {"session": "s1", "history": said("hi", answer)}
            turns = await chat.broker.conversations.read_turns(ConversationKey("chat", "s1", None))
            assert [(t.job_id, t.chat_id, t.question) for t in turns] == [
                (first.id, "c1", "hi"),
                (second.id, "c2", "and?"),
            ]
            assert turns[0].answer == answer and turns[0].at > 1e9

            # chatId alone names the session; another session, or another API key's
            # conversation of the same session, starts empty.
            other = await chat.ask("chat", question="new", chatId="c9")
            assert other.result == {"session": "c9", "history": []}
            theirs = await chat.ask("chat", owner="k2", question="x", sessionId="s1")
            assert theirs.result == {"session": "s1", "history": []}

            # Jobs without a session, and failed jobs, write no turn.
            loose = await chat.ask("chat", question="loose")
            assert loose.result == {"session": None, "history": []}
            failed = await chat.ask("fails", question="q", sessionId="s1")
            assert failed.status == JobStatus.FAILED
            listed = await chat.broker.conversations.sessions("chat", owner=None)
            assert [k.session for k in listed] == ["c9", "s1"]
            assert await chat.broker.conversations.sessions("fails", owner=None) == []

            # turns: only the last ones (of the conversation of flow "last").
            for n in range(3):
                await chat.ask("last", question=f"q{n}", sessionId="s1")
            job = await chat.ask("last", question="q3", sessionId="s1")
            [user, assistant] = job.result["history"]
            assert user == {"role": "user", "content": "q2"}
            assert assistant["role"] == "assistant" and '"content":"q1"' in assistant["content"]


async def test_request_history_comes_before_the_stored_turns(open_chat: Any) -> None:
    request = [
        {"role": "userMessage", "content": "earlier"},
        {"type": "apiMessage", "message": "told you"},  # Flowise's older spelling
    ]
    with trio.fail_after(30):
        async with open_chat() as chat:
            await chat.ask("chat", question="hi", sessionId="s1")
            job = await chat.ask("chat", question="again", sessionId="s1", history=request)
            stored = said("hi", '{"session":"s1","history":[]}')
            assert job.result["history"] == said("earlier", "told you") + stored
            # A malformed entry fails the node, naming it.
            bad = await chat.ask(
                "chat", question="q", sessionId="s1", history=[{"role": "system", "content": "x"}]
            )
            assert bad.status == JobStatus.FAILED and bad.error is not None
            assert "$.history[0]" in bad.error["message"]


async def test_memory_disabled_writes_and_recalls_nothing(open_chat: Any) -> None:
    with trio.fail_after(30):
        async with open_chat("memory.enabled=false") as chat:
            await chat.ask("chat", question="hi", sessionId="s1")
            job = await chat.ask("chat", question="again", sessionId="s1")
            assert job.result == {"session": "s1", "history": []}
            assert await chat.broker.conversations.sessions("chat", owner=None) == []
