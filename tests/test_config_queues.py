"""[queues.NAME] tables and worker.queues: loaded from file, environment and flags,
every mistake named with its key path."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from flowqd.cli import main
from flowqd.config import Config, load_config
from flowqd.errors import ConfigError
from flowqd.worker.pools import split_concurrency


def load(tmp_path: Path, text: str, **kwargs: typing.Any) -> Config:
    path = tmp_path / "flowqd.toml"
    path.write_text(text)
    return load_config(config_file=str(path), environ=kwargs.pop("environ", {}), **kwargs)


def problems(tmp_path: Path, text: str, **kwargs: typing.Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    return info.value.problems


def test_a_queue_takes_the_default_queues_settings_it_does_not_set(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "[queue]\nbackoff_s = 2.0\n[queues.bulk]\nmax_attempts = 3\n[queues.upserts]\n",
        environ={"FLOWQD_QUEUES__UPSERTS__PER_MINUTE": "60"},
        overrides=["queues.bulk.remove_on_age_s=60", "worker.queues=bulk:3,upserts"],
    )
    assert config.queue_names == ("flowqd-queue", "bulk", "upserts")
    bulk = config.queue_config("bulk")
    assert (bulk.name, bulk.max_attempts, bulk.backoff_s, bulk.remove_on_age_s) == (
        "bulk",
        3,
        2.0,
        60.0,
    )
    assert config.queue_config("upserts").per_minute == 60
    assert config.queue_config("flowqd-queue") is config.queue
    assert config.worker_pools() == [("bulk", 3), ("upserts", 1)]
    assert load(tmp_path, "").worker_pools() == [("flowqd-queue", 1)]


def test_queue_mistakes_name_their_key_path(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[queues.bulk]\nname = "x"\nbackoff_s = "soon"\n[queues."a b"]\n[queues.flowqd-queue]\n',
    )
    assert any("queues.bulk.name: unknown key; known keys in [queues.NAME]" in p for p in found)
    assert any("queues.bulk.backoff_s: expected a number, got 'soon'" in p for p in found)
    assert any("queues.a b: a queue name takes letters, digits" in p for p in found)
    assert any("queues.flowqd-queue: 'flowqd-queue' is the default queue" in p for p in found)


def test_worker_queues_must_be_configured_and_well_formed(tmp_path: Path) -> None:
    [unknown] = problems(tmp_path, "[queues.bulk]\n", overrides=["worker.queues=bluk"])
    assert "worker.queues: 'bluk': not a configured queue" in unknown
    assert "[queues.bluk]" in unknown
    [twice] = problems(tmp_path, "[queues.bulk]\n", overrides=["worker.queues=bulk,bulk:2"])
    assert "worker.queues: expected each queue once, got bulk more than once" in twice
    [weight] = problems(tmp_path, "[queues.bulk]\n", overrides=["worker.queues=bulk:0"])
    assert "worker.queues: expected queue names, each optionally :WEIGHT" in weight
    [slots] = problems(
        tmp_path,
        "[queues.bulk]\n",
        overrides=["worker.queues=flowqd-queue,bulk", "worker.concurrency=1"],
    )
    assert "worker.concurrency = 1 is fewer than the 2 queues" in slots


def test_the_queues_flag_sets_worker_queues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flowqd.toml").write_text("[queues.bulk]\nmax_attempts = 2\n")
    assert main(["--queues", "bulk:2,flowqd-queue", "check-config"]) == 0
    out = capsys.readouterr().out
    assert 'queues = ["bulk:2", "flowqd-queue"]' in out
    assert '[queues]\nbulk = {"max_attempts" = 2}' in out


def test_concurrency_is_split_by_weight() -> None:
    assert split_concurrency(400, [3, 1]) == [300, 100]
    assert split_concurrency(10, [1, 1, 1]) == [4, 3, 3]
    assert split_concurrency(2, [1000, 1]) == [1, 1]
    assert sum(split_concurrency(10_000, [7, 5, 3])) == 10_000
