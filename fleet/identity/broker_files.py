"""The broker's files on disk: what `edgefleet fleet broker-config` writes, and what the
fleet keeps current afterwards.

`write_broker_setup` writes, into one directory, the mosquitto.conf of
`edgefleet.fleet.identity.broker_config` and every file it names: the device CA
certificate, a broker server certificate and the fleet's own MQTT credential (a client
certificate in mtls mode, a password in password mode), both issued from the device CA,
the two ACL files, the CRL and (password mode) the password files. Keys and the fleet
password are mode 0600; what the broker reads is 0644 (Mosquitto drops privileges).

`sync_broker_files` rewrites the two files that change while the fleet runs: the CRL
(when the revoked set changes, and daily, so it never expires at the broker) and the
device password file; it returns whether anything changed, and `reload_broker` then
runs the operator's reload command.
"""

from __future__ import annotations

import grp
import logging
import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edgefleet.fleet.identity.broker_config import (
    FLEET_IDENTITY,
    BrokerFiles,
    BrokerMode,
    Listener,
    device_acl,
    fleet_acl,
    mosquitto_conf,
)
from edgefleet.fleet.identity.broker_passwords import mosquitto_hash, password_file
from edgefleet.fleet.identity.ca import DeviceCA
from edgefleet.shared.durable import atomic_write_bytes

logger = logging.getLogger(__name__)

BROKER_CN = "edgefleet:broker"
# A password file line is ``user:hash``, so the mtls fleet identity (with its ':') cannot
# be a password user; in password mode the fleet listener's password file holds only
# this user, so no device password logs in there whatever the device is called.
FLEET_PASSWORD_USER = "edgefleet-fleet"  # noqa: S105  (a user name)
SERVICE_CERT_LIFETIME = timedelta(days=365)
CRL_REFRESH = timedelta(days=1)  # well inside the CRL's 30-day validity
RELOAD_TIMEOUT_S = 30.0
BROKER_GROUP = "mosquitto"


