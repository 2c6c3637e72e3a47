"""Command line: ``flowqd [--role R] [--config F]``, ``check-config``, ``plugins``, ``keys``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from flowqd._version import __version__
from flowqd.config import ROLES, Config, as_toml_dict, load_config
from flowqd.errors import ConfigError, PluginError
from flowqd.keys_command import add_keys_parser, run_keys_command

EXIT_CONFIG = 2


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Subcommands repeat the options so they work on either side of the
    # command name; SUPPRESS keeps a subparser from resetting a value given before it.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="TOML file (else $FLOWQD_CONFIG, ./flowqd.toml, /etc/flowqd/flowqd.toml)",
    )
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=default,
        help="main (HTTP API), worker (runs jobs) or all (both, one process)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=argparse.SUPPRESS if suppress else [],
        help="override one key, e.g. --set worker.concurrency=100 (repeatable)",
    )
    parser.add_argument(
        "--queues",
        metavar="NAME[:WEIGHT],...",
        default=default,
        help="queues a worker takes jobs from, e.g. predictions:3,bulk:1 (worker.queues; "
        "weights split worker.concurrency into one pool per queue)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowqd",
        description="Queue-mode flow execution daemon. Without a command, runs the daemon.",
    )
    parser.add_argument("--version", action="version", version=f"flowqd {__version__}")
    _common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check-config", help="print the effective configuration (secrets masked), or every problem"
    )
    _common(check, suppress=True)
    plugins = commands.add_parser("plugins", help="list plugins and the node types they add")
    _common(plugins, suppress=True)
    for action in add_keys_parser(commands):
        _common(action, suppress=True)
    return parser


def _fail(problems: Sequence[str]) -> int:
    for line in problems:
        print(f"flowqd: error: {line}", file=sys.stderr)
    return EXIT_CONFIG


def _load(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.queues is not None:
        overrides.append(f"worker.queues={args.queues}")
    return load_config(config_file=args.config, role=args.role, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(exc.problems)
    if args.command == "check-config":
        problems = _deep_check(config)
        if problems:
            return _fail(problems)
        print(f"# flowqd {__version__}: effective configuration (from {config.source})")
        print(f"# broker in use: {config.broker}")
        print(_to_toml(as_toml_dict(config)), end="")
        return 0
    if args.command == "plugins":
        from flowqd.plugins import describe_plugins, load_plugins

        try:
            print(describe_plugins(load_plugins(config.plugins)), end="")
        except PluginError as exc:
            return _fail([str(exc)])
        return 0
    if args.command == "keys":
        return run_keys_command(args, config)
    from flowqd import daemon

    return daemon.run(config, sys.argv[1:] if argv is None else argv)


def _deep_check(config: Config) -> list[str]:
    """What start-up would refuse beyond the config's own shape: keys, secret, plugins."""
    from flowqd.auth import KeyRing
    from flowqd.credentials import load_secret
    from flowqd.plugins import collect_executors, load_plugins

    problems: list[str] = []
    checks: list[Callable[[], object]] = [
        lambda: load_secret(config.security),
        lambda: collect_executors(load_plugins(config.plugins)),
    ]
    if config.role in ("main", "all"):
        checks.append(lambda: KeyRing.from_config(config))
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.extend(exc.problems)
        except PluginError as exc:
            problems.append(str(exc))
    return problems


def _to_toml(data: dict[str, Any]) -> str:
    lines = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        for key, value in table.items():
            if value is None:
                lines.append(f"# {key} is not set")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


if __name__ == "__main__":
    raise SystemExit(main())
