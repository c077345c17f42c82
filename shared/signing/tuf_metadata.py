"""Pure construction and verification of the image repository's TUF metadata.

Shared by ``edgefleet keys init`` (which writes the first metadata set), the fleet's
`ImageRepository` and ``edgefleet model sign`` (which signs targets offline with the
release key). Nothing here touches the disk or the network: metadata in, metadata out.

Invariants:
- every root has ``consistent_snapshot`` set, so clients fetch ``N.snapshot.json``,
  ``N.targets.json`` and ``<sha256>.<name>`` targets, and artifacts are served by hash;
- each role has exactly one Ed25519 key and threshold 1 (a lab-sized setup; thresholds
  can be raised with `Root.add_key` on a later root version);
- a new version of a role is always the previous version + 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgefleet.shared.signing.errors import Expired, Malformed, TufError
from edgefleet.shared.signing.keys import TUF_ROLES
from edgefleet.shared.signing.tufapi import (
    Metadata,
    MetaFile,
    Root,
    Signer,
    Snapshot,
    SSlibKey,
    TargetFile,
    Targets,
    Timestamp,
)

# Target names become URL path segments and file names: keep them boring.
TARGET_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$"
_TARGET_NAME_RE = re.compile(TARGET_NAME_PATTERN)
_SERIALIZER = JSONSerializer(compact=False)


@dataclass(frozen=True)
class Expiries:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        """The validity period of ``role``; raises `ValueError` for an unknown role."""
        if role not in TUF_ROLES:
            raise ValueError(f"unknown TUF role {role!r}, expected one of {TUF_ROLES}")
        value: timedelta = getattr(self, role)
        return value

    @classmethod
    def scaled(cls, *, root_days: float = 365, targets_days: float = 90) -> Expiries:
        """Defaults with the long-lived roles' periods overridden (``keys init --expires-days``)."""
        return cls(root=timedelta(days=root_days), targets=timedelta(days=targets_days))


def to_bytes(md: Metadata[Any]) -> bytes:
    """The bytes a repository stores and serves for ``md``."""
    data: bytes = md.to_bytes(_SERIALIZER)
    return data


def check_target_name(name: str) -> str:
    """Return ``name`` if it is a safe target name; raises `ValueError` otherwise."""
    if not _TARGET_NAME_RE.match(name):
        raise ValueError(
            f"target name {name!r} must match {TARGET_NAME_PATTERN} (no slashes or spaces)"
        )
    return name


def new_root(keys: Mapping[str, SSlibKey], now: datetime, expiries: Expiries) -> Root:
    """Root version 1 delegating each TUF role to ``keys[role]`` (threshold 1).

    Raises `ValueError` if a role has no key.
    """
    missing = [role for role in TUF_ROLES if role not in keys]
    if missing:
        raise ValueError(f"no key for TUF role(s) {missing}")
    root = Root(expires=now + expiries.root, consistent_snapshot=True)
    for role in TUF_ROLES:
        root.add_key(keys[role], role)
    return root


def initial_metadata(
    signers: Mapping[str, Signer], now: datetime, expiries: Expiries
) -> dict[str, Metadata[Any]]:
    """A complete, signed version-1 metadata set: root, targets (empty), snapshot, timestamp.

    Raises `ValueError` if a signer for a TUF role is missing.
    """
    missing = [role for role in TUF_ROLES if role not in signers]
    if missing:
        raise ValueError(f"no signer for TUF role(s) {missing}")
    root = new_root({role: public_key(signers[role], role) for role in TUF_ROLES}, now, expiries)
    targets: Metadata[Targets] = Metadata(Targets(expires=now + expiries.targets))
    snapshot: Metadata[Snapshot] = Metadata(
        Snapshot(expires=now + expiries.snapshot, meta={"targets.json": MetaFile(version=1)})
    )
    timestamp: Metadata[Timestamp] = Metadata(
        Timestamp(expires=now + expiries.timestamp, snapshot_meta=MetaFile(version=1))
    )
    mds: dict[str, Metadata[Any]] = {
        "root": Metadata(root),
        "targets": targets,
        "snapshot": snapshot,
        "timestamp": timestamp,
    }
    for role, md in mds.items():
        md.sign(signers[role])
    return mds


def parse(role: str, data: bytes) -> Metadata[Any]:
    """Deserialize ``data`` as metadata of ``role``.

    Raises `Malformed` if it is not TUF metadata or is metadata of another role.
    """
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as e:
        raise Malformed(f"{role} metadata does not parse: {e}") from e
    if md.signed.type != role:
        raise Malformed(f"expected {role} metadata, found {md.signed.type} metadata")
    return md


