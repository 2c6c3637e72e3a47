"""Configuration: precedence, Flowise's variables, and errors that name key and source."""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path

import attrs
import pytest

from flowqd.config import (
    FLOWISE_ENV,
    SECTIONS,
    Config,
    as_toml_dict,
    load_config,
    mask_url,
)
from flowqd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_config_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "flowqd.toml"
    path.write_text(text)
    return str(path)


def problems(**kwargs: typing.Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return info.value.problems


def test_defaults_without_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./flowqd.toml here
    config = load_config(environ={})
    assert config.role == "all"
    assert config.broker == "memory"
    assert config.server.port == 3000
    assert config.worker.concurrency == 10000
    assert config.worker.health_port == 5566
    assert config.queue.name == "flowqd-queue"


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[worker]\nlock_ttl_s = 11\nstalled_interval_s = 12\nshutdown_grace_s = 13\n"
    )
    env = {"FLOWQD_WORKER__STALLED_INTERVAL_S": "22", "FLOWQD_WORKER__SHUTDOWN_GRACE_S": "23"}
    config = load_config(config_file=path, environ=env, overrides=["worker.shutdown_grace_s=33"])
    assert config.worker.lock_ttl_s == 11  # file over default
    assert config.worker.stalled_interval_s == 22  # env over file
    assert config.worker.shutdown_grace_s == 33  # flag over env
    assert config.worker.job_timeout_s == 300  # default


def test_role_flag_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "worker"\n[redis]\nurl = "redis://127.0.0.1:1"\n')
    assert load_config(config_file=path, environ={}).role == "worker"
    assert load_config(config_file=path, environ={"FLOWQD_ROLE": "main"}).role == "main"
    assert load_config(config_file=path, environ={"FLOWQD_ROLE": "main"}, role="all").role == "all"


def test_flowqd_spelling_wins_over_flowise_spelling() -> None:
    env = {"WORKER_CONCURRENCY": "5", "FLOWQD_WORKER__CONCURRENCY": "7"}
    assert load_config(environ=env).worker.concurrency == 7


FLOWISE_CASES = [
    ("WORKER_CONCURRENCY", "42", ("worker", "concurrency"), 42),
    ("QUEUE_NAME", "flowise-q", ("queue", "name"), "flowise-q"),
    ("QUEUE_REDIS_EVENT_STREAM_MAX_LEN", "500", ("queue", "event_stream_max_len"), 500),
    ("REMOVE_ON_AGE", "3600", ("queue", "remove_on_age_s"), 3600.0),
    ("REMOVE_ON_COUNT", "99", ("queue", "remove_on_count"), 99),
    ("REDIS_URL", "redis://u:p@h:1/2", ("redis", "url"), "redis://u:p@h:1/2"),
    ("REDIS_HOST", "redis.internal", ("redis", "host"), "redis.internal"),
    ("REDIS_PORT", "6380", ("redis", "port"), 6380),
    ("REDIS_USERNAME", "flowise", ("redis", "username"), "flowise"),
    ("REDIS_PASSWORD", "s3cret", ("redis", "password"), "s3cret"),
    ("REDIS_TLS", "true", ("redis", "tls"), True),
    ("REDIS_CERT", "/c.pem", ("redis", "tls_cert"), "/c.pem"),
    ("REDIS_KEY", "/k.pem", ("redis", "tls_key"), "/k.pem"),
    ("REDIS_CA", "Y2E=", ("redis", "tls_ca"), "Y2E="),
    ("REDIS_KEEP_ALIVE", "30000", ("redis", "keep_alive_ms"), 30000),
    ("ENABLE_BULLMQ_DASHBOARD", "true", ("dashboard", "enabled"), True),
    ("PORT", "8080", ("server", "port"), 8080),
    ("WORKER_PORT", "5577", ("worker", "health_port"), 5577),
    ("FLOWQD_SECRET_KEY", "k", ("security", "secret_key"), "k"),
]


@pytest.mark.parametrize(("name", "raw", "path", "expected"), FLOWISE_CASES)
def test_flowise_variable_maps_to_key(
    name: str, raw: str, path: tuple[str, str], expected: typing.Any
) -> None:
    config = load_config(environ={name: raw})
    assert getattr(getattr(config, path[0]), path[1]) == expected


def test_every_flowise_variable_has_a_case() -> None:
    assert {case[0] for case in FLOWISE_CASES} == set(FLOWISE_ENV)


@pytest.mark.parametrize(("mode", "broker"), [("main", "memory"), ("queue", "redis")])
def test_mode_selects_broker(mode: str, broker: str) -> None:
    config = load_config(environ={"MODE": mode, "REDIS_URL": "redis://x"})
    assert config.queue.broker == broker
    assert config.broker == broker


