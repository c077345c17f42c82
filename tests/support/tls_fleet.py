"""TLS for tests, from the fleet's own device CA: server certificates for the fleet's HTTPS
and for Mosquitto, and a Mosquitto listener that requires device certificates.

The CA is the one the fleet itself opens (``<keys_dir>/device-ca``, key in clear as a
lab-mode fleet keeps it), made here before the fleet starts, so the certificates a test
serves with and the ones devices enroll for chain to the same CA, and an enrolled
device's pinned ``ca.pem`` verifies both servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edgefleet.fleet.identity.ca import DeviceCA
from edgefleet.fleet.identity.service import ca_directory
from tests.support.mosquitto import MosquittoBroker, free_port

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerFiles:
    """A server's certificate and key, and the CA that issued it."""

    cert: Path
    key: Path
    ca: Path


def device_ca(keys_dir: Path, data_dir: Path) -> DeviceCA:
    """The device CA a fleet with these dirs uses, made now (key in clear) if missing."""
    return DeviceCA.open_or_create(
        ca_directory(keys_dir, data_dir), None, allow_unencrypted=True, now=datetime.now(UTC)
    )


def server_files(
    ca: DeviceCA, directory: Path, name: str, *, server_names: tuple[str, ...] = SERVER_NAMES
) -> ServerFiles:
    """A TLS server certificate of ``ca`` for 127.0.0.1 and localhost (a client
    certificate of a service with ``server_names`` empty), written to ``directory``
    (readable by a broker that drops privileges)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.sign_service(
        key.public_key(),
        f"edgefleet:{name}",
        lifetime=timedelta(days=2),
        now=datetime.now(UTC),
        server_names=server_names,
    )
    files = ServerFiles(directory / f"{name}.pem", directory / f"{name}.key", directory / "ca.pem")
    files.cert.write_text(issued.pem)
    files.key.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    files.ca.write_text(ca.certificate_pem)
    for path in (files.cert, files.key, files.ca):
        path.chmod(0o644)
    directory.chmod(0o755)
    return files


def mtls_broker(workdir: Path, files: ServerFiles) -> tuple[MosquittoBroker, int]:
    """A Mosquitto with its plain listener (for the fleet and test subscribers) and an
    mTLS one on the returned port: a certificate of the device CA required, its CN the
    username. Not started."""
    port = free_port()
    extra = (
        f"listener {port} 127.0.0.1\n"
        f"cafile {files.ca}\ncertfile {files.cert}\nkeyfile {files.key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    if os.geteuid() == 0:
        extra += "user root\n"  # else it drops to a user that cannot read the test's files
    return MosquittoBroker(workdir, extra_config=extra), port
