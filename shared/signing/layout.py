"""Where the image repository keeps its files; the same paths are its URLs.

::

    <repo>/metadata/<N>.root.json     every root version (clients walk the chain)
    <repo>/metadata/<N>.targets.json  every targets version (consistent snapshots)
    <repo>/metadata/<N>.snapshot.json every snapshot version
    <repo>/metadata/timestamp.json    the one timestamp clients fetch unversioned
    <repo>/metadata/<role>.json       the latest version of each role, for tools
    <repo>/targets/<sha256>.<name>    artifacts, served by content hash

Serving ``<repo>/metadata`` and ``<repo>/targets`` as static files is a valid TUF
repository for `tuf.ngclient`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from edgefleet.shared.durable import atomic_write_bytes
from edgefleet.shared.signing.tuf_metadata import to_bytes
from edgefleet.shared.signing.tufapi import Metadata

METADATA_DIR: Final = "metadata"
TARGETS_DIR: Final = "targets"
_METADATA_NAME = re.compile(r"^(?:(\d+)\.)?(root|targets|snapshot|timestamp)\.json$")


def metadata_name(role: str, version: int | None) -> str:
    """File name of ``role`` at ``version`` (None: the unversioned latest)."""
    return f"{role}.json" if version is None else f"{version}.{role}.json"


def parse_metadata_name(name: str) -> tuple[str, int | None]:
    """Inverse of `metadata_name`; raises `ValueError` for anything else (e.g. ``../x``)."""
    match = _METADATA_NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a TUF metadata file name like 3.targets.json")
    version, role = match.groups()
    return role, int(version) if version else None


def write_role(repo_dir: Path, md: Metadata[Any]) -> bytes:
    """Store ``md`` as its versioned file (not for timestamp) and as the latest; returns bytes.

    The versioned file is written first, so a client that reads the latest can always
    fetch the version it names.
    """
    data = to_bytes(md)
    role = md.signed.type
    meta_dir = repo_dir / METADATA_DIR
    if role != "timestamp":
        atomic_write_bytes(
            meta_dir / metadata_name(role, md.signed.version), data, create_parents=True
        )
    atomic_write_bytes(meta_dir / metadata_name(role, None), data, create_parents=True)
    return data


def write_initial(repo_dir: Path, mds: dict[str, Metadata[Any]]) -> None:
    """Write a first metadata set; raises `FileExistsError` if a repository is there already."""
    if (repo_dir / METADATA_DIR / "root.json").exists():
        raise FileExistsError(f"a TUF repository exists already in {repo_dir}")
    (repo_dir / TARGETS_DIR).mkdir(parents=True, exist_ok=True)
    # Timestamp last: it is what makes the other three visible to clients.
    for role in ("root", "targets", "snapshot", "timestamp"):
        write_role(repo_dir, mds[role])
