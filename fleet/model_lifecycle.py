"""The registry's governance: reviews (approve, reject, retire), aliases and lineage.

The pure rules are `edgefleet.fleet.governance.lifecycle`; this module loads and stores
`ModelLifecycleRow` and `ModelAliasRow`, and appends each change's audit entry in the
change's transaction. A version uploaded before lifecycles existed has no row and counts
as ``uploaded`` (waiting for review).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.fleet.audit.entry import AuditRecord
from edgefleet.fleet.audit.log import append
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.governance import lifecycle
from edgefleet.fleet.governance.lifecycle import LifecycleError, ModelState
from edgefleet.fleet.store.governance_tables import ModelAliasRow, ModelLifecycleRow
from edgefleet.fleet.store.tables import ModelVersion
from edgefleet.shared.messages import utcnow

MAX_REMARK = 2000


class Review(BaseModel):
    """A version's review state, as the API shows it."""

    state: ModelState
    uploader: str | None = Field(default=None, max_length=200)
    reviewed_by: str | None = Field(default=None, max_length=200)
    reviewed_at: datetime | None = None
    remark: str | None = Field(default=None, max_length=MAX_REMARK)
    retired_by: str | None = Field(default=None, max_length=200)
    retired_at: datetime | None = None


class Alias(BaseModel):
    """A named pointer at a version."""

    model: str = Field(max_length=100)
    alias: str = Field(max_length=64)
    version: str = Field(max_length=100)
    updated_by: str = Field(max_length=200)
    updated_at: datetime


class LineageView(BaseModel):
    """Where a version came from, and what came from it."""

    model: str = Field(max_length=100)
    version: str = Field(max_length=100)
    sha256: str = Field(max_length=64, description="of the package file")
    model_sha256: str | None = Field(default=None, max_length=64, description="of the model file")
    training_data_sha256: str | None = Field(default=None, max_length=64)
    code_revision: str | None = Field(default=None, max_length=200)
    run_uri: str | None = Field(default=None, max_length=1000)
    parent_version: str | None = Field(default=None, max_length=100)
    quantized_from: str | None = Field(default=None, max_length=64)
    dataset_version: str | None = Field(default=None, max_length=200)
    source: str | None = Field(default=None, max_length=1000)
    params: dict[str, str] = Field(default_factory=dict, max_length=200)
    uploaded_by: str = Field(max_length=100)
    uploaded_at: datetime
    review: Review
    children: list[str] = Field(
        default_factory=list, max_length=10_000, description="versions naming this as parent"
    )


def review_of(session: Session, name: str, version: str) -> Review:
    """The version's review (``uploaded`` for a version without a lifecycle row)."""
    row = session.get(ModelLifecycleRow, (name, version))
    if row is None:
        return Review(state=ModelState.UPLOADED)
    return Review(
        state=ModelState(row.state),
        uploader=row.uploader,
        reviewed_by=row.reviewed_by,
        reviewed_at=row.reviewed_at,
        remark=row.remark,
        retired_by=row.retired_by,
        retired_at=row.retired_at,
    )


def state_of(session: Session, name: str, version: str) -> ModelState:
    """The version's lifecycle state."""
    return review_of(session, name, version).state


def new_lifecycle(
    name: str, version: str, *, uploader: str, lineage: dict[str, Any]
) -> ModelLifecycleRow:
    """The lifecycle row of a version just uploaded by ``uploader`` (a person id)."""
    return ModelLifecycleRow(
        name=name,
        version=version,
        state=ModelState.UPLOADED.value,
        uploader=uploader,
        lineage=lineage,
    )


