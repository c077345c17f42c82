"""The model registry: verified uploads, their manifests and lineage, and publishing.

Invariants:
- a stored package passed `edgefleet.shared.package.read.read_package` (members, manifest,
  digests) before anything was written for it; a rejected upload leaves nothing behind;
- the bytes of (name, version) never change: the same bytes again are a no-op, other
  bytes are a `ConflictError`;
- packages are stored content-addressed (``<models_dir>/<sha256>.efpkg``), so the file a
  row names is exactly the bytes whose digest it records;
- ``published`` mirrors the image repository: a version is published when the current
  signed targets list its target name with its sha256 and length, and it is re-derived
  after every change to the targets metadata.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from edgefleet.fleet.audit.entry import AuditObject, AuditRecord
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.drift.store import put_reference
from edgefleet.fleet.errors import FleetError, InvalidRequestError, NotFoundError
from edgefleet.fleet.governance import lifecycle
from edgefleet.fleet.model_lifecycle import new_lifecycle, state_of
from edgefleet.fleet.repo_access import RepositoryAccess
from edgefleet.fleet.repository import KeyNotHeldError
from edgefleet.fleet.repository import NotFoundError as RepoNotFoundError
from edgefleet.fleet.store.tables import ModelVersion, ModelVersionPublic
from edgefleet.shared.drift import ReferenceProfile
from edgefleet.shared.durable import replace_durably
from edgefleet.shared.manifest import Lineage, ModelManifest, target_name
from edgefleet.shared.messages import utcnow
from edgefleet.shared.package.format import PACKAGE_SUFFIX, PackageError
from edgefleet.shared.package.read import package_digest, read_package
from edgefleet.shared.signing import tuf_metadata
from edgefleet.shared.signing.director import DesiredTarget
from edgefleet.shared.signing.errors import DigestMismatch, UpdateRejected
from edgefleet.shared.signing.tufapi import TargetFile

logger = logging.getLogger(__name__)


class ConflictError(FleetError):
    """The request contradicts what is stored (other bytes for a version, not published)."""

    code = "conflict"


class UpdatesDisabledError(FleetError):
    """Signed updates need keys this fleet was not started with."""

    code = "updates_disabled"


class ModelRegistry:
    """Stores packages in ``models_dir``, rows in the database, targets via ``repository``."""

    def __init__(
        self, engine: Engine, models_dir: Path, repository: RepositoryAccess | None
    ) -> None:
        self._engine = engine
        self.models_dir = models_dir
        self.repository = repository
        models_dir.mkdir(parents=True, exist_ok=True)

    @property
    def incoming_dir(self) -> Path:
        """Where uploads are spooled before they are verified (same filesystem)."""
        path = self.models_dir / ".incoming"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def package_path(self, row: ModelVersion | ModelVersionPublic) -> Path:
        """The stored package file of ``row``."""
        return self.models_dir / f"{row.sha256}{PACKAGE_SUFFIX}"

    # -- uploads ---------------------------------------------------------------------

    def add(
        self,
        upload: Path,
        *,
        uploaded_by: str,
        uploader: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        audit: AuditRecord | None = None,
        authorize: Callable[[str], None] | None = None,
    ) -> tuple[ModelVersionPublic, bool]:
        """Verify and store the package at ``upload`` (consumed: moved or deleted).

        ``uploader`` is the person id four-eyes approval compares with (default
        ``uploaded_by``); ``lineage`` fills what the manifest's lineage leaves out;
        ``audit`` is appended in the transaction that stores the version;
        ``authorize`` is called with the manifest's model name before anything is stored
        (and raises, e.g. `PermissionDeniedError`, to refuse it).

        Returns the version and whether this call created it (False: the same bytes were
        there already). Raises `InvalidRequestError` naming what is wrong with a package
        that `read_package` refuses, or lineage that contradicts the manifest's;
        `ConflictError` if the version exists with other bytes.
        """
        try:
            try:
                manifest, _members = read_package(upload)
            except (PackageError, DigestMismatch) as e:
                raise InvalidRequestError(f"not a valid model package: {e}") from e
            if authorize is not None:
                authorize(manifest.name)
            recorded_lineage = _merged_lineage(manifest, lineage or {})
            sha256, length = package_digest(upload)
            existing = self._existing(manifest.name, manifest.version, sha256)
            if existing is not None:
                return existing, False
            stored = self.models_dir / f"{sha256}{PACKAGE_SUFFIX}"
            replace_durably(upload, stored)
        finally:
            with contextlib.suppress(FileNotFoundError):
                upload.unlink()
        row = ModelVersion(
            name=manifest.name,
            version=manifest.version,
            runtime=manifest.runtime,
            sha256=sha256,
            length=length,
            target_name=target_name(manifest.name, manifest.version),
            manifest=manifest.model_dump(mode="json"),
            metrics=dict(manifest.metrics),
            training_data_sha256=manifest.training_data_sha256,
            uploaded_by=uploaded_by,
            uploaded_at=utcnow(),
        )
        with Session(self._engine) as session:
            session.add(row)
            session.add(
                new_lifecycle(
                    manifest.name,
                    manifest.version,
                    uploader=uploader or uploaded_by,
                    lineage=recorded_lineage,
                )
            )
            try:
                session.flush()
                if audit is not None:
                    append(
                        session,
                        audit.model_copy(
                            update={
                                "object": AuditObject(
                                    kind="model_version", id=f"{manifest.name}/{manifest.version}"
                                ),
                                "after": {
                                    "sha256": sha256,
                                    "runtime": manifest.runtime,
                                    "lineage": recorded_lineage,
                                },
                            }
                        ),
                    )
                session.commit()
            except IntegrityError:
                # Another upload of this version won the race; same bytes or conflict.
                session.rollback()
                existing = self._existing(manifest.name, manifest.version, sha256)
                if existing is None:  # pragma: no cover - the row vanished again
                    raise
                return existing, False
            public = ModelVersionPublic.model_validate(row, from_attributes=True)
            if manifest.reference_profile is not None:
                # Drift windows from devices running this version are scored against it.
                put_reference(
                    session,
                    manifest.name,
                    manifest.version,
                    ReferenceProfile.model_validate(manifest.reference_profile),
                )
        logger.info(
            "model %s %s uploaded by %s (%s)", public.name, public.version, uploaded_by, sha256
        )
        return public, True

    def _existing(self, name: str, version: str, sha256: str) -> ModelVersionPublic | None:
        with Session(self._engine) as session:
            row = session.get(ModelVersion, (name, version))
            if row is None:
                return None
            if row.sha256 != sha256:
                raise ConflictError(
                    f"model {name} {version} exists with sha256 {row.sha256}; the upload has"
                    f" {sha256}. A version's bytes never change: upload a new version"
                )
            return ModelVersionPublic.model_validate(row, from_attributes=True)

    # -- reading ---------------------------------------------------------------------

    def list_versions(self, name: str | None = None) -> list[ModelVersionPublic]:
        """Every version (of ``name``), newest upload first."""
        with Session(self._engine) as session:
            query = select(ModelVersion)
            if name is not None:
                query = query.where(col(ModelVersion.name) == name)
            rows = session.exec(query.order_by(col(ModelVersion.uploaded_at).desc())).all()
            return [ModelVersionPublic.model_validate(r, from_attributes=True) for r in rows]

    def get(self, name: str, version: str) -> ModelVersionPublic:
        """One version; raises `NotFoundError`."""
        with Session(self._engine) as session:
            row = session.get(ModelVersion, (name, version))
            if row is None:
                raise NotFoundError(f"model {name} {version} is not in the registry")
            return ModelVersionPublic.model_validate(row, from_attributes=True)

    def published_target(self, name: str, version: str) -> DesiredTarget:
        """What a desired state names for (name, version), checked against signed targets.

        Raises `NotFoundError` (no such version), `ConflictError` (not published, or the
        signed targets disagree with the registry), `UpdatesDisabledError`.
        """
        row = self.get(name, version)
        if not row.published:
            raise ConflictError(
                f"model {name} {version} is not published: publish it (lab mode) or upload"
                " targets metadata signed with the release key first"
            )
        info = self._require_repository().current_targets().get(row.target_name)
        if info is None or _digest(info) != (row.sha256, row.length):
            raise ConflictError(
                f"model {name} {version} is marked published but the signed targets do not"
                f" list {row.target_name} with sha256 {row.sha256}"
            )
        return DesiredTarget(
            name=row.target_name, sha256=row.sha256, length=row.length, version=row.version
        )

    # -- publishing ------------------------------------------------------------------

    def publish(
        self, name: str, version: str, *, by: str, audit: AuditRecord | None = None
    ) -> ModelVersionPublic:
        """Sign (name, version) into the targets with the release key the fleet holds.

        Publishing makes the package fetchable; it approves nothing (approval is the
        lifecycle's, `edgefleet.fleet.model_lifecycle`). Raises `NotFoundError`,
        `ConflictError` (the fleet does not hold the release key, or the target name is
        signed with other bytes), `LifecycleError` (a rejected or retired version),
        `UpdatesDisabledError`.
        """
        self.require_deployable(name, version)
        row = self.get(name, version)
        access = self._require_repository()
        with access.writing() as repo:
            info = repo.targets.get(row.target_name)
            if info is not None and _digest(info) != (row.sha256, row.length):
                raise ConflictError(
                    f"target {row.target_name} is signed with sha256 {_digest(info)[0]},"
                    f" the registry's package has {row.sha256}"
                )
            if info is None:
                custom = {"name": row.name, "version": row.version, "runtime": row.runtime}
                try:
                    repo.add_target(self.package_path(row), name=row.target_name, custom=custom)
                except KeyNotHeldError as e:
                    raise ConflictError(
                        f"{e}; then PUT the signed targets.json to /v1/repository/targets-metadata"
                    ) from e
            targets = repo.targets
        self._sync_published(targets, now=utcnow(), audit=audit)
        logger.info("model %s %s published by %s", name, version, by)
        return self.get(name, version)

    def accept_targets_metadata(
        self, data: bytes, *, by: str, audit: AuditRecord | None = None
    ) -> list[str]:
        """Accept targets metadata signed offline with the release key; returns its targets.

        Artifacts come from the registry: every target the metadata lists must be an
        uploaded package with the same bytes. Raises `InvalidRequestError` naming why the
        metadata is refused (not targets metadata, wrong key, expired, not newer, a
        listed target that is not in the registry or has other bytes);
        `UpdatesDisabledError`. Nothing changes when it raises.
        """
        access = self._require_repository()
        try:
            listed = tuf_metadata.parse("targets", data).signed.targets
        except UpdateRejected as e:
            raise InvalidRequestError(f"refused targets metadata: {e}") from e
        artifacts = self._artifacts(listed)
        with access.writing() as repo:
            try:
                md = repo.accept_targets(data, artifacts)
            except (UpdateRejected, RepoNotFoundError) as e:
                raise InvalidRequestError(f"refused targets metadata: {e}") from e
            targets = repo.targets
        self._sync_published(targets, now=utcnow(), audit=audit)
        logger.info("targets v%s uploaded by %s", md.signed.version, by)
        return sorted(targets)

    def _artifacts(self, listed: Mapping[str, TargetFile]) -> dict[str, Path]:
        with Session(self._engine) as session:
            rows = session.exec(
                select(ModelVersion).where(col(ModelVersion.target_name).in_(list(listed)))
            ).all()
            return {r.target_name: self.package_path(r) for r in rows}

    def _sync_published(
        self, targets: Mapping[str, TargetFile], *, now: datetime, audit: AuditRecord | None
    ) -> None:
        published: list[str] = []
        withdrawn: list[str] = []
        with Session(self._engine) as session:
            for row in session.exec(select(ModelVersion)).all():
                info = targets.get(row.target_name)
                listed = info is not None and _digest(info) == (row.sha256, row.length)
                if listed and not row.published:
                    row.published, row.published_at = True, now
                    session.add(row)
                    published.append(f"{row.name}/{row.version}")
                elif not listed and row.published:
                    row.published = False
                    session.add(row)
                    withdrawn.append(f"{row.name}/{row.version}")
            if audit is not None:
                session.flush()
                change = {"published": sorted(published), "withdrawn": sorted(withdrawn)}
                append(session, audit.model_copy(update={"after": change}))
            session.commit()

    def require_deployable(self, name: str, version: str) -> None:
        """Raises `LifecycleError` for a rejected or retired version (it starts no
        rollout and no assignment)."""
        with Session(self._engine) as session:
            lifecycle.require_deployable(state_of(session, name, version), f"{name} {version}")

    def _require_repository(self) -> RepositoryAccess:
        if self.repository is None:
            raise UpdatesDisabledError(
                "signed updates are off: start the fleet with --keys-dir (see `edgefleet keys"
                " init`)"
            )
        return self.repository


def _digest(info: TargetFile) -> tuple[str, int]:
    return tuf_metadata.sha256_of(info), info.length


def _merged_lineage(manifest: ModelManifest, given: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's lineage with ``given`` (from the upload) filling what it leaves out.

    Raises `InvalidRequestError` for a field the two set differently, or a bad value.
    """
    recorded = manifest.lineage.model_dump(exclude_none=True) if manifest.lineage else {}
    for key, value in given.items():
        if value is None:
            continue
        if key in recorded and recorded[key] != value:
            raise InvalidRequestError(
                f"lineage {key}: the upload says {value!r}, the manifest {recorded[key]!r}"
            )
        recorded[key] = value
    try:
        return Lineage.model_validate(recorded).model_dump(mode="json", exclude_none=True)
    except ValueError as e:
        raise InvalidRequestError(f"bad lineage: {e}") from e