@dataclass(frozen=True)
class BrokerLayout:
    """The file names inside a broker config directory."""

    directory: Path

    @property
    def conf(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def broker_cert(self) -> Path:
        return self.directory / "broker.pem"

    @property
    def broker_key(self) -> Path:
        return self.directory / "broker.key"

    @property
    def fleet_cert(self) -> Path:
        return self.directory / "fleet.pem"

    @property
    def fleet_key(self) -> Path:
        return self.directory / "fleet.key"

    @property
    def fleet_password(self) -> Path:
        return self.directory / "fleet.password"

    @property
    def device_passwords(self) -> Path:
        return self.directory / "passwd.devices"

    @property
    def fleet_passwords(self) -> Path:
        return self.directory / "passwd.fleet"

    def broker_files(self, mode: BrokerMode) -> BrokerFiles:
        """What the mosquitto.conf names, for ``mode``."""
        password = mode is BrokerMode.PASSWORD
        return BrokerFiles(
            ca_file=self.ca.absolute(),
            cert_file=self.broker_cert.absolute(),
            key_file=self.broker_key.absolute(),
            device_acl_file=(self.directory / "acl.devices").absolute(),
            fleet_acl_file=(self.directory / "acl.fleet").absolute(),
            crl_file=None if password else self.crl.absolute(),
            device_password_file=self.device_passwords.absolute() if password else None,
            fleet_password_file=self.fleet_passwords.absolute() if password else None,
        )


@dataclass(frozen=True)
class BrokerSetup:
    """A written broker config directory and how the fleet reaches the broker."""

    layout: BrokerLayout
    mode: BrokerMode
    device: Listener
    fleet: Listener

    def fleet_settings(self, host: str) -> dict[str, str]:
        """The fleet's settings (``EDGEFLEET_FLEET_*`` names) for this broker at ``host``."""
        return {f"EDGEFLEET_FLEET_{name.upper()}": v for name, v in self.fleet_fields(host).items()}

    def fleet_fields(self, host: str) -> dict[str, str]:
        """`fleet_settings` as `FleetSettings` field names, for a fleet built in code."""
        layout = self.layout
        fields = {
            "broker_url": f"mqtts://{host}:{self.fleet.port}",
            "broker_ca_file": str(layout.ca.absolute()),
            "require_device_identity": "true",
            "broker_config_dir": str(layout.directory.absolute()),
        }
        if self.mode is BrokerMode.MTLS:
            fields["broker_cert_file"] = str(layout.fleet_cert.absolute())
            fields["broker_key_file"] = str(layout.fleet_key.absolute())
        else:
            fields["broker_device_auth"] = "password"
            fields["broker_username"] = FLEET_PASSWORD_USER
            fields["broker_password"] = layout.fleet_password.read_text().strip()
        return fields


def write_broker_setup(
    directory: Path,
    ca: DeviceCA,
    *,
    mode: BrokerMode,
    device: Listener,
    fleet: Listener,
    server_names: tuple[str, ...],
    crl_pem: bytes,
    device_passwords: list[tuple[str, str]],
    now: datetime,
) -> BrokerSetup:
    """Write the whole broker config directory (made if missing) and return it.

    A fleet password already in ``directory`` is kept, so re-running (new server names,
    a broker certificate near expiry) does not log the running fleet out; certificates
    are issued afresh. Raises `ValueError` for listeners sharing a port or no server
    name, `OSError` if the directory cannot be written.
    """
    if not server_names:
        raise ValueError("the broker certificate needs at least one server name (DNS or IP)")
    layout = BrokerLayout(directory)
    files = layout.broker_files(mode)
    conf = mosquitto_conf(mode, files, device=device, fleet=fleet)  # validates first
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    _write_public(layout.ca, ca.certificate_pem.encode())
    _issue(ca, layout.broker_cert, layout.broker_key, BROKER_CN, server_names, now=now)
    if mode is BrokerMode.MTLS:
        _issue(ca, layout.fleet_cert, layout.fleet_key, FLEET_IDENTITY, (), now=now)
        _write_public(files.fleet_acl_file, fleet_acl().encode())
        _write_public(layout.crl, crl_pem)
    else:
        if not layout.fleet_password.exists():
            atomic_write_bytes(
                layout.fleet_password, secrets.token_urlsafe(32).encode() + b"\n", mode=0o600
            )
        fleet_password = layout.fleet_password.read_text().strip()
        _write_public(
            layout.fleet_passwords,
            password_file([(FLEET_PASSWORD_USER, mosquitto_hash(fleet_password))]).encode(),
        )
        _write_public(files.fleet_acl_file, fleet_acl(FLEET_PASSWORD_USER).encode())
        _write_public(layout.device_passwords, password_file(device_passwords).encode())
    _write_public(files.device_acl_file, device_acl().encode())
    _write_public(layout.conf, conf.encode())
    return BrokerSetup(layout, mode, device, fleet)


def sync_broker_files(
    layout: BrokerLayout,
    *,
    revoked: set[str],
    crl_pem: bytes,
    device_passwords: list[tuple[str, str]] | None,
    now: datetime,
) -> bool:
    """Bring the CRL and (``device_passwords`` given) the device password file up to
    date; True if a file was rewritten (the broker must reload).

    The CRL is rewritten when its revoked serials (hex) differ from ``revoked``, when it
    is older than a day, or when it does not read. Raises `OSError`.
    """
    changed = False
    if _crl_is_stale(layout.crl, revoked, now):
        _write_public(layout.crl, crl_pem)
        changed = True
    if device_passwords is not None:
        text = password_file(device_passwords).encode()
        current = layout.device_passwords.read_bytes() if layout.device_passwords.exists() else b""
        if current != text:
            _write_public(layout.device_passwords, text)
            changed = True
    return changed


def reload_broker(command: str) -> bool:
    """Run the operator's reload command (split like a shell would, no shell); True if it
    exited 0. A failure is logged, never raised: the files are written either way."""
    try:
        done = subprocess.run(  # noqa: S603  (the operator's own configured command)
            shlex.split(command),
            capture_output=True,
            timeout=RELOAD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        logger.error("broker reload command %r failed: %s", command, e)
        return False
    if done.returncode != 0:
        logger.error(
            "broker reload command %r exited %d: %s",
            command,
            done.returncode,
            done.stderr.decode(errors="replace").strip()[:500],
        )
        return False
    return True


def _crl_is_stale(path: Path, revoked: set[str], now: datetime) -> bool:
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return True
    listed = {format(entry.serial_number, "x") for entry in crl}
    return listed != revoked or now - crl.last_update_utc >= CRL_REFRESH


def _issue(
    ca: DeviceCA,
    cert_path: Path,
    /,
    key_path: Path,
    common_name: str,
    server_names: tuple[str, ...],
    *,
    now: datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.sign_service(
        key.public_key(),
        common_name,
        lifetime=SERVICE_CERT_LIFETIME,
        now=now,
        server_names=server_names,
    )
    atomic_write_bytes(
        key_path,
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        mode=0o600,
    )
    if key_path.name.startswith("broker"):
        _share_with_broker(key_path)
    _write_public(cert_path, issued.pem.encode())


def _share_with_broker(key_path: Path) -> None:
    """Let the broker read its key after it drops privileges: group ``mosquitto``
    (the Debian package's), mode 0640, when run as root and that group exists."""
    try:
        group = grp.getgrnam(BROKER_GROUP).gr_gid
    except KeyError:
        return
    if os.geteuid() == 0:
        os.chown(key_path, 0, group)
        key_path.chmod(0o640)


def _write_public(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o644)
