"""The main's access log (``flowqd.access``), read from a real ``--role all`` process.

One info line per request answered: method, route template, status,
duration_ms, the key's name and the client's address, as JSON fields or as
text; never the key itself, the query string or the raw path; a streamed
prediction's line is written when its stream ends, with the whole duration;
``log.access = false`` silences it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from flowqd.api.dashboard import COOKIE
from flowqd.auth import hash_key
from tests.api.conftest import raw_post
from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import poll

ADMIN_KEY = "fqd_access-log-admin-key"
ALICE_KEY = "fqd_access-log-alice-key"
# Sent in a query string: it must not reach the log either.
QUERY_SECRET = "query-secret-value"
CSRF = {"X-Flowqd-CSRF": "1", "Sec-Fetch-Site": "same-origin"}
PREDICTION = "/api/v1/prediction/<flow_id>"
STREAM_MS = 400
FLOWS: dict[str, dict[str, Any]] = {
    "greet": {"nodes": [{"id": "say", "type": "echo"}], "output": "say"},
    "pause": {
        "nodes": [{"id": "wait", "type": "delay", "params": {"ms": STREAM_MS}}],
        "output": "wait",
    },
    "slow": {"nodes": [{"id": "wait", "type": "delay", "params": {"ms": 60000}}], "output": "wait"},
}


def _keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"admin:{hash_key(ADMIN_KEY)}:admin\nalice:{hash_key(ALICE_KEY)}\n")
    return path


def _start(tmp_path: Path, log_format: str, *overrides: str) -> Any:
    args = ["--role", "all", "--set", f"auth.keys_file={_keys_file(tmp_path)}"]
    args += ["--set", "dashboard.enabled=true"]
    for override in overrides:
        args += ["--set", override]
    env = {"FLOWQD_LOG__FORMAT": log_format, "FLOWQD_SECRET_KEY": "access-log-test-secret"}
    return start_daemon(args, env=env, cwd=str(tmp_path))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _traffic(daemon: Daemon) -> None:
    """Flows put by admin; alice's prediction, streamed prediction, sign-in and
    session read; a 401, a 404 and a streamed prediction whose client leaves."""
    async with httpx.AsyncClient(base_url=daemon.api, timeout=10) as client:
        for flow_id, doc in FLOWS.items():
            put = await client.put(f"/api/v1/flows/{flow_id}", json=doc, headers=_bearer(ADMIN_KEY))
            assert put.status_code == 200, put.text
        alice = _bearer(ALICE_KEY)
        answer = await client.post(
            f"/api/v1/prediction/greet?token={QUERY_SECRET}", json={"question": "hi"}, headers=alice
        )
        assert answer.status_code == 200, answer.text
        streamed = await client.post(
            "/api/v1/prediction/pause", json={"question": "hi", "streaming": True}, headers=alice
        )
        assert streamed.status_code == 200 and "[DONE]" in streamed.text, streamed.text
        signed = await client.post("/admin/queues/session", json={"key": ALICE_KEY}, headers=CSRF)
        assert signed.status_code == 200, signed.text
        cookie = {"Cookie": f"{COOKIE}={signed.cookies[COOKIE]}", **CSRF}
        assert (await client.get("/api/v1/jobs", headers=cookie)).status_code == 200
        assert (await client.get("/api/v1/flows", headers=_bearer("fqd_wrong"))).status_code == 401
        assert (await client.get("/no/such/route/4242")).status_code == 404
    body = {"question": "bye", "streaming": True}
    async with raw_post(daemon.api, "/api/v1/prediction/slow", body, alice) as stream:
        received = b""
        while b"data:" not in received:  # the stream began; now leave
            chunk = await stream.receive_some(65536)
            assert chunk, received
            received += chunk


async def _lines_for(daemon: Daemon, route: str, count: int, parse: Any) -> list[Any]:
    """The first ``count`` access lines of ``route``, once that many were written."""

    def found() -> list[Any]:
        return [x for x in (parse(line) for line in daemon.log) if x and x["route"] == route]

    async def enough() -> bool:
        return len(found()) >= count

    await poll(enough)
    return found()[:count]


def _json_access(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    record: dict[str, Any] = json.loads(line)
    return record if record["logger"] == "flowqd.access" else None


def _assert_no_secrets(text: str) -> None:
    for secret in (ADMIN_KEY, ALICE_KEY, QUERY_SECRET, "Bearer", "fqd_wrong", COOKIE):
        assert secret not in text, secret
    # Raw paths never: their ids are the caller's.
    for raw in ("/api/v1/prediction/greet", "/api/v1/prediction/pause", "4242"):
        assert raw not in text, raw


async def test_json_access_lines_have_the_fields(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with _start(tmp_path, "json") as daemon:
            await _traffic(daemon)
            predictions = await _lines_for(daemon, PREDICTION, 3, _json_access)
    records = [r for r in map(_json_access, daemon.log) if r]
    for record in records:
        assert {"ts", "level", "msg", "method", "route", "status", "duration_ms", "remote"} <= (
            record.keys()
        ), record
        assert record["level"] == "info" and record["remote"] == "127.0.0.1", record
        assert record["msg"] == f"{record['method']} {record['route']} {record['status']}"
    answer, streamed, left = predictions
    assert (answer["method"], answer["status"], answer["key"]) == ("POST", 200, "alice")
    assert (streamed["status"], streamed["key"]) == (200, "alice")
    # Written when the stream ended: the whole wait for the job is in it.
    assert streamed["duration_ms"] >= STREAM_MS, streamed
    assert answer["duration_ms"] < STREAM_MS, answer
    # The client that left mid-stream gets its line too, written when it left.
    assert (left["status"], left["key"]) == (200, "alice"), left

    def only(route: str, method: str) -> dict[str, Any]:
        (record,) = [r for r in records if (r["route"], r["method"]) == (route, method)]
        return record

    puts = [r for r in records if r["route"] == "/api/v1/flows/<flow_id>"]
    assert [(r["method"], r["key"]) for r in puts] == [("PUT", "admin")] * len(FLOWS)
    assert only("/admin/queues/session", "POST")["status"] == 200
    assert only("/api/v1/jobs", "GET")["key"] == "alice"  # from the session cookie
    refused = only("/api/v1/flows", "GET")
    assert refused["status"] == 401 and "key" not in refused, refused
    unmatched = only("unmatched", "GET")
    assert unmatched["status"] == 404, unmatched
    _assert_no_secrets("\n".join(line for line in daemon.log if "flowqd.access" in line))


def _text_access(line: str) -> dict[str, Any] | None:
    """A text line's message and ``key=value`` fields, as a dict like a JSON line's."""
    if " flowqd.access: " not in line:
        return None
    # "METHOD ROUTE STATUS name=value ..."
    method, route, status, *pairs = line.split(" flowqd.access: ", 1)[1].split(" ")
    fields = dict(pair.split("=", 1) for pair in pairs)
    return {"method": method, "route": route, "status": status, **fields}


async def test_text_access_lines_say_the_same_facts(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with _start(tmp_path, "text") as daemon:
            await _traffic(daemon)
            answer, streamed, left = await _lines_for(daemon, PREDICTION, 3, _text_access)
    assert answer == {
        "method": "POST",
        "route": PREDICTION,
        "status": "200",
        "duration_ms": answer["duration_ms"],
        "key": "alice",
        "remote": "127.0.0.1",
    }, answer
    assert float(streamed["duration_ms"]) >= STREAM_MS, streamed
    assert left["key"] == "alice", left
    lines = [line for line in daemon.log if " flowqd.access: " in line]
    assert any(" INFO    flowqd.access: GET unmatched 404 duration_ms=" in x for x in lines)
    _assert_no_secrets("\n".join(lines))


async def test_log_access_false_writes_no_access_line(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with _start(tmp_path, "json", "log.access=false") as daemon:
            async with httpx.AsyncClient(base_url=daemon.api, timeout=10) as client:
                put = await client.put(
                    "/api/v1/flows/greet", json=FLOWS["greet"], headers=_bearer(ADMIN_KEY)
                )
                assert put.status_code == 200, put.text
                answer = await client.post(
                    "/api/v1/prediction/greet", json={"question": "hi"}, headers=_bearer(ALICE_KEY)
                )
                assert answer.status_code == 200, answer.text
            # Info lines are written (the worker's), only the access lines are
            # not: the PUT's would have come before this one.
            await daemon.wait_for_log(f"job {answer.headers['X-Flowqd-Job-Id']} succeeded")
    assert not [line for line in daemon.log if "flowqd.access" in line], daemon.text()
