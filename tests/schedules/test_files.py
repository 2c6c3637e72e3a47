"""Schedules in flows.paths files: read with every problem's file and path, stored so
that loading the same files again changes nothing; the flow itself ignores the list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import trio

from flowqd.config import PluginsConfig, QueueConfig
from flowqd.errors import FlowValidationError
from flowqd.flows import FlowStore
from flowqd.flows.store import parse_flow_file
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue.memory import memory_broker
from flowqd.schedules import Schedule, read_schedule_files, store_schedules
from tests.daemonproc import base_env

TOML = """
id = "report"
output = "e"

[[nodes]]
id = "e"
type = "echo"

[[schedules]]
id = "nightly-report"
cron = "30 2 * * *"
timezone = "Europe/Paris"
missed = "skip"
inputs = { question = "yesterday" }

[[schedules]]
id = "hourly-report"
interval_s = 3600
"""


def write(folder: Path, name: str, text: str | bytes) -> None:
    (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())


async def test_schedules_of_a_flow_file_are_loaded_and_the_flow_ignores_them(
    tmp_path: Path,
) -> None:
    write(tmp_path, "report.toml", TOML)
    write(
        tmp_path,
        "plain.json",
        orjson.dumps({"id": "plain", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}),
    )
    found = read_schedule_files([str(tmp_path)])
    assert found == [
        Schedule(
            id="nightly-report",
            flow="report",
            cron="30 2 * * *",
            timezone="Europe/Paris",
            inputs={"question": "yesterday"},
            missed="skip",
        ),
        Schedule(id="hourly-report", flow="report", interval_s=3600.0),
    ]
    broker = memory_broker(QueueConfig())
    flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
    with trio.fail_after(5):
        assert sorted(await flows.load_paths([str(tmp_path)])) == [("plain", 1), ("report", 1)]
        flow = await flows.get("report")
        assert flow is not None and "schedules" not in flow.document
        assert await store_schedules(broker.schedules, found) == ["nightly-report", "hourly-report"]
        hourly = await broker.schedules.get_schedule("hourly-report")
        assert hourly is not None and hourly.due_ms is not None
        # Loaded again (a restart, a second main): nothing changes, not even the due time.
        assert await store_schedules(broker.schedules, read_schedule_files([str(tmp_path)])) == []
        assert await broker.schedules.get_schedule("hourly-report") == hourly


def test_every_problem_names_its_file_and_path(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.json",
        orjson.dumps(
            {
                "id": "a",
                "nodes": [],
                "output": "x",
                "schedules": [
                    {"id": "s1", "cron": "nope"},
                    {"cron": "* * * * *"},
                    {"id": "s3", "interval_s": 5, "flow": "other"},
                    {"id": "dup", "interval_s": 5},
                ],
            }
        ),
    )
    write(
        tmp_path, "b.json", orjson.dumps({"id": "b", "schedules": [{"id": "dup", "interval_s": 9}]})
    )
    write(tmp_path, "c.json", orjson.dumps({"id": "c", "schedules": {"id": "x"}}))
    with pytest.raises(FlowValidationError) as caught:
        read_schedule_files([str(tmp_path)])
    a, b, c = (str(tmp_path / n) for n in ("a.json", "b.json", "c.json"))
    assert [p for p, _ in caught.value.problems] == [
        f"{a}: $.schedules[0].cron",
        f"{a}: $.schedules[1].id",
        f"{a}: $.schedules[2].flow",
        f"{b}: $.schedules[0].id",
        f"{c}: $.schedules",
    ]
    assert "also in" in caught.value.problems[3][1]


def test_a_bad_schedule_stops_start_up_naming_file_and_path(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    document = {"id": "f", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}
    write(flows, "f.json", orjson.dumps({**document, "schedules": [{"id": "s", "cron": "@often"}]}))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "flowqd", "--role", "all"),
            *("--set", f'flows.paths=["{flows}"]', "--set", "server.port=0"),
            *("--set", "worker.health_port=0"),
        ],
        capture_output=True,
        text=True,
        env=base_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    [line] = [x for x in result.stderr.splitlines() if "ERROR" in x]
    assert f"cannot start: {flows / 'f.json'}: $.schedules[0].cron: not a cron expression" in line
    assert "Traceback" not in result.stderr


def test_the_documented_flow_file_loads(tmp_path: Path) -> None:
    deploy = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
    section = deploy.read_text().split("## Scheduled flows", 1)[1]
    [example] = re.findall(r"```toml\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    write(tmp_path, "digest.toml", example)
    [schedule] = read_schedule_files([str(tmp_path)])
    assert (schedule.id, schedule.flow, schedule.cron, schedule.missed) == (
        "digest-weekdays",
        "digest",
        "0 9 * * 1-5",
        "skip",
    )
    broker = memory_broker(QueueConfig())
    flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
    flows.compile(
        {k: v for k, v in parse_flow_file(tmp_path / "digest.toml").items() if k != "schedules"}
    )