def test_bad_mode_names_variable() -> None:
    [line] = problems(environ={"MODE": "cluster"})
    assert line.startswith("environment variable MODE: queue.broker: expected 'main' or 'queue'")


def test_role_all_uses_redis_once_redis_is_configured() -> None:
    assert load_config(environ={"REDIS_HOST": "127.0.0.1"}).broker == "redis"
    assert load_config(environ={}).broker == "memory"


@pytest.mark.parametrize("role", ["main", "worker"])
def test_main_and_worker_need_redis(role: str) -> None:
    [line] = problems(environ={}, role=role)
    assert "REDIS_URL" in line and "redis.url" in line
    assert load_config(environ={"REDIS_URL": "redis://127.0.0.1:1"}, role=role).broker == "redis"


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ({"environ": {"MODE": "queue"}}, "MODE=queue selects the Redis broker"),
        (
            {"environ": {}, "overrides": ["queue.broker=redis"]},
            "queue.broker = 'redis' (--set queue.broker) selects the Redis broker",
        ),
        ({"environ": {"MODE": "queue"}, "role": "main"}, "MODE=queue selects the Redis broker"),
    ],
)
def test_redis_broker_without_redis_setting_is_refused_for_every_role(
    how: dict[str, typing.Any], said: str
) -> None:
    # It used to go to localhost:6379 for role all without a word.
    [line] = problems(**how)
    assert line.startswith(f"{said}, but no Redis is configured: set REDIS_URL (or redis.url ")
    assert (
        load_config(**{**how, "environ": {**how["environ"], "REDIS_URL": "redis://h"}}).broker
        == "redis"
    )


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\nconcurency = 5\n")
    [line] = problems(config_file=path, environ={})
    assert line.startswith(f"{path}: worker.concurency: unknown key")
    assert "concurrency" in line  # the known keys are listed to spot the typo


def test_unknown_section_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[wroker]\nconcurrency = 5\n")
    [line] = problems(config_file=path, environ={})
    assert line.startswith(f"{path}: wroker: unknown key")


def test_wrong_type_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[worker]\nconcurrency = "many"\n')
    [line] = problems(config_file=path, environ={})
    assert line == f"{path}: worker.concurrency: expected an integer, got 'many'"


