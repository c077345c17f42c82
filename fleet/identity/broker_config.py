"""What the broker enforces, as Mosquitto 2.x configuration text: pure rendering.

Two listeners, each with its own settings (``per_listener_settings true``):

- the **device listener** (devices connect here): with ``mtls``, a client certificate
  from the device CA is required, its CN (= the device id) becomes the MQTT username
  (``use_identity_as_username``) and the username becomes the client id
  (``use_username_as_clientid``), so no client can take over a device's session
  without that device's key; revoked certificates are refused through ``crlfile``. With
  ``password`` (the weaker fallback, for brokers without client certificates) the
  username and password come from ``password_file`` and the username is again the
  client id. Its ACL is `device_acl`: ``pattern`` lines (``%u`` = the username) that let
  a device publish only its own state, telemetry, drift and events and read only its
  own desired state and its own stored acknowledgements. Nothing else, for anyone.
- the **fleet listener** (the fleet service's own clients): the fleet opens several MQTT
  connections with client ids of their own (ingester, publishers, reconciler), which
  ``use_username_as_clientid`` would make kick each other off, hence a listener of its
  own, meant for an address devices cannot reach. Its ACL is `fleet_acl`: only the fleet
  identity `FLEET_IDENTITY`, reading every device topic and writing desired states,
  stored acknowledgements and alerts. In ``password`` mode its password file holds only
  the fleet user, so a device cannot even log in there; with ``mtls`` a device
  certificate can connect but is given nothing.

`FLEET_IDENTITY` contains a ``:``, which a device id cannot (see
`edgefleet.shared.topics.validate_device_id`), so no enrolled device can be the fleet.

Mosquitto 2.0's dynamic-security plugin does not substitute ``%u``/``%c``; the
``acl_file`` patterns do, hence an ACL file. Nothing here touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from edgefleet.shared.topics import ALERTS_TOPIC, DEVICE_TO_FLEET, PREFIX, Channel

# Outside the device-id alphabet (no ':' there), so it can never be a device's CN.
FLEET_IDENTITY = "edgefleet:fleet"
DEFAULT_DEVICE_PORT = 8883
DEFAULT_FLEET_PORT = 8884


class BrokerMode(StrEnum):
    """How clients prove who they are to the broker."""

    MTLS = "mtls"  # client certificates from the device CA (the default, and the strong one)
    PASSWORD = "password"  # per-device passwords over TLS: weaker, see the README  # noqa: S105


@dataclass(frozen=True)
class BrokerFiles:
    """Where the broker finds what the config names (absolute paths, as the broker sees them)."""

    ca_file: Path  # the device CA certificate: verifies clients, and is the server cert's issuer
    cert_file: Path  # the broker's server certificate
    key_file: Path  # its key
    device_acl_file: Path
    fleet_acl_file: Path
    crl_file: Path | None = None  # mtls: the device CA's CRL
    device_password_file: Path | None = None  # password mode
    fleet_password_file: Path | None = None  # password mode


@dataclass(frozen=True)
class Listener:
    """One listener's port and bind address (None: every interface)."""

    port: int
    bind: str | None = None

    def line(self) -> str:
        return f"listener {self.port}" + (f" {self.bind}" if self.bind else "")


def device_acl() -> str:
    """The device listener's ACL: each device its own topics, by ``pattern`` on ``%u``."""
    lines = [
        "# edgefleet device ACL (mosquitto acl_file). %u is the username: the certificate's",
        "# CN in mtls mode, the password file's user otherwise; both are the device id.",
        "# Nothing is granted that is not listed here.",
    ]
    for channel in sorted(DEVICE_TO_FLEET):
        lines.append(f"pattern write {PREFIX}/devices/%u/{channel.value}")
    lines.append(f"pattern read {PREFIX}/devices/%u/{Channel.DESIRED.value}")
    lines.append(f"pattern read {PREFIX}/devices/%u/{Channel.STORED.value}")
    return "\n".join(lines) + "\n"


def fleet_acl(fleet_user: str = FLEET_IDENTITY) -> str:
    """The fleet listener's ACL: the fleet user reads every device topic and writes
    desired states, stored acknowledgements and alerts; nobody else gets anything.

    Raises `ValueError` for a user name with whitespace or nothing in it (the ACL file
    is line-based).
    """
    _check_user(fleet_user)
    return (
        "# edgefleet fleet ACL (mosquitto acl_file): only the fleet's own identity.\n"
        f"user {fleet_user}\n"
        f"topic read {PREFIX}/devices/#\n"
        f"topic write {PREFIX}/devices/+/{Channel.DESIRED.value}\n"
        f"topic write {PREFIX}/devices/+/{Channel.STORED.value}\n"
        f"topic readwrite {ALERTS_TOPIC}\n"
    )


def mosquitto_conf(
    mode: BrokerMode,
    files: BrokerFiles,
    *,
    device: Listener = Listener(DEFAULT_DEVICE_PORT),
    fleet: Listener = Listener(DEFAULT_FLEET_PORT, "127.0.0.1"),
) -> str:
    """The mosquitto.conf text for ``mode``: the two listeners and their security.

    Raises `ValueError` if a file the mode needs is missing from ``files`` (the CRL for
    mtls, the password files for password mode) or both listeners share a port.
    """
    if device.port == fleet.port:
        raise ValueError(f"the device and fleet listeners both use port {device.port}")
    if mode is BrokerMode.MTLS and files.crl_file is None:
        raise ValueError("mtls mode needs the device CA's CRL file (crl_file)")
    if mode is BrokerMode.PASSWORD and (
        files.device_password_file is None or files.fleet_password_file is None
    ):
        raise ValueError("password mode needs device_password_file and fleet_password_file")
    header = [
        f"# edgefleet broker configuration, {mode.value} mode (edgefleet fleet broker-config).",
        "# Mosquitto 2.x. SIGHUP re-reads the ACL, password and CRL files.",
        "per_listener_settings true",
        "",
    ]
    return (
        "\n".join(
            header
            + _listener(mode, files, device, device_side=True)
            + [""]
            + _listener(mode, files, fleet, device_side=False)
        )
        + "\n"
    )


def _listener(
    mode: BrokerMode, files: BrokerFiles, listener: Listener, *, device_side: bool
) -> list[str]:
    who = "devices" if device_side else "the fleet service only (keep it off the device network)"
    lines = [
        f"# {who}",
        listener.line(),
        "allow_anonymous false",
        "tls_version tlsv1.2",
        f"cafile {files.ca_file}",
        f"certfile {files.cert_file}",
        f"keyfile {files.key_file}",
    ]
    if mode is BrokerMode.MTLS:
        lines += [
            "require_certificate true",
            f"crlfile {files.crl_file}",
            "use_identity_as_username true",
        ]
    else:
        password_file = files.device_password_file if device_side else files.fleet_password_file
        lines.append(f"password_file {password_file}")
    if device_side:
        # The client id a device asks for is replaced by its username (= its id), so a
        # client cannot disconnect a device or take over its session by using its id.
        lines.append("use_username_as_clientid true")
    lines.append(f"acl_file {files.device_acl_file if device_side else files.fleet_acl_file}")
    return lines


def _check_user(user: str) -> None:
    if not user or any(c.isspace() for c in user):
        raise ValueError(f"broker user {user!r} must be non-empty and without whitespace")
