"""The device's credentials in use: its identity for the repository, the broker and TLS.

`DeviceCredentials` holds the device key and its current certificate from the identity
directory (`edgefleet.agent.identity`) and signs each repository request with them
(`edgefleet.shared.device_auth`: the certificate, a timestamp and a signature over the
method and the path, in ``Authorization``). No token is shared between devices: a
request proves which device sent it, and a revoked device is refused by the fleet.

A renewed certificate (by the daemon's timer, `edgefleet.agent.renewal`, or by
``edgefleet agent renew``) is noticed by the file's stat and read again before the next
signature, and loaded into `tls_context` for the next connection.

`fleet_tls_context` is how the agent verifies the fleet's HTTPS server: the system's
CAs, the device CA pinned at enrollment (a lab fleet may have its own CA sign its server
certificate; a device certificate cannot pass for a server, as it is for ``clientAuth``
only) and ``fleet_ca_file``; with credentials it presents the device certificate to a
server that asks for one.

`load_credentials` decides from the config whether the identity is in use and
`broker_with_identity` what the broker link then connects with. Errors: `IdentityError`.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from edgefleet.agent.config import AgentConfig, BrokerConfig
from edgefleet.agent.identity_files import (
    BROKER_PASSWORD_FILE,
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    IdentityError,
)

if TYPE_CHECKING:
    from cryptography import x509

# cryptography (~10 MiB of RSS) is imported by `DeviceCredentials` only: a device without
# an identity (`load_credentials` returns None) never loads it.

logger = logging.getLogger(__name__)


class DeviceCredentials:
    """The device key and its current certificate; thread-safe.

    Raises `IdentityError` at construction if the identity directory holds no key,
    certificate and CA, or they do not read.
    """

    def __init__(self, identity_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.identity_dir = identity_dir
        self.key_path = identity_dir / KEY_FILE
        self.cert_path = identity_dir / CERT_FILE
        self.ca_path = identity_dir / CA_FILE
        self._clock = clock
        self._lock = threading.Lock()
        self._contexts: list[ssl.SSLContext] = []
        missing = [p.name for p in (self.key_path, self.cert_path, self.ca_path) if not p.exists()]
        if missing:
            raise IdentityError(
                f"no device identity in {identity_dir} ({', '.join(missing)} missing):"
                " run `edgefleet agent enroll` first"
            )
        from edgefleet.agent.identity import load_or_create_key

        self._key = load_or_create_key(identity_dir)
        self._stat: tuple[int, int, int] | None = None
        self._certificate, self._der = self._read()

    @property
    def certificate(self) -> x509.Certificate:
        """The current certificate (read again if the file changed)."""
        self._refresh()
        return self._certificate

    @property
    def device_id(self) -> str:
        from cryptography.x509.oid import NameOID

        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def authorization(self, method: str, url: str) -> dict[str, str]:
        """The ``Authorization`` header of one signed request (a `RequestAuth`)."""
        from edgefleet.shared.device_auth import authorization as signed_authorization

        self._refresh()
        with self._lock:
            der = self._der
        return {"Authorization": signed_authorization(self._key, der, method, url, self._clock())}

    def tls_context(self, extra_ca_file: Path | None = None) -> ssl.SSLContext:
        """A client context that verifies the fleet (`fleet_tls_context`) and presents
        this device's certificate; it follows renewals. Raises `IdentityError`."""
        context = fleet_tls_context(self.ca_path, extra_ca_file)
        _load_chain(context, self.cert_path, self.key_path)
        with self._lock:
            self._contexts.append(context)
        return context

    def _refresh(self) -> None:
        try:
            stat = _stat_of(self.cert_path)
        except OSError:
            return  # mid-replace or gone: keep signing with the one in memory
        if stat == self._stat:
            return
        try:
            certificate, der = self._read()
        except IdentityError as e:
            logger.warning("keeping the device certificate in memory: %s", e)
            return
        with self._lock:
            changed = der != self._der
            self._certificate, self._der = certificate, der
            contexts = list(self._contexts)
        if changed:
            logger.info(
                "device certificate %x (until %s) is now in use",
                certificate.serial_number,
                certificate.not_valid_after_utc,
            )
            for context in contexts:
                try:
                    _load_chain(context, self.cert_path, self.key_path)
                except IdentityError as e:
                    logger.warning("%s", e)

    def _read(self) -> tuple[x509.Certificate, bytes]:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            stat = _stat_of(self.cert_path)
            certificate = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError) as e:
            raise IdentityError(f"cannot read the device certificate {self.cert_path}: {e}") from e
        if certificate.public_key() != self._key.public_key():
            raise IdentityError(f"{self.cert_path} is not for the key in {self.key_path}")
        self._stat = stat
        return certificate, certificate.public_bytes(Encoding.DER)


def _stat_of(path: Path) -> tuple[int, int, int]:
    # The inode changes with every atomic replace; size and mtime catch an in-place edit.
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise IdentityError(f"cannot load the device certificate {cert} for TLS: {e}") from e


def fleet_tls_context(
    pinned_ca: Path | None = None, extra_ca_file: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context for the fleet's HTTPS: system CAs, ``pinned_ca`` if it exists,
    ``extra_ca_file``; hostname checked. Raises `IdentityError` for an unreadable file."""
    context = ssl.create_default_context()
    for path in (pinned_ca, extra_ca_file):
        if path is None or (path == pinned_ca and not path.exists()):
            continue
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as e:
            raise IdentityError(f"cannot load the CA certificates {path}: {e}") from e
    return context


def load_credentials(config: AgentConfig) -> DeviceCredentials | None:
    """The device's credentials if the config puts its identity in use, else None.

    Raises `IdentityError` with ``identity.use`` ``on`` and no identity, for an identity
    that does not read, or for a certificate naming another device than ``device_id``.
    """
    use = config.identity.use
    directory = config.identity_dir
    if use == "off" or (use == "auto" and not (directory / CERT_FILE).exists()):
        return None
    credentials = DeviceCredentials(directory)
    if credentials.device_id != config.device_id:
        raise IdentityError(
            f"the certificate in {directory} is for device {credentials.device_id!r}, this"
            f" agent is {config.device_id!r}"
        )
    return credentials


def broker_with_identity(broker: BrokerConfig, credentials: DeviceCredentials) -> BrokerConfig:
    """``broker`` with the identity's certificate, key and pinned CA where it names none,
    and, when enrollment gave the device a broker password (a broker that checks
    passwords, not certificates), its id and that password as the MQTT login.

    Over plain ``mqtt://`` nothing changes (and a warning says the link is not mTLS).
    """
    if not broker.tls:
        logger.warning(
            "the broker URL %s is not mqtts://: the device identity is not used on it",
            broker.url,
        )
        return broker
    update: dict[str, object] = {
        "ca_file": broker.ca_file or credentials.ca_path,
        "cert_file": broker.cert_file or credentials.cert_path,
        "key_file": broker.key_file or credentials.key_path,
    }
    password_file = credentials.identity_dir / BROKER_PASSWORD_FILE
    if broker.username is None and password_file.exists():
        update["username"] = credentials.device_id
        update["password"] = SecretStr(password_file.read_text().strip())
    return broker.model_copy(update=update)
