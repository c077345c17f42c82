"""``edgefleet fleet broker-config``: write a closed Mosquitto's configuration directory.

It opens the fleet's device CA and database the way ``fleet serve`` would (same settings
and environment), writes everything the broker needs (`write_broker_setup`) and prints
the fleet settings that go with it.
"""

from __future__ import annotations

import argparse
import shlex
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.fleet.identity.broker_config import Listener
    from edgefleet.fleet.identity.broker_files import BrokerSetup
    from edgefleet.fleet.settings import FleetSettings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``broker-config`` to the ``fleet`` commands."""
    parser = commands.add_parser(
        "broker-config",
        help="write a Mosquitto config that binds every device to its own topics",
        description="Writes mosquitto.conf, ACL files, a broker certificate and the fleet's"
        " MQTT credential (all from the device CA), the CRL and, in password mode, the"
        " password files into DIR, then prints the fleet settings that go with them."
        " Fleet settings not given here come from EDGEFLEET_FLEET_* variables.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--mode",
        choices=("mtls", "password"),
        default="mtls",
        help="mtls: device certificates (default); password: per-device passwords (weaker)",
    )
    parser.add_argument(
        "--server-name",
        action="append",
        default=None,
        help="DNS name or IP the broker certificate is for (repeatable;"
        " default: this host's name, localhost and 127.0.0.1)",
    )
    parser.add_argument("--device-port", type=int, default=8883)
    parser.add_argument("--device-bind", help="address devices connect to (default: all)")
    parser.add_argument("--fleet-port", type=int, default=8884)
    parser.add_argument(
        "--fleet-bind", default="127.0.0.1", help="the fleet's own listener (default 127.0.0.1)"
    )
    parser.add_argument("--database-url", help="the fleet's database (as for fleet serve)")
    parser.add_argument("--data-dir", type=Path, help="the fleet's data dir")
    parser.add_argument("--keys-dir", type=Path, help="the fleet's keys dir (the device CA)")
    parser.add_argument(
        "--lab-mode", action="store_true", help="a lab fleet: its device CA key is in clear"
    )
    parser.set_defaults(handler=_broker_config)


def broker_setup_for_fleet(
    settings: FleetSettings,
    out: Path,
    *,
    device: Listener,
    fleet: Listener,
    server_names: tuple[str, ...],
) -> BrokerSetup:
    """Write the broker directory ``out`` for the fleet ``settings`` describe: its device
    CA, its CRL and (``broker_device_auth`` "password") its devices' password hashes.

    Raises `IdentityUnavailableError` (the CA cannot be opened), ValueError (bad
    listeners or names) and OSError (``out`` cannot be written).
    """
    from sqlmodel import Session, select

    from edgefleet.fleet.identity.broker_config import BrokerMode
    from edgefleet.fleet.identity.broker_files import write_broker_setup
    from edgefleet.fleet.identity.service import identity_service_for
    from edgefleet.fleet.store.engine import make_engine
    from edgefleet.fleet.store.identity_tables import BrokerPasswordRow
    from edgefleet.fleet.store.migrate import create_all
    from edgefleet.shared.messages import utcnow

    mode = BrokerMode.MTLS if settings.broker_device_auth == "certificate" else BrokerMode.PASSWORD
    engine = make_engine(settings.database_url)
    try:
        create_all(engine)
        identity = identity_service_for(settings, engine)
        with Session(engine) as session:
            crl_pem = identity.crl_pem(session)
            rows = session.exec(select(BrokerPasswordRow)).all()
            passwords = [(row.device_id, row.password_hash) for row in rows]
        return write_broker_setup(
            out,
            identity.ca(),
            mode=mode,
            device=device,
            fleet=fleet,
            server_names=server_names,
            crl_pem=crl_pem,
            device_passwords=passwords,
            now=utcnow(),
        )
    finally:
        engine.dispose()


def _broker_config(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edgefleet.fleet.identity.broker_config import BrokerMode, Listener
    from edgefleet.fleet.identity.service import IdentityUnavailableError
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.shared.cli import CLIError

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("database_url", args.database_url),
            ("data_dir", args.data_dir),
            ("keys_dir", args.keys_dir),
        )
        if value is not None
    }
    if args.lab_mode:
        overrides["lab_mode"] = True
    mode = BrokerMode(args.mode)
    overrides["broker_device_auth"] = "certificate" if mode is BrokerMode.MTLS else "password"
    try:
        settings = FleetSettings(**overrides)
    except ValidationError as e:
        raise CLIError(f"invalid fleet settings: {e}") from e
    server_names = tuple(args.server_name or (socket.gethostname(), "localhost", "127.0.0.1"))
    try:
        setup = broker_setup_for_fleet(
            settings,
            args.out,
            device=Listener(args.device_port, args.device_bind),
            fleet=Listener(args.fleet_port, args.fleet_bind),
            server_names=server_names,
        )
    except (IdentityUnavailableError, ValueError, OSError) as e:
        raise CLIError(f"cannot write the broker config: {e}") from e
    print(f"wrote {setup.layout.conf} ({mode.value} mode); start the broker with")
    print(f"  mosquitto -c {setup.layout.conf}")
    print("and reload it (SIGHUP) when the fleet rewrites the CRL or password file.")
    print("Fleet settings:")
    for key, value in setup.fleet_settings(args.fleet_bind).items():
        print(f"export {key}={shlex.quote(value)}")
    print("export EDGEFLEET_FLEET_BROKER_RELOAD_COMMAND='pkill -HUP -x mosquitto'")
    return 0