def test_bad_value_in_env_names_variable() -> None:
    [line] = problems(environ={"WORKER_PORT": "70000"})
    assert line == (
        "environment variable WORKER_PORT: worker.health_port: "
        "expected a port number from 0 to 65535, got 70000"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[worker]\nconcurrency = 0\nlock_ttl_s = "x"\n[log]\nlevel = "loud"\n')
    lines = problems(config_file=path, environ={"REDIS_PORT": "abc"})
    assert len(lines) == 4
    assert any("worker.concurrency: expected a value greater than 0" in x for x in lines)
    assert any("worker.lock_ttl_s: expected a number" in x for x in lines)
    assert any("log.level: expected one of 'debug', 'info', 'warning', 'error'" in x for x in lines)
    assert any(x.startswith("environment variable REDIS_PORT: redis.port") for x in lines)


WORKER_KEYS = (
    "known keys in [worker]: concurrency, health_host, health_port, job_timeout_s, "
    "lock_ttl_s, queues, shutdown_grace_s, stalled_interval_s"
)
SECTION_LIST = "known top-level keys: role, [server], [worker], [queue], [redis], [log]"


def test_unknown_key_reads_the_same_from_file_environment_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[worker]\nconcurency = 5\n")
    [in_file] = problems(config_file=str(path), environ={})
    [in_env] = problems(environ={"FLOWQD_WORKER__CONCURENCY": "5"})
    [in_flag] = problems(environ={}, overrides=["worker.concurency=5"])
    said = f"worker.concurency: unknown key; {WORKER_KEYS}; did you mean worker.concurrency"
    assert in_file == f"{path}: {said}?"
    assert in_env == (
        f"environment variable FLOWQD_WORKER__CONCURENCY: {said} (FLOWQD_WORKER__CONCURRENCY)?"
    )
    assert in_flag == f"--set worker.concurency: {said}?"


def test_unknown_section_lists_the_sections_from_every_source(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[wroker]\nconcurrency = 5\n")
    [in_file] = problems(config_file=str(path), environ={})
    [in_env] = problems(environ={"FLOWQD_WROKER__CONCURRENCY": "5"})
    [in_flag] = problems(environ={}, overrides=["wroker.concurrency=5"])
    for line in (in_file, in_env, in_flag):
        assert SECTION_LIST in line, line
    assert in_file.endswith("did you mean [worker]?")
    assert in_env.endswith("did you mean worker.concurrency (FLOWQD_WORKER__CONCURRENCY)?")
    assert in_flag.endswith("did you mean worker.concurrency?")


def test_unknown_flowqd_variable_without_section_suggests_one() -> None:
    [line] = problems(environ={"FLOWQD_CONCURRENCY": "5"})
    assert line == (
        "environment variable FLOWQD_CONCURRENCY: unknown setting; use FLOWQD_ROLE "
        "or FLOWQD_<SECTION>__<KEY> naming a key of flowqd.toml; did you mean "
        "worker.concurrency (FLOWQD_WORKER__CONCURRENCY)?"
    )


def test_no_suggestion_when_nothing_is_close() -> None:
    [line] = problems(environ={}, overrides=["worker.zzz=1"])
    assert line == f"--set worker.zzz: worker.zzz: unknown key; {WORKER_KEYS}"


def test_bad_override_flag() -> None:
    [line] = problems(environ={}, overrides=["worker.concurrency"])
    assert line.startswith("--set worker.concurrency: expected KEY=VALUE")
    [line] = problems(environ={}, overrides=["worker.concurrency=x"])
    assert line.startswith("--set worker.concurrency: worker.concurrency: expected an integer")


def test_list_values_from_env() -> None:
    config = load_config(environ={"FLOWQD_PLUGINS__PATHS": "/a, /b"})
    assert config.plugins.paths == ["/a", "/b"]
    config = load_config(environ={"FLOWQD_PLUGINS__PATHS": '["/x,y", "/z"]'})
    assert config.plugins.paths == ["/x,y", "/z"]
    config = load_config(environ={}, overrides=["limits.flows={ greet = 5 }"])
    assert config.limits.flows == {"greet": 5}
    [line] = problems(environ={"FLOWQD_PLUGINS__PATHS": '["/a"'})
    assert line.startswith(
        "environment variable FLOWQD_PLUGINS__PATHS: plugins.paths: expected a TOML array"
    )


def test_file_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flowqd.toml").write_text("[server]\nport = 4001\n")
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 4002\n")
    assert load_config(environ={}).server.port == 4001
    assert load_config(environ={"FLOWQD_CONFIG": str(other)}).server.port == 4002
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[server]\nport = 4003\n")
    config = load_config(config_file=str(explicit), environ={"FLOWQD_CONFIG": str(other)})
    assert config.server.port == 4003


def test_missing_explicit_file() -> None:
    [line] = problems(config_file="/nonexistent/flowqd.toml", environ={})
    assert "/nonexistent/flowqd.toml: config file not found" in line


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker\n")
    [line] = problems(config_file=path, environ={})
    assert line.startswith(f"{path}: not valid TOML")


def test_secrets_are_masked() -> None:
    config = load_config(
        environ={
            "REDIS_URL": "redis://u:hunter2@h:1",
            "REDIS_PASSWORD": "pw",
            "FLOWQD_SECRET_KEY": "topsecret",
        }
    )
    shown = repr(as_toml_dict(config))
    assert "hunter2" not in shown and "'pw'" not in shown and "topsecret" not in shown
    assert mask_url("redis://u:hunter2@h:1") == "redis://u:***@h:1"
    assert mask_url("redis://h:1") == "redis://h:1"


def test_shipped_flowqd_toml_documents_every_key_with_its_default() -> None:
    text = (REPO / "flowqd.toml").read_text()
    # The shipped file must itself load cleanly and give the defaults.
    shipped = load_config(config_file=str(REPO / "flowqd.toml"), environ={})
    assert attrs.evolve(shipped, source="", redis_configured=False) == Config()
    tables = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S))
    for section, cls in SECTIONS.items():
        assert section in tables, f"[{section}] missing from flowqd.toml"
        for field in attrs.fields(cls):
            pattern = rf"^#? ?{field.name} = "
            assert re.search(pattern, tables[section], flags=re.M), (
                f"{section}.{field.name} missing from flowqd.toml"
            )
            # Each key has a comment line right above it.
            block = re.split(pattern, tables[section], flags=re.M)[0].rstrip().splitlines()
            assert len(block) >= 1 and block[-1].startswith("# ") and len(block[-1]) > 3, (
                f"{section}.{field.name} has no comment above it"
            )
    assert re.search(r'^role = "all"', text, flags=re.M)


def test_egress_entries_are_checked_when_the_config_loads() -> None:
    # A main-only process runs no http node, but its check-config must still say so.
    [line] = problems(environ={"FLOWQD_EGRESS__DENY": "10.0.0.0/8, http://metadata"})
    assert line.startswith(
        "environment variable FLOWQD_EGRESS__DENY: egress.deny: expected a host name"
    )
    assert "got 'http://metadata' (entry 1)" in line
    config = load_config(environ={}, overrides=["egress.allow=*.example.com,10.1.2.3,::1/128"])
    assert config.egress.allow == ["*.example.com", "10.1.2.3", "::1/128"]


