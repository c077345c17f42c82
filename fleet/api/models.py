"""``/v1/models``: upload model packages, read the registry, publish a version.

``POST /v1/models`` takes a package as ``multipart/form-data`` (field ``package``) or as
the raw body with ``Content-Type: application/octet-stream``. It is spooled to disk (never
held in memory), capped at ``max_upload_bytes``, then verified by the registry: 201 for
a new version, 200 for the same bytes again, 422 with the reason for a bad package, 409
for other bytes under an existing version.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from edgefleet.fleet.api.deps import Caller, ContextDep, SettingsDep, require
from edgefleet.fleet.api.update_deps import PayloadTooLargeError, UpdatesDep
from edgefleet.fleet.errors import InvalidRequestError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.model_lifecycle import (
    MAX_REMARK,
    Alias,
    LineageView,
    ModelLifecycle,
    Review,
    review_of,
)
from edgefleet.fleet.store.tables import ModelVersionPublic
from edgefleet.shared.manifest import NAME_PATTERN

router = APIRouter(prefix="/v1/models", tags=["models"])

UPLOAD_FIELD = "package"
CHUNK_BYTES = 1024 * 1024

ModelName = Annotated[str, Query(pattern=NAME_PATTERN)]
PathName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="model name")]
PathVersion = Annotated[str, PathParam(min_length=1, max_length=64, description="version")]


ModelReader = Annotated[Caller, Depends(require(Permission.MODEL_READ))]
ModelUploader = Annotated[Caller, Depends(require(Permission.MODEL_UPLOAD))]
ModelPublisher = Annotated[Caller, Depends(require(Permission.MODEL_PUBLISH))]
ModelApprover = Annotated[Caller, Depends(require(Permission.MODEL_APPROVE))]
ModelRetirer = Annotated[Caller, Depends(require(Permission.MODEL_RETIRE))]
AliasName = Annotated[str, PathParam(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="alias")]


def get_lifecycle(context: ContextDep) -> ModelLifecycle:
    """The registry's reviews and aliases, on the app's database and settings."""
    return ModelLifecycle(
        context.engine, single_person_approval=context.settings.single_person_approval
    )


LifecycleDep = Annotated[ModelLifecycle, Depends(get_lifecycle)]


class ModelVersionView(ModelVersionPublic):
    """A version with its review state and aliases."""

    review: Review
    aliases: list[str] = Field(default_factory=list, max_length=1000)


class ReviewRequest(BaseModel):
    """An approval, rejection or retirement, with the reviewer's remark."""

    model_config = ConfigDict(extra="forbid")

    remark: str | None = Field(default=None, max_length=MAX_REMARK)


class RejectRequest(ReviewRequest):
    """A rejection: the remark says why, and is required."""

    remark: str = Field(min_length=1, max_length=MAX_REMARK)