class ModelLifecycle:
    """Reviews, retirement and aliases over one database."""

    def __init__(self, engine: Engine, *, single_person_approval: bool) -> None:
        self._engine = engine
        self.single_person_approval = single_person_approval

    def review(
        self,
        name: str,
        version: str,
        *,
        approve: bool,
        reviewer: str,
        remark: str | None,
        audit: AuditRecord,
    ) -> Review:
        """Approve or reject a version; see `lifecycle.review` for what it raises, plus
        `NotFoundError` for a version not in the registry."""
        with Session(self._engine) as session:
            row, version_row = self._locked(session, name, version)
            before = _summary(row)
            new_state = lifecycle.review(
                ModelState(row.state),
                approve=approve,
                uploader=row.uploader,
                reviewer=reviewer,
                single_person_approval=self.single_person_approval,
            )
            now = utcnow()
            row.state, row.reviewed_by, row.reviewed_at, row.remark = (
                new_state.value,
                reviewer,
                now,
                remark,
            )
            session.add(row)
            if approve:
                version_row.approved_by, version_row.approved_at = reviewer[:100], now
                session.add(version_row)
            append(session, audit.model_copy(update={"before": before, "after": _summary(row)}))
            session.commit()
            return review_of(session, name, version)

    def retire(
        self, name: str, version: str, *, by: str, remark: str | None, audit: AuditRecord
    ) -> Review:
        """Retire a version. Raises `NotFoundError`, `LifecycleError` (already retired,
        or an alias still points at it: move the alias first)."""
        with Session(self._engine) as session:
            row, _ = self._locked(session, name, version)
            before = _summary(row)
            row.state = lifecycle.retire(ModelState(row.state)).value
            aliases = session.exec(
                select(ModelAliasRow).where(
                    col(ModelAliasRow.name) == name, col(ModelAliasRow.version) == version
                )
            ).all()
            if aliases:
                names = ", ".join(sorted(a.alias for a in aliases))
                raise LifecycleError(
                    f"{name} {version} carries the alias(es) {names}: move them before retiring it"
                )
            row.retired_by, row.retired_at = by, utcnow()
            if remark is not None:
                row.remark = remark
            session.add(row)
            append(session, audit.model_copy(update={"before": before, "after": _summary(row)}))
            session.commit()
            return review_of(session, name, version)

    def set_alias(
        self, name: str, alias: str, version: str, *, by: str, audit: AuditRecord
    ) -> Alias:
        """Point ``alias`` of model ``name`` at ``version``. Raises `NotFoundError`,
        `LifecycleError` for a version that is not approved."""
        with Session(self._engine) as session:
            row, _ = self._locked(session, name, version)
            lifecycle.require_alias_target(ModelState(row.state), f"{name} {version}")
            existing = session.get(ModelAliasRow, (name, alias))
            before = None if existing is None else {"version": existing.version}
            now = utcnow()
            target = existing or ModelAliasRow(
                name=name, alias=alias, version=version, updated_by=by, updated_at=now
            )
            target.version, target.updated_by, target.updated_at = version, by, now
            session.add(target)
            append(
                session, audit.model_copy(update={"before": before, "after": {"version": version}})
            )
            session.commit()
            return _alias(target)

    def delete_alias(self, name: str, alias: str, *, audit: AuditRecord) -> None:
        """Remove an alias; raises `NotFoundError` if there is none."""
        with Session(self._engine) as session:
            existing = session.get(ModelAliasRow, (name, alias))
            if existing is None:
                raise NotFoundError(f"model {name} has no alias {alias!r}")
            before = {"version": existing.version}
            session.delete(existing)
            append(session, audit.model_copy(update={"before": before}))
            session.commit()

    def aliases(self, name: str) -> list[Alias]:
        """The model's aliases, by name."""
        with Session(self._engine) as session:
            rows = session.exec(
                select(ModelAliasRow)
                .where(col(ModelAliasRow.name) == name)
                .order_by(col(ModelAliasRow.alias))
            ).all()
            return [_alias(r) for r in rows]

    def resolve_alias(self, name: str, alias: str) -> str:
        """The version ``alias`` points at; raises `NotFoundError`."""
        with Session(self._engine) as session:
            row = session.get(ModelAliasRow, (name, alias))
            if row is None:
                raise NotFoundError(f"model {name} has no alias {alias!r}")
            return row.version

    def lineage(self, name: str, version: str) -> LineageView:
        """The version's lineage; raises `NotFoundError`."""
        with Session(self._engine) as session:
            version_row = session.get(ModelVersion, (name, version))
            if version_row is None:
                raise NotFoundError(f"model {name} {version} is not in the registry")
            row = session.get(ModelLifecycleRow, (name, version))
            recorded: dict[str, Any] = dict(row.lineage) if row is not None else {}
            manifest_lineage = version_row.manifest.get("lineage") or {}
            merged = {**manifest_lineage, **recorded}
            children = [
                r.version
                for r in session.exec(
                    select(ModelLifecycleRow).where(col(ModelLifecycleRow.name) == name)
                ).all()
                if (r.lineage or {}).get("parent_version") == version
            ]
            children += [
                r.version
                for r in session.exec(
                    select(ModelVersion).where(col(ModelVersion.name) == name)
                ).all()
                if ((r.manifest.get("lineage") or {}).get("parent_version") == version)
                and r.version not in children
            ]
            return LineageView(
                model=name,
                version=version,
                sha256=version_row.sha256,
                model_sha256=version_row.manifest.get("sha256"),
                training_data_sha256=version_row.training_data_sha256,
                code_revision=merged.get("code_revision"),
                run_uri=merged.get("run_uri"),
                parent_version=merged.get("parent_version"),
                quantized_from=merged.get("quantized_from"),
                dataset_version=merged.get("dataset_version"),
                source=merged.get("source"),
                params={str(k): str(v) for k, v in (merged.get("params") or {}).items()},
                uploaded_by=version_row.uploaded_by,
                uploaded_at=version_row.uploaded_at,
                review=review_of(session, name, version),
                children=sorted(children),
            )

    def _locked(
        self, session: Session, name: str, version: str
    ) -> tuple[ModelLifecycleRow, ModelVersion]:
        version_row = session.get(ModelVersion, (name, version), with_for_update=True)
        if version_row is None:
            raise NotFoundError(f"model {name} {version} is not in the registry")
        row = session.get(ModelLifecycleRow, (name, version), with_for_update=True)
        if row is None:
            # Uploaded before lifecycles: nobody is recorded as its uploader but the
            # registry's name for the uploading token.
            row = new_lifecycle(
                name, version, uploader=f"legacy:{version_row.uploaded_by}", lineage={}
            )
        return row, version_row


def _summary(row: ModelLifecycleRow) -> dict[str, Any]:
    return {"state": row.state, "remark": row.remark}


def _alias(row: ModelAliasRow) -> Alias:
    return Alias(
        model=row.name,
        alias=row.alias,
        version=row.version,
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )
