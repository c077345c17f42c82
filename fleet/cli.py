"""``edgefleet fleet serve``: run one fleet replica until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edgefleet.shared.logs import add_format_argument as add_log_format_argument
from edgefleet.shared.logs import console

if TYPE_CHECKING:
    from edgefleet.fleet.settings import FleetSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fleet`` and its subcommands to the ``edgefleet`` parser."""
    fleet = subparsers.add_parser("fleet", help="run the fleet service")
    commands = fleet.add_subparsers(title="fleet commands", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the REST API and the MQTT ingester",
        description="Settings not given here come from EDGEFLEET_FLEET_* environment variables.",
    )
    add_log_format_argument(serve, subcommand=True)
    serve.add_argument("--database-url", help="sqlite:///path or postgresql://...")
    serve.add_argument("--broker", help="mqtt://host:port or mqtts://host:port")
    serve.add_argument("--host", help="address the API listens on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="API port (default 8080; 0 picks one)")
    serve.add_argument("--data-dir", type=Path, help="where the SQLite file lives")
    serve.add_argument(
        "--tls-cert", type=Path, help="PEM server certificate: serve HTTPS (with --tls-key)"
    )
    serve.add_argument("--tls-key", type=Path, help="the server certificate's PEM key")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        help="ask clients for a certificate of this CA (e.g. the device CA's ca.pem)",
    )
    serve.add_argument(
        "--no-shared-subscription",
        action="store_true",
        help="plain subscription, for brokers without $share (one replica only)",
    )
    serve.add_argument(
        "--keys-dir",
        type=Path,
        help="signing keys (`edgefleet keys init`); passphrase from $EDGEFLEET_KEY_PASSPHRASE",
    )
    serve.add_argument(
        "--repository-dir", type=Path, help="TUF image repository (default KEYS_DIR/repository)"
    )
    serve.add_argument("--models-dir", type=Path, help="model packages (default DATA_DIR/models)")
    serve.add_argument(
        "--lab-mode",
        action="store_true",
        help="the fleet holds the release key and publishes models itself",
    )
    serve.add_argument(
        "--single-person-approval",
        action="store_true",
        help="one-person lab: an uploader may approve their own version (off: four eyes)",
    )
    serve.add_argument(
        "--require-device-identity",
        action="store_true",
        help="ingest only from enrolled devices whose identity is active (off: any device id)",
    )
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="bring the database schema to head first (off: refuse a database that is behind)",
    )
    drift = serve.add_argument_group("drift evaluation", "README: Drift and model-performance")
    drift.add_argument(
        "--drift-interval-s", type=float, metavar="S", help="evaluate every S seconds (60)"
    )
    drift.add_argument(
        "--drift-lookback-s",
        type=float,
        metavar="S",
        help="merge the windows of the last S seconds (3600); shorter sees a shift sooner "
        "and forgets it sooner",
    )
    drift.add_argument(
        "--drift-cooldown-s",
        type=float,
        metavar="S",
        help="no repeat of the same alert for a slice within S seconds (3600)",
    )
    serve.set_defaults(handler=_serve)

    lab = commands.add_parser(
        "lab-keys",
        help="create lab signing keys, a TUF repository and a device bundle in one go",
        description="Keys are stored unencrypted unless $EDGEFLEET_KEY_PASSPHRASE is set."
        " For labs and demos; production keys come from `edgefleet keys init`.",
    )
    lab.add_argument(
        "--dir", type=Path, required=True, help="keys, plus repository/ and bundle/ in it"
    )
    lab.set_defaults(handler=_lab_keys)

    from edgefleet.fleet.store.migrate_cli import register as register_migrate

    register_migrate(commands)

    from edgefleet.fleet.backup.cli import register as register_backup

    register_backup(commands)

    from edgefleet.fleet.people_cli import register as register_people

    register_people(commands)

    from edgefleet.fleet.audit.cli import register as register_audit

    register_audit(commands)

    from edgefleet.fleet.identity.broker_cli import register as register_broker_config

    register_broker_config(commands)


def serve_settings(args: argparse.Namespace) -> FleetSettings:
    """The settings ``fleet serve``'s options give over the environment's.

    Raises `CLIError` naming the setting when a value is out of bounds.
    """
    from pydantic import ValidationError

    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.shared.cli import CLIError

    overrides: dict[str, Any] = {}
    for key, value in (
        ("database_url", args.database_url),
        ("broker_url", args.broker),
        ("api_host", args.host),
        ("api_port", args.port),
        ("data_dir", args.data_dir),
        ("api_tls_cert_file", args.tls_cert),
        ("api_tls_key_file", args.tls_key),
        ("api_tls_client_ca_file", args.tls_client_ca),
        ("keys_dir", args.keys_dir),
        ("repository_dir", args.repository_dir),
        ("models_dir", args.models_dir),
        ("drift_interval_s", args.drift_interval_s),
        ("drift_lookback_s", args.drift_lookback_s),
        ("drift_cooldown_s", args.drift_cooldown_s),
    ):
        if value is not None:
            overrides[key] = value
    if args.no_shared_subscription:
        overrides["shared_subscription"] = False
    if args.lab_mode:
        overrides["lab_mode"] = True
    if args.single_person_approval:
        overrides["single_person_approval"] = True
    if args.require_device_identity:
        overrides["require_device_identity"] = True
    if args.migrate:
        overrides["migrate_at_start"] = True
    try:
        return FleetSettings(**overrides)
    except ValidationError as e:
        raise CLIError(f"invalid fleet settings: {e}") from e


def _serve(args: argparse.Namespace) -> int:
    from edgefleet.fleet.service import FleetService
    from edgefleet.shared.cli import CLIError
    from edgefleet.shared.signing.errors import SigningError

    settings = serve_settings(args)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    service = FleetService(settings)
    try:
        service.start()
    except (RuntimeError, ValueError, SigningError) as e:
        raise CLIError(str(e)) from e
    console(
        f"edgefleet fleet console: {service.base_url}  (broker {settings.broker_url})",
        url=service.base_url,
    )
    if service.bootstrap_admin_token:
        console("admin token (shown once, store it now): " + service.bootstrap_admin_token)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
    return 0


def _lab_keys(args: argparse.Namespace) -> int:
    from edgefleet.fleet.keys import create_lab_setup, passphrase_from_env
    from edgefleet.shared.cli import CLIError
    from edgefleet.shared.signing.errors import SigningError

    try:
        setup = create_lab_setup(args.dir, passphrase_from_env())
    except (SigningError, FileExistsError) as e:
        raise CLIError(str(e)) from e
    print(f"keys:          {setup.keys_dir}")
    print(f"repository:    {setup.repository_dir}")
    print(f"device bundle: {setup.bundle_dir}")
    print(f"run: edgefleet fleet serve --keys-dir {setup.keys_dir} --lab-mode")
    return 0
