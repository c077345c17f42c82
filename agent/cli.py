"""``edgefleet agent``: run the device agent, or check its configuration."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent run`` and ``agent check-config`` to the ``edgefleet`` command."""
    parser = subparsers.add_parser("agent", help="the device agent")
    commands = parser.add_subparsers(title="agent commands", metavar="COMMAND")
    parser.set_defaults(handler=lambda args: _usage(parser))
    for name, handler, text in (
        ("run", _run, "run the agent until SIGTERM (systemd Type=notify aware)"),
        ("check-config", _check_config, "validate the config and print the effective values"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"TOML config file (default: {DEFAULT_CONFIG} if it exists;"
            " EDGEFLEET_AGENT_* variables override it)",
        )
        command.set_defaults(handler=handler)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _load(args: argparse.Namespace) -> Any:
    from edgefleet.agent.config import ConfigError, load_config
    from edgefleet.shared.cli import CLIError

    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        return load_config(path, os.environ)
    except ConfigError as e:
        raise CLIError(str(e)) from e


def _run(args: argparse.Namespace) -> int:
    from edgefleet.agent.daemon import run_forever

    return run_forever(_load(args))


def _check_config(args: argparse.Namespace) -> int:
    from edgefleet.agent.config import redacted

    print(json.dumps(redacted(_load(args)), indent=2))
    return 0
