"""Ed25519 signing keys, kept encrypted at rest.

A private key is a PEM PKCS#8 file encrypted with a passphrase (``BestAvailableEncryption``),
mode 0600, beside a ``<name>.pub.json`` holding the public key in TUF's key format (so the
key id is the one TUF computes). Unencrypted keys exist only for labs, and only when the
caller says so explicitly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    KeySerializationEncryption,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from edgefleet.shared.durable import atomic_write_bytes
from edgefleet.shared.signing.errors import KeyFileError
from edgefleet.shared.signing.tufapi import CryptoSigner, SSlibKey

logger = logging.getLogger(__name__)

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - the name of a variable
TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
DIRECTOR = "director"
ALL_KEYS = (*TUF_ROLES, DIRECTOR)


def generate_signer() -> CryptoSigner:
    """A new Ed25519 key pair, as a signer whose public key has TUF's key id."""
    return CryptoSigner.generate_ed25519()


def resolve_passphrase(
    given: str | None,
    *,
    insecure_no_passphrase: bool = False,
    environ: Mapping[str, str] | None = None,
) -> bytes | None:
    """The passphrase to use: ``given``, else ``$EDGEFLEET_KEY_PASSPHRASE``.

    Returns None (store keys unencrypted) only with ``insecure_no_passphrase``.
    Raises `KeyFileError` if there is no non-empty passphrase and that flag is not set.
    """
    env = os.environ if environ is None else environ
    value = given if given is not None else env.get(PASSPHRASE_ENV)
    if value:
        return value.encode()
    if insecure_no_passphrase:
        return None
    raise KeyFileError(
        f"no key passphrase: pass one or set {PASSPHRASE_ENV} "
        "(or --insecure-no-passphrase for a lab; the keys are then stored in clear)"
    )


def private_key_path(key_dir: Path, name: str) -> Path:
    """Where the private key ``name`` lives in ``key_dir``."""
    return key_dir / f"{name}.key.pem"


def public_key_path(key_dir: Path, name: str) -> Path:
    """Where the public key ``name`` lives in ``key_dir``."""
    return key_dir / f"{name}.pub.json"


def save_signer(signer: CryptoSigner, key_dir: Path, name: str, passphrase: bytes | None) -> None:
    """Store ``signer`` as ``name`` in ``key_dir``: private key encrypted, public key in clear.

    ``passphrase`` None stores the private key unencrypted (labs only).
    Raises `KeyFileError` if a key of that name exists already (keys are never overwritten).
    """
    priv_path = private_key_path(key_dir, name)
    if priv_path.exists():
        raise KeyFileError(f"key {name!r} exists already at {priv_path}; refusing to overwrite")
    private_key = _private_key_of(signer)
    encryption: KeySerializationEncryption = (
        BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    )
    pem = private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    atomic_write_bytes(priv_path, pem, mode=0o600, create_parents=True)
    save_public_key(signer.public_key, public_key_path(key_dir, name))
    logger.debug("stored key %s (%s) in %s", name, signer.public_key.keyid, key_dir)


def save_public_key(key: SSlibKey, path: Path) -> None:
    """Write a public key as ``{"keyid": ..., "key": <TUF key dict>}``."""
    doc = {"keyid": key.keyid, "key": key.to_dict()}
    data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write_bytes(path, data, create_parents=True)


def load_public_key(path: Path) -> SSlibKey:
    """Read a public key written by `save_public_key`.

    Raises `KeyFileError` if the file is missing or not such a key.
    """
    try:
        doc = json.loads(path.read_bytes())
        key = SSlibKey.from_dict(doc["keyid"], dict(doc["key"]))
    except FileNotFoundError as e:
        raise KeyFileError(f"public key file {path} does not exist") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{path} is not a public key file: {e}") from e
    return key


def load_signer(path: Path, passphrase: bytes | None) -> CryptoSigner:
    """Load a private key file (encrypted or not) as a signer.

    Raises `KeyFileError` naming the file if it is missing, the passphrase is wrong or
    missing, or the file is not an Ed25519 private key.
    """
    try:
        pem = path.read_bytes()
    except FileNotFoundError as e:
        raise KeyFileError(f"private key file {path} does not exist") from e
    except OSError as e:
        raise KeyFileError(f"cannot read private key file {path}: {e}") from e
    encrypted = b"ENCRYPTED" in pem.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise KeyFileError(f"private key {path} is encrypted and no passphrase was given")
    try:
        private_key = load_pem_private_key(pem, passphrase if encrypted else None)
    except ValueError as e:
        if encrypted:
            raise KeyFileError(f"wrong passphrase for private key {path}") from e
        raise KeyFileError(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(private_key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} holds a {type(private_key).__name__}, expected an Ed25519 private key"
        )
    return CryptoSigner(private_key)


def load_named(key_dir: Path, name: str, passphrase: bytes | None) -> CryptoSigner:
    """Load the private key ``name`` from ``key_dir``; raises `KeyFileError`."""
    return load_signer(private_key_path(key_dir, name), passphrase)


def load_all(
    key_dir: Path, passphrase: bytes | None, names: tuple[str, ...] = ALL_KEYS
) -> dict[str, CryptoSigner]:
    """Load every key in ``names`` that ``key_dir`` holds (an offline key may be absent).

    Raises `KeyFileError` for a key file that exists but cannot be opened.
    """
    return {
        name: load_named(key_dir, name, passphrase)
        for name in names
        if private_key_path(key_dir, name).exists()
    }


def _private_key_of(signer: CryptoSigner) -> Ed25519PrivateKey:
    # CryptoSigner keeps its key private; its PEM export is the supported way out.
    key = load_pem_private_key(signer.private_bytes, None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"expected an Ed25519 key, got {type(key).__name__}")
    return key