class AliasRequest(BaseModel):
    """Where an alias should point."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64)


class UploadLineage(BaseModel):
    """Lineage given with an upload (query parameters) for what the manifest leaves out."""

    code_revision: str | None = Field(default=None, max_length=200)
    run_uri: str | None = Field(default=None, max_length=1000)
    parent_version: str | None = Field(default=None, max_length=64)
    dataset_version: str | None = Field(default=None, max_length=200)


def upload_lineage(
    code_revision: Annotated[str | None, Query(max_length=200)] = None,
    run_uri: Annotated[str | None, Query(max_length=1000)] = None,
    parent_version: Annotated[str | None, Query(max_length=64)] = None,
    dataset_version: Annotated[str | None, Query(max_length=200)] = None,
) -> UploadLineage:
    return UploadLineage(
        code_revision=code_revision,
        run_uri=run_uri,
        parent_version=parent_version,
        dataset_version=dataset_version,
    )


def _view(
    engine: Engine, row: ModelVersionPublic, aliases: dict[str, list[str]]
) -> ModelVersionView:
    with Session(engine) as session:
        review = review_of(session, row.name, row.version)
    return ModelVersionView.model_validate(
        {**row.model_dump(), "review": review, "aliases": aliases.get(row.version, [])}
    )


def _aliases_by_version(lifecycle: ModelLifecycle, name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias in lifecycle.aliases(name):
        out.setdefault(alias.version, []).append(alias.alias)
    return out


@router.post(
    "",
    response_model=ModelVersionView,
    status_code=201,
    responses={200: {"description": "the same bytes were uploaded before"}},
)
async def upload_model(  # noqa: PLR0917  (FastAPI passes parameters by keyword)
    request: Request,
    response: Response,
    updates: UpdatesDep,
    settings: SettingsDep,
    context: ContextDep,
    caller: ModelUploader,
    lineage: Annotated[UploadLineage, Depends(upload_lineage)],
) -> ModelVersionView:
    """Upload an ``.efpkg``; see the module docstring for the statuses. Lineage query
    parameters fill what the manifest's lineage leaves out (422 if they contradict it);
    403 for a model name outside the caller's scope."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLargeError(f"upload is {declared} bytes, at most {limit} accepted")
    registry = updates.registry
    fd, name = tempfile.mkstemp(dir=registry.incoming_dir, prefix="upload.", suffix=".efpkg")
    spooled = Path(name)

    def authorize(model: str) -> None:
        caller.principal.require(Permission.MODEL_UPLOAD, model=model, what=f"model {model!r}")

    try:
        with os.fdopen(fd, "wb") as out:
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("multipart/form-data"):
                await _copy_form(request, out, limit)
            elif content_type.startswith("application/octet-stream"):
                await _copy_body(request, out, limit)
            else:
                raise InvalidRequestError(
                    "send the package as multipart/form-data (field 'package') or as"
                    f" application/octet-stream, not {content_type or 'no content type'}"
                )
        version, created = await run_in_threadpool(
            lambda: registry.add(
                spooled,
                uploaded_by=caller.principal.name,
                uploader=caller.principal.person,
                lineage=lineage.model_dump(exclude_none=True),
                # The object (name/version) is known once the registry read the package.
                audit=caller.record("model.upload", "model_version", "?"),
                authorize=authorize,
            )
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            spooled.unlink()
    if not created:
        response.status_code = 200
    return await run_in_threadpool(_view, context.engine, version, {})


@router.get("", response_model=list[ModelVersionView])
def list_models(
    updates: UpdatesDep,
    context: ContextDep,
    lifecycle: LifecycleDep,
    _caller: ModelReader,
    name: ModelName | None = None,
) -> list[ModelVersionView]:
    """Every version in the registry (of ``name``), newest upload first, with its review."""
    rows = updates.registry.list_versions(name)
    aliases: dict[str, dict[str, list[str]]] = {}
    out = []
    for row in rows:
        if row.name not in aliases:
            aliases[row.name] = _aliases_by_version(lifecycle, row.name)
        out.append(_view(context.engine, row, aliases[row.name]))
    return out


# Before /{name}/{version}: FastAPI matches in order, and "aliases" is no version.
@router.get("/{name}/aliases", response_model=list[Alias])
def list_aliases(name: PathName, lifecycle: LifecycleDep, _caller: ModelReader) -> list[Alias]:
    """The model's aliases (``production``, ``canary``, ...)."""
    return lifecycle.aliases(name)


@router.put("/{name}/aliases/{alias}", response_model=Alias)
def set_alias(
    name: PathName,
    alias: AliasName,
    body: AliasRequest,
    lifecycle: LifecycleDep,
    caller: ModelApprover,
) -> Alias:
    """Point an alias at an approved version (409 otherwise); audited as
    ``model.alias.set`` with the old and new version."""
    caller.principal.require(Permission.MODEL_APPROVE, model=name, what=f"model {name!r}")
    return lifecycle.set_alias(
        name,
        alias,
        body.version,
        by=caller.principal.person,
        audit=caller.record("model.alias.set", "model_alias", f"{name}:{alias}"),
    )


@router.delete("/{name}/aliases/{alias}", status_code=204)
def delete_alias(
    name: PathName, alias: AliasName, lifecycle: LifecycleDep, caller: ModelApprover
) -> Response:
    """Remove an alias; 404 if there is none."""
    caller.principal.require(Permission.MODEL_APPROVE, model=name, what=f"model {name!r}")
    lifecycle.delete_alias(
        name, alias, audit=caller.record("model.alias.delete", "model_alias", f"{name}:{alias}")
    )
    return Response(status_code=204)


@router.get("/{name}/{version}", response_model=ModelVersionView)
def get_model(
    name: PathName,
    version: PathVersion,
    updates: UpdatesDep,
    context: ContextDep,
    lifecycle: LifecycleDep,
    _caller: ModelReader,
) -> ModelVersionView:
    """One version: manifest, metrics, review state, aliases, published."""
    row = updates.registry.get(name, version)
    return _view(context.engine, row, _aliases_by_version(lifecycle, name))


@router.get("/{name}/{version}/lineage", response_model=LineageView)
def get_lineage(
    name: PathName, version: PathVersion, lifecycle: LifecycleDep, _caller: ModelReader
) -> LineageView:
    """Where the version came from (training data, code revision, run, parent, quantized
    from) and which versions name it as their parent; 404 if unknown."""
    return lifecycle.lineage(name, version)


@router.post("/{name}/{version}/publish", response_model=ModelVersionView)
def publish_model(
    name: PathName,
    version: PathVersion,
    updates: UpdatesDep,
    context: ContextDep,
    caller: ModelPublisher,
) -> ModelVersionView:
    """Sign the version into the TUF targets with the release key (lab mode only).

    Publishing makes it fetchable; it does not approve it. 409 if the fleet does not
    hold the release key (sign offline and PUT the result to
    ``/v1/repository/targets-metadata``), or for a rejected or retired version.
    """
    caller.principal.require(Permission.MODEL_PUBLISH, model=name, what=f"model {name!r}")
    row = updates.registry.publish(
        name,
        version,
        by=caller.principal.name,
        audit=caller.record("model.publish", "model_version", f"{name}/{version}"),
    )
    return _view(context.engine, row, {})


def _review(
    lifecycle: LifecycleDep,
    caller: Caller,
    name: str,
    version: str,
    *,
    approve: bool,
    remark: str | None,
) -> Review:
    caller.principal.require(Permission.MODEL_APPROVE, model=name, what=f"model {name!r}")
    return lifecycle.review(
        name,
        version,
        approve=approve,
        reviewer=caller.principal.person,
        remark=remark,
        audit=caller.record(
            "model.approve" if approve else "model.reject", "model_version", f"{name}/{version}"
        ),
    )


@router.post("/{name}/{version}/approve", response_model=Review)
def approve_model(
    name: PathName,
    version: PathVersion,
    lifecycle: LifecycleDep,
    caller: ModelApprover,
    body: ReviewRequest | None = None,
) -> Review:
    """Approve a version someone else uploaded (403 ``four_eyes`` for your own, unless
    the fleet runs with ``single_person_approval``); 409 if it is not waiting for review."""
    return _review(
        lifecycle, caller, name, version, approve=True, remark=body.remark if body else None
    )


@router.post("/{name}/{version}/reject", response_model=Review)
def reject_model(
    name: PathName,
    version: PathVersion,
    lifecycle: LifecycleDep,
    caller: ModelApprover,
    body: RejectRequest,
) -> Review:
    """Reject a version with a remark saying why (same four-eyes rule as approval)."""
    return _review(lifecycle, caller, name, version, approve=False, remark=body.remark)


@router.post("/{name}/{version}/retire", response_model=Review)
def retire_model(
    name: PathName,
    version: PathVersion,
    lifecycle: LifecycleDep,
    caller: ModelRetirer,
    body: ReviewRequest | None = None,
) -> Review:
    """Retire a version: it starts no rollout and no assignment. 409 if already retired
    or an alias points at it."""
    caller.principal.require(Permission.MODEL_RETIRE, model=name, what=f"model {name!r}")
    return lifecycle.retire(
        name,
        version,
        by=caller.principal.person,
        remark=body.remark if body else None,
        audit=caller.record("model.retire", "model_version", f"{name}/{version}"),
    )


async def _copy_body(request: Request, out: BinaryIO, limit: int) -> None:
    written = 0
    async for chunk in request.stream():
        written += len(chunk)
        if written > limit:
            raise PayloadTooLargeError(f"upload exceeds {limit} bytes")
        out.write(chunk)


async def _copy_form(request: Request, out: BinaryIO, limit: int) -> None:
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get(UPLOAD_FIELD)
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError(f"multipart upload has no file field {UPLOAD_FIELD!r}")
        written = 0
        while chunk := await upload.read(CHUNK_BYTES):
            written += len(chunk)
            if written > limit:
                raise PayloadTooLargeError(f"upload exceeds {limit} bytes")
            out.write(chunk)
