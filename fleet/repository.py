"""The image repository: TUF metadata and model packages, served by content hash.

`ImageRepository` holds the online keys (snapshot, timestamp, usually not root) and maybe
the release (targets) key. With the release key it adds targets itself (`add_target`);
without it, a release manager signs targets offline (``edgefleet model sign``) and the
repository accepts the upload after verifying it against the current root
(`accept_targets`). Either way the chain targets → snapshot → timestamp is re-signed so a
client sees one consistent new state.

Invariants:
- the files under ``repo_dir`` always form a valid TUF repository (see
  `edgefleet.shared.signing.layout`): each write is atomic, artifacts and versioned metadata land
  before the timestamp that makes them visible;
- versions only grow; an uploaded targets metadata must be newer than the current one;
- every target listed in targets metadata has its artifact stored under
  ``targets/<sha256>.<name>``.

Not safe for two writers on one ``repo_dir`` at once: callers (the fleet's registry)
serialise writes (one process, or a database lock across replicas).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edgefleet.shared.durable import atomic_writer
from edgefleet.shared.hashing import digest_file
from edgefleet.shared.signing import layout, tuf_metadata
from edgefleet.shared.signing.errors import DigestMismatch, LengthMismatch, TufError
from edgefleet.shared.signing.keys import TUF_ROLES
from edgefleet.shared.signing.tuf_metadata import Expiries
from edgefleet.shared.signing.tufapi import (
    Metadata,
    Root,
    Signer,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class RepositoryError(Exception):
    """The repository cannot do what was asked (as opposed to a rejected upload)."""


class NotFoundError(RepositoryError):
    """No such metadata version or artifact."""


class KeyNotHeldError(RepositoryError):
    """The operation needs a key this repository does not hold (e.g. the offline release key)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ImageRepository:
    """A TUF image repository in ``repo_dir``, signing with the ``keys`` it holds."""

    def __init__(
        self,
        repo_dir: Path,
        keys: Mapping[str, Signer],
        *,
        expiries: Expiries | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        """Open the repository in ``repo_dir`` (made by `create` or ``edgefleet keys init``).

        Raises `NotFoundError` if there is none,
        `edgefleet.shared.signing.errors.Malformed` if a role's metadata does not parse.
        """
        self._dir = repo_dir
        self._keys = {role: keys[role] for role in TUF_ROLES if role in keys}
        self._expiries = expiries or Expiries()
        self._clock = clock
        self._md: dict[str, Metadata[Any]] = {}
        for role in TUF_ROLES:
            self._md[role] = tuf_metadata.parse(role, self.metadata_bytes(role))

    @classmethod
    def create(
        cls,
        repo_dir: Path,
        keys: Mapping[str, Signer],
        *,
        expiries: Expiries | None = None,
        clock: Clock = _utcnow,
    ) -> ImageRepository:
        """Write a new version-1 repository signed by ``keys`` (all four roles) and open it.

        Raises `FileExistsError` if ``repo_dir`` holds a repository already.
        """
        mds = tuf_metadata.initial_metadata(keys, clock(), expiries or Expiries())
        layout.write_initial(repo_dir, mds)
        return cls(repo_dir, keys, expiries=expiries, clock=clock)

    # -- reading ---------------------------------------------------------------------

    @property
    def root(self) -> Root:
        """The current root."""
        root: Root = self._md["root"].signed
        return root

    @property
    def targets(self) -> dict[str, TargetFile]:
        """The targets the current targets metadata lists, by name."""
        current: Targets = self._md["targets"].signed
        return dict(current.targets)

    def version(self, role: str) -> int:
        """The current version of ``role``."""
        version: int = self._md[role].signed.version
        return version

    def metadata_bytes(self, role: str, version: int | None = None) -> bytes:
        """The stored bytes of ``role`` at ``version`` (None: the latest).

        Raises `NotFoundError` if there is no such role or version.
        """
        if role not in TUF_ROLES:
            raise NotFoundError(f"no TUF role {role!r}, expected one of {TUF_ROLES}")
        path = self._dir / layout.METADATA_DIR / layout.metadata_name(role, version)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            what = "latest" if version is None else f"version {version}"
            raise NotFoundError(f"{role} metadata {what} does not exist in {self._dir}") from e

    def metadata_file(self, file_name: str) -> bytes:
        """The bytes behind a metadata URL's last segment (``3.targets.json``, ``timestamp.json``).

        Raises `NotFoundError` for a name that is not a metadata file or does not exist.
        """
        try:
            role, version = layout.parse_metadata_name(file_name)
        except ValueError as e:
            raise NotFoundError(str(e)) from e
        return self.metadata_bytes(role, version)

    def target_path(self, hash_prefixed_name: str) -> Path:
        """The local file behind a target URL's last segment (``<sha256>.<name>``).

        Raises `NotFoundError` for a malformed name or an artifact that is not stored.
        """
        digest, sep, name = hash_prefixed_name.partition(".")
        if not sep or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise NotFoundError(f"{hash_prefixed_name!r} is not a hash-prefixed target name")
        try:
            tuf_metadata.check_target_name(name)
        except ValueError as e:
            raise NotFoundError(str(e)) from e
        path = self._dir / layout.TARGETS_DIR / hash_prefixed_name
        if not path.is_file():
            raise NotFoundError(f"no artifact {hash_prefixed_name} in {self._dir}")
        return path

    # -- writing ---------------------------------------------------------------------

    def add_target(
        self,
        package_path: Path,
        *,
        name: str | None = None,
        custom: Mapping[str, Any] | None = None,
    ) -> TargetFile:
        """Approve ``package_path`` as a target signed with the release key this repository holds.

        ``name`` defaults to the file name; ``custom`` (e.g. ``{name, version, runtime}``)
        is signed with it. Raises `KeyNotHeldError` without the targets key, `ValueError` for an
        unsafe name, `OSError` if the package cannot be read.
        """
        signer = self._require("targets")
        info = tuf_metadata.target_file(package_path, name or package_path.name, custom)
        self._store_artifact(package_path, info)
        md = tuf_metadata.next_targets(
            self._md["targets"].signed, info, self._clock(), self._expiries
        )
        md.sign(signer)
        self._publish_targets(md)
        logger.info(
            "target %s (%s bytes) added in targets v%s", info.path, info.length, md.signed.version
        )
        return info

    def accept_targets(
        self, targets_bytes: bytes, artifacts: Mapping[str, Path] | None = None
    ) -> Metadata[Targets]:
        """Accept targets metadata signed offline by the release key, with new artifacts.

        ``artifacts`` maps target name to a local file for every target this repository
        does not store yet. The metadata must be signed by the targets key in the current
        root, unexpired and newer than the current targets.

        Raises `edgefleet.shared.signing.errors.Malformed` (not targets metadata), `TufError` (bad
        signature or not newer), `Expired`, `DigestMismatch` / `LengthMismatch` (an
        uploaded artifact differs from what is signed), `NotFoundError` (a listed target has no
        artifact). Nothing is changed when it raises.
        """
        md = tuf_metadata.parse("targets", targets_bytes)
        tuf_metadata.verify_role(self.root, "targets", md, self._clock())
        current = self.version("targets")
        if md.signed.version <= current:
            raise TufError(
                f"uploaded targets v{md.signed.version} is not newer than the current v{current}"
            )
        uploads = artifacts or {}
        to_store: list[tuple[Path, TargetFile]] = []
        for info in md.signed.targets.values():
            prefixed = tuf_metadata.hash_prefixed_name(info)
            if (self._dir / layout.TARGETS_DIR / prefixed).is_file():
                continue
            if info.path not in uploads:
                raise NotFoundError(
                    f"targets lists {info.path} but no artifact for it was uploaded"
                )
            _check_artifact(uploads[info.path], info)
            to_store.append((uploads[info.path], info))
        for path, info in to_store:
            self._store_artifact(path, info)
        self._publish_targets(md)
        logger.info("accepted offline-signed targets v%s", md.signed.version)
        return md

    def refresh(self, now: datetime | None = None) -> list[str]:
        """Re-sign snapshot and timestamp if they are past half their validity.

        Call it periodically (e.g. hourly) so clients never see expired metadata. Returns
        the roles re-signed. Raises `KeyNotHeldError` without the snapshot or timestamp key.
        """
        now = now or self._clock()
        resigned = []
        if _due(self._md["snapshot"].signed.expires, self._expiries.snapshot, now):
            self._publish_snapshot(now)
            resigned.append("snapshot")
        if resigned or _due(self._md["timestamp"].signed.expires, self._expiries.timestamp, now):
            self._publish_timestamp(now)
            resigned.append("timestamp")
        if resigned:
            logger.info("re-signed %s", ", ".join(resigned))
        return resigned

    def rotate_keys(self, new_keys: Mapping[str, Signer]) -> Root:
        """Replace the keys of the roles in ``new_keys`` through a new root version.

        The new root is signed by the current root key and, when root itself rotates, the
        new root key too, so devices pinned to the old root follow the chain. Roles whose
        key changed are then re-signed with their new key. Raises `KeyNotHeldError` without the
        current root key.
        """
        old_root_signer = self._require("root")
        now = self._clock()
        root = tuf_metadata.next_root(
            self.root,
            {role: tuf_metadata.public_key(signer, role) for role, signer in new_keys.items()},
            now,
            self._expiries,
        )
        md: Metadata[Root] = Metadata(root)
        md.sign(old_root_signer, append=True)
        if "root" in new_keys:
            md.sign(new_keys["root"], append=True)
        layout.write_role(self._dir, md)
        self._md["root"] = md
        self._keys.update(new_keys)
        logger.info("root v%s rotates keys of %s", root.version, ", ".join(sorted(new_keys)))
        if "targets" in new_keys:
            targets_md = tuf_metadata.next_targets_resigned(
                self._md["targets"].signed, now, self._expiries
            )
            targets_md.sign(new_keys["targets"])
            self._publish_targets(targets_md)
        else:
            self._publish_snapshot(now)
            self._publish_timestamp(now)
        return root

    # -- internals -------------------------------------------------------------------

    def _require(self, role: str) -> Signer:
        signer = self._keys.get(role)
        if signer is None:
            hint = " (sign offline with `edgefleet model sign`)" if role == "targets" else ""
            raise KeyNotHeldError(f"this repository does not hold the {role} key{hint}")
        return signer

    def _publish_targets(self, md: Metadata[Targets]) -> None:
        layout.write_role(self._dir, md)
        self._md["targets"] = md
        now = self._clock()
        self._publish_snapshot(now)
        self._publish_timestamp(now)

    def _publish_snapshot(self, now: datetime) -> None:
        snapshot: Snapshot = tuf_metadata.next_snapshot(
            self._md["snapshot"].signed, self.version("targets"), now, self._expiries
        )
        md: Metadata[Snapshot] = Metadata(snapshot)
        md.sign(self._require("snapshot"))
        layout.write_role(self._dir, md)
        self._md["snapshot"] = md

    def _publish_timestamp(self, now: datetime) -> None:
        timestamp: Timestamp = tuf_metadata.next_timestamp(
            self._md["timestamp"].signed, self.version("snapshot"), now, self._expiries
        )
        md: Metadata[Timestamp] = Metadata(timestamp)
        md.sign(self._require("timestamp"))
        layout.write_role(self._dir, md)
        self._md["timestamp"] = md

    def _store_artifact(self, source: Path, info: TargetFile) -> None:
        dest = self._dir / layout.TARGETS_DIR / tuf_metadata.hash_prefixed_name(info)
        if dest.is_file():
            return
        with atomic_writer(dest, create_parents=True) as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            _check_artifact(Path(out.name), info)  # the copy, not the source, is what we serve


def _due(expires: datetime, period: timedelta, now: datetime) -> bool:
    # Re-sign at half-life: a fleet that misses a few refresh runs still serves valid metadata.
    return bool(expires - now <= period / 2)


def _check_artifact(path: Path, info: TargetFile) -> None:
    found = digest_file(path)
    if found.size != info.length:
        raise LengthMismatch(
            f"artifact {info.path} is {found.size} bytes, its targets metadata says {info.length}"
        )
    expected = tuf_metadata.sha256_of(info)
    if found.sha256 != expected:
        raise DigestMismatch(
            f"artifact {info.path} has sha256 {found.sha256}, its targets metadata says {expected}"
        )