def verify_role(root: Root, role: str, md: Metadata[Any], now: datetime) -> None:
    """Check that ``md`` is signed by ``role``'s threshold of keys in ``root`` and not expired.

    Raises `TufError` for a bad or missing signature, `Expired` past its expiry.
    """
    try:
        root.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as e:
        raise TufError(
            f"{role} metadata v{md.signed.version} is not signed by {role}'s key: {e}"
        ) from e
    if md.signed.is_expired(now):
        raise Expired(
            f"{role} metadata v{md.signed.version} expired at {md.signed.expires.isoformat()}, "
            f"now is {now.isoformat()}"
        )


def target_file(package: Path, name: str, custom: Mapping[str, Any] | None) -> TargetFile:
    """The TUF description (length, sha256, custom) of the artifact at ``package``.

    Raises `ValueError` for an unsafe name, `OSError` if the file cannot be read.
    """
    info = TargetFile.from_file(check_target_name(name), str(package), ["sha256"])
    if custom:
        info.unrecognized_fields["custom"] = dict(custom)
    return info


def sha256_of(info: TargetFile) -> str:
    """The sha256 hex digest TUF records for ``info``; raises `Malformed` if absent."""
    digest = info.hashes.get("sha256")
    if not digest:
        raise Malformed(f"target {info.path} has no sha256 hash (has {sorted(info.hashes)})")
    return str(digest)


def hash_prefixed_name(info: TargetFile) -> str:
    """The file name a consistent-snapshot repository serves ``info`` under."""
    return f"{sha256_of(info)}.{info.path}"


def next_targets(
    current: Targets, add: TargetFile, now: datetime, expiries: Expiries
) -> Metadata[Targets]:
    """The next, unsigned targets version: ``current`` plus (or with a replaced) ``add``."""
    targets = Targets.from_dict(current.to_dict())
    targets.targets[add.path] = add
    targets.version = current.version + 1
    targets.expires = now + expiries.targets
    return Metadata(targets)


def sign_targets_offline(
    current_targets: bytes,
    package: Path,
    *,
    name: str,
    custom: Mapping[str, Any] | None,
    release_signer: Signer,
    now: datetime,
    expiries: Expiries,
) -> Metadata[Targets]:
    """What ``edgefleet model sign`` does: add ``package`` to targets and sign with the release key.

    ``current_targets`` is the repository's current targets.json; the result has the next
    version and only the release key's signature. Raises `Malformed` for metadata that is
    not targets, `ValueError` for an unsafe name, `OSError` if the package is unreadable.
    """
    current = parse("targets", current_targets)
    md = next_targets(current.signed, target_file(package, name, custom), now, expiries)
    md.sign(release_signer)
    return md


def next_snapshot(
    current: Snapshot, targets_version: int, now: datetime, expiries: Expiries
) -> Snapshot:
    """The next snapshot version, pointing at ``targets_version``."""
    snapshot = Snapshot.from_dict(current.to_dict())
    snapshot.meta["targets.json"] = MetaFile(version=targets_version)
    snapshot.version = current.version + 1
    snapshot.expires = now + expiries.snapshot
    return snapshot


def next_timestamp(
    current: Timestamp, snapshot_version: int, now: datetime, expiries: Expiries
) -> Timestamp:
    """The next timestamp version, pointing at ``snapshot_version``."""
    timestamp = Timestamp.from_dict(current.to_dict())
    timestamp.snapshot_meta = MetaFile(version=snapshot_version)
    timestamp.version = current.version + 1
    timestamp.expires = now + expiries.timestamp
    return timestamp


def next_root(
    current: Root, replace: Mapping[str, SSlibKey], now: datetime, expiries: Expiries
) -> Root:
    """The next root version with the keys of the roles in ``replace`` swapped (key rotation).

    The caller signs the result with the *old and the new* root keys, so a device that
    trusts only the old root can walk the chain. Raises `ValueError` for an unknown role.
    """
    root = Root.from_dict(current.to_dict())
    for role, key in replace.items():
        if role not in TUF_ROLES:
            raise ValueError(f"unknown TUF role {role!r}, expected one of {TUF_ROLES}")
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        root.add_key(key, role)
    root.version = current.version + 1
    root.expires = now + expiries.root
    return root


def next_targets_resigned(current: Targets, now: datetime, expiries: Expiries) -> Metadata[Targets]:
    """The next, unsigned targets version with the same targets (after a key rotation)."""
    targets = Targets.from_dict(current.to_dict())
    targets.version = current.version + 1
    targets.expires = now + expiries.targets
    return Metadata(targets)


def public_key(signer: Signer, role: str) -> SSlibKey:
    """The TUF public key of ``signer``; raises `ValueError` if it is not an SSlibKey."""
    key = signer.public_key
    if not isinstance(key, SSlibKey):
        raise ValueError(f"the {role} key is a {type(key).__name__}, expected an SSlibKey")
    return key
