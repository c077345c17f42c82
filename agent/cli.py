"""``edgefleet agent``: run the device agent, check its configuration, enroll the device."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from edgefleet.shared import __version__
from edgefleet.shared.logs import add_format_argument, set_process_fields

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent run`` and ``agent check-config`` to the ``edgefleet`` command."""
    parser = subparsers.add_parser("agent", help="the device agent")
    parser.add_argument("--version", action="version", version=f"edgefleet agent {__version__}")
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
        if name == "run":
            add_format_argument(command, subcommand=True)
    _register_identity(commands)
    _register_restart_check(commands)


def _register_restart_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "say whether a package upgrade may restart the agent now: 'restart: ...' while its"
        " update state is at rest, 'defer: ...' in the middle of a model update"
    )
    check = commands.add_parser("restart-check", help=text, description=text)
    check.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the agent's data_dir (default: data_dir of the agent's config)",
    )
    check.add_argument("--config", type=Path, default=None, help="the agent's TOML config")
    check.set_defaults(handler=_restart_check)


def _restart_check(args: argparse.Namespace) -> int:
    from edgefleet.agent.update.restart_gate import read_verdict

    data_dir: Path = args.data_dir if args.data_dir is not None else _load(args).data_dir
    print(read_verdict(data_dir).line())
    return 0


def _register_identity(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "enroll this device: make its key, get a certificate with a one-time token"
    enroll = commands.add_parser("enroll", help=text, description=text)
    enroll.add_argument("--fleet", required=True, help="the fleet API's URL, http(s)://host:port")
    enroll.add_argument("--token", required=True, help="the one-time enrollment token")
    text = "renew this device's certificate over its current one (same key)"
    renew = commands.add_parser("renew", help=text, description=text)
    renew.add_argument("--fleet", required=True, help="the fleet API's URL, http(s)://host:port")
    text = "print the device key's fingerprint (made if missing), to pre-authorise it"
    fingerprint = commands.add_parser("key-fingerprint", help=text, description=text)
    for command in (enroll, renew):
        command.add_argument(
            "--fleet-ca",
            type=Path,
            default=None,
            help="CA certificates (PEM) of an https fleet's server, beside the system's and"
            " the pinned device CA (default: fleet_ca_file of the agent's config)",
        )
    for command, handler in ((enroll, _enroll), (renew, _renew), (fingerprint, _key_fingerprint)):
        command.add_argument(
            "--device-id", default=None, help="default: device_id of the agent's config"
        )
        command.add_argument(
            "--identity-dir",
            type=Path,
            default=None,
            help="where the key and certificates live (default: <data_dir>/identity)",
        )
        command.add_argument("--config", type=Path, default=None, help="the agent's TOML config")
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

    config = _load(args)
    set_process_fields(device_id=config.device_id)  # every JSON line of the daemon
    return run_forever(config)


def _check_config(args: argparse.Namespace) -> int:
    from edgefleet.agent.config import redacted

    print(json.dumps(redacted(_load(args)), indent=2))
    return 0


def _identity_target(args: argparse.Namespace, *, need_id: bool) -> tuple[str, Path]:
    """The device id and identity dir: from the flags, else from the agent's config."""
    device_id: str | None = args.device_id
    identity_dir: Path | None = args.identity_dir
    if (need_id and device_id is None) or identity_dir is None:
        config = _load(args)
        device_id = device_id or config.device_id
        identity_dir = identity_dir or config.data_dir / "identity"
    assert identity_dir is not None
    return device_id or "", identity_dir


def _fleet_context(args: argparse.Namespace, identity_dir: Path) -> Any:
    """The TLS context for an https fleet (None for http); raises `IdentityError`."""
    from edgefleet.agent.credentials import fleet_tls_context
    from edgefleet.agent.identity import CA_FILE

    if not str(args.fleet).startswith("https:"):
        return None
    ca_file: Path | None = args.fleet_ca
    if ca_file is None and args.config is not None:
        ca_file = _load(args).fleet_ca_file
    return fleet_tls_context(identity_dir / CA_FILE, ca_file)


def _enroll(args: argparse.Namespace) -> int:
    from edgefleet.agent.identity import IdentityError, enroll
    from edgefleet.shared.cli import CLIError

    device_id, identity_dir = _identity_target(args, need_id=True)
    try:
        enrolled = enroll(
            args.fleet,
            args.token,
            device_id=device_id,
            identity_dir=identity_dir,
            context=_fleet_context(args, identity_dir),
        )
    except IdentityError as e:
        raise CLIError(f"enrollment failed: {e}") from e
    print(
        f"enrolled {enrolled.device_id}: certificate {enrolled.cert_path} (serial"
        f" {enrolled.serial}, valid until {enrolled.not_after:%Y-%m-%d %H:%M} UTC),"
        f" CA {enrolled.ca_path}, key {enrolled.key_path}"
    )
    return 0


def _key_fingerprint(args: argparse.Namespace) -> int:
    from edgefleet.agent.identity import IdentityError, load_or_create_key
    from edgefleet.shared.cli import CLIError
    from edgefleet.shared.identity import key_fingerprint

    _, identity_dir = _identity_target(args, need_id=False)
    try:
        key = load_or_create_key(identity_dir)
    except IdentityError as e:
        raise CLIError(str(e)) from e
    print(key_fingerprint(key.public_key()))
    return 0


def _renew(args: argparse.Namespace) -> int:
    from edgefleet.agent.identity import IdentityError, renew
    from edgefleet.shared.cli import CLIError

    _, identity_dir = _identity_target(args, need_id=False)
    try:
        renewed = renew(
            args.fleet, identity_dir=identity_dir, context=_fleet_context(args, identity_dir)
        )
    except IdentityError as e:
        raise CLIError(f"renewal failed: {e}") from e
    print(
        f"renewed {renewed.device_id}: certificate {renewed.cert_path} (serial"
        f" {renewed.serial}, valid until {renewed.not_after:%Y-%m-%d %H:%M} UTC)"
    )
    return 0
