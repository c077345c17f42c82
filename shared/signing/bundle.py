"""The provisioning bundle a device pins: the TUF root and the director's public keys.

``trusted_root.json`` is a TUF root metadata file (the device's trust anchor for the
image repository; later roots reach it through TUF's root chain). ``director_pub.json``
lists the director keys the device accepts desired states from::

    {"schema": "edgefleet/v1/director-keys", "keys": {"<keyid>": <TUF key dict>}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edgefleet.shared.durable import atomic_write_bytes
from edgefleet.shared.signing.errors import KeyFileError

if TYPE_CHECKING:
    # securesystemslib's signer module imports cryptography (~10 MiB of RSS): an agent
    # loads it with its first desired state (`read_director_keys` checks the file at start).
    from edgefleet.shared.signing.tufapi import SSlibKey

TRUSTED_ROOT_FILE: Final = "trusted_root.json"
DIRECTOR_KEYS_FILE: Final = "director_pub.json"
DIRECTOR_KEYS_SCHEMA: Final = "edgefleet/v1/director-keys"


def write_bundle(out_dir: Path, root_bytes: bytes, director_keys: list[SSlibKey]) -> None:
    """Write ``trusted_root.json`` and ``director_pub.json`` into ``out_dir``."""
    atomic_write_bytes(out_dir / TRUSTED_ROOT_FILE, root_bytes, create_parents=True)
    write_director_keys(out_dir / DIRECTOR_KEYS_FILE, director_keys)


def write_director_keys(path: Path, keys: list[SSlibKey]) -> None:
    """Write the director public keys file."""
    doc = {"schema": DIRECTOR_KEYS_SCHEMA, "keys": {k.keyid: k.to_dict() for k in keys}}
    data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write_bytes(path, data, create_parents=True)


def load_director_keys(path: Path) -> dict[str, SSlibKey]:
    """Read a director public keys file as ``{keyid: key}``.

    Raises `KeyFileError` if it is missing, of another schema, or holds no key.
    """
    return director_keys(path, read_director_keys(path))


def read_director_keys(path: Path) -> dict[str, Any]:
    """The ``keys`` of a director public keys file, unparsed: ``{keyid: key dict}``.

    Raises `KeyFileError` if it is missing, of another schema, or holds no key.
    """
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as e:
        raise KeyFileError(f"director keys file {path} does not exist") from e
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read director keys file {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("schema") != DIRECTOR_KEYS_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise KeyFileError(f"{path}: expected schema {DIRECTOR_KEYS_SCHEMA!r}, found {found!r}")
    keys = doc.get("keys")
    if not isinstance(keys, dict):
        raise KeyFileError(f"{path}: invalid director key: 'keys' is not an object")
    if not keys:
        raise KeyFileError(f"{path} lists no director key")
    return keys


def director_keys(path: Path, keys: dict[str, Any]) -> dict[str, SSlibKey]:
    """The keys `read_director_keys` read from ``path``, parsed; raises `KeyFileError`."""
    from edgefleet.shared.signing.tufapi import SSlibKey

    try:
        return {keyid: SSlibKey.from_dict(keyid, dict(kd)) for keyid, kd in keys.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise KeyFileError(f"{path}: invalid director key: {e}") from e