# ---- Redis topologies (sentinels, cluster, wait_replicas) ----------------------

SENTINEL_ENV = {
    "FLOWQD_REDIS__SENTINELS": "10.0.0.5:26379,10.0.0.6:26379",
    "FLOWQD_REDIS__SENTINEL_MASTER": "flowqd-primary",
    "FLOWQD_REDIS__SENTINEL_USERNAME": "watcher",
    "FLOWQD_REDIS__SENTINEL_PASSWORD": "sentinel-hunter2",
    "FLOWQD_REDIS__SENTINEL_TLS": "true",
    "FLOWQD_REDIS__WAIT_REPLICAS": "1",
    "FLOWQD_REDIS__WAIT_TIMEOUT_S": "0.25",
}


def check_config(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> int:
    from flowqd import cli

    for name in list(os.environ):
        if name.startswith(("FLOWQD_", "REDIS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cli.main(["check-config", *args])


def test_check_config_shows_the_topology_keys_with_the_sentinel_password_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_config(monkeypatch, SENTINEL_ENV, "--role", "worker") == 0
    out = capsys.readouterr().out
    assert "sentinel-hunter2" not in out
    for line in (
        'sentinels = ["10.0.0.5:26379", "10.0.0.6:26379"]',
        'sentinel_master = "flowqd-primary"',
        'sentinel_username = "watcher"',
        'sentinel_password = "***"',
        "sentinel_tls = true",
        "cluster = false",
        "nodes = []",
        "wait_replicas = 1",
        "wait_timeout_s = 0.25",
    ):
        assert re.search(rf"^{re.escape(line)}$", out, flags=re.M), (line, out)
    assert "broker in use: redis" in out


def test_cluster_and_its_nodes_parse_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "REDIS_URL": "redis://10.0.0.7:7000",
        "FLOWQD_REDIS__CLUSTER": "true",
        "FLOWQD_REDIS__NODES": "10.0.0.8:7001, [fd00::9]:7002",
    }
    config = load_config(environ=env)
    assert config.redis.cluster is True
    assert config.redis.nodes == ["10.0.0.8:7001", "[fd00::9]:7002"]
    assert config.redis.sentinels == [] and config.redis.wait_replicas == 0
    assert check_config(monkeypatch, env, "--role", "main") == 0
    out = capsys.readouterr().out
    assert re.search(r"^cluster = true$", out, flags=re.M), out
    assert 'nodes = ["10.0.0.8:7001", "[fd00::9]:7002"]' in out


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"FLOWQD_REDIS__SENTINELS": "a:1,b:2"},
            ["redis.sentinels is set but redis.sentinel_master is not"],
        ),
        (
            {"FLOWQD_REDIS__SENTINEL_MASTER": "m"},
            ["redis.sentinel_master is set but redis.sentinels is empty"],
        ),
        (
            {
                "FLOWQD_REDIS__SENTINELS": "a:1",
                "FLOWQD_REDIS__SENTINEL_MASTER": "m",
                "FLOWQD_REDIS__CLUSTER": "true",
                "REDIS_HOST": "a",
                "FLOWQD_REDIS__DB": "2",
            },
            [
                "redis.cluster and redis.sentinels are both set",
                "redis.db = 2 with redis.cluster: Redis Cluster has database 0 only",
            ],
        ),
        (
            {"REDIS_URL": "redis://a:6379", "FLOWQD_REDIS__WAIT_REPLICAS": "1"}
            | {"FLOWQD_REDIS__WAIT_TIMEOUT_S": "1.5", "FLOWQD_SERVER__BROKER_TIMEOUT_S": "1.5"},
            ["redis.wait_timeout_s (1.5) must be shorter than server.broker_timeout_s (1.5)"],
        ),
        (
            {"FLOWQD_REDIS__SENTINELS": "a:1,b", "FLOWQD_REDIS__WAIT_REPLICAS": "17"},
            [
                "environment variable FLOWQD_REDIS__SENTINELS: redis.sentinels: expected a "
                "list of host:port entries",
                "environment variable FLOWQD_REDIS__WAIT_REPLICAS: redis.wait_replicas",
            ],
        ),
    ],
)
def test_topology_cross_checks_name_the_keys(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    expected: list[str],
) -> None:
    found = problems(environ=env, role="worker")
    assert len(found) == len(expected), found
    for line, start in zip(found, expected, strict=True):
        assert start in line, (start, line)
    # check-config says the same, one line each, exit 2.
    assert check_config(monkeypatch, env, "--role", "worker") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(expected) and all(e.startswith("flowqd: error: ") for e in err), err
