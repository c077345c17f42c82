"""``edgefleet fleet serve``: run one fleet replica until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fleet`` and its subcommands to the ``edgefleet`` parser."""
    fleet = subparsers.add_parser("fleet", help="run the fleet service")
    commands = fleet.add_subparsers(title="fleet commands", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the REST API and the MQTT ingester",
        description="Settings not given here come from EDGEFLEET_FLEET_* environment variables.",
    )
    serve.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    serve.add_argument("--broker", help="mqtt://host:port or mqtts://host:port")
    serve.add_argument("--host", help="address the API listens on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="API port (default 8080; 0 picks one)")
    serve.add_argument("--data-dir", type=Path, help="where the SQLite file lives")
    serve.add_argument(
        "--no-shared-subscription",
        action="store_true",
        help="plain subscription, for brokers without $share (one replica only)",
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fleet.service import FleetService
    from fleet.settings import FleetSettings
    from shared.cli import CLIError

    overrides: dict[str, Any] = {}
    for key, value in (
        ("database_url", args.database_url),
        ("broker_url", args.broker),
        ("api_host", args.host),
        ("api_port", args.port),
        ("data_dir", args.data_dir),
    ):
        if value is not None:
            overrides[key] = value
    if args.no_shared_subscription:
        overrides["shared_subscription"] = False
    try:
        settings = FleetSettings(**overrides)
    except ValidationError as e:
        raise CLIError(f"invalid fleet settings: {e}") from e

    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    service = FleetService(settings)
    try:
        service.start()
    except (RuntimeError, ValueError) as e:
        raise CLIError(str(e)) from e
    print(
        f"edgefleet fleet console: {service.base_url}  (broker {settings.broker_url})", flush=True
    )
    if service.bootstrap_admin_token:
        print(
            "admin token (shown once, store it now): " + service.bootstrap_admin_token, flush=True
        )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
    return 0
