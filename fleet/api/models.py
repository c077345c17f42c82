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
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from edgefleet.fleet.api.deps import SettingsDep, current_token
from edgefleet.fleet.api.update_deps import Approver, Operator, PayloadTooLargeError, UpdatesDep
from edgefleet.fleet.errors import InvalidRequestError
from edgefleet.fleet.store.tables import ModelVersionPublic
from edgefleet.shared.manifest import NAME_PATTERN

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(current_token)])

UPLOAD_FIELD = "package"
CHUNK_BYTES = 1024 * 1024

ModelName = Annotated[str, Query(pattern=NAME_PATTERN)]
PathName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="model name")]
PathVersion = Annotated[str, PathParam(min_length=1, max_length=64, description="version")]


@router.post(
    "",
    response_model=ModelVersionPublic,
    status_code=201,
    responses={200: {"description": "the same bytes were uploaded before"}},
)
async def upload_model(
    request: Request,
    response: Response,
    updates: UpdatesDep,
    settings: SettingsDep,
    token: Operator,
) -> ModelVersionPublic:
    """Upload an ``.efpkg``; see the module docstring for the statuses."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLargeError(f"upload is {declared} bytes, at most {limit} accepted")
    registry = updates.registry
    fd, name = tempfile.mkstemp(dir=registry.incoming_dir, prefix="upload.", suffix=".efpkg")
    spooled = Path(name)
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
        version, created = await run_in_threadpool(registry.add, spooled, uploaded_by=token.name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            spooled.unlink()
    if not created:
        response.status_code = 200
    return version


@router.get("", response_model=list[ModelVersionPublic])
def list_models(updates: UpdatesDep, name: ModelName | None = None) -> list[ModelVersionPublic]:
    """Every version in the registry (of ``name``), newest upload first."""
    return updates.registry.list_versions(name)


@router.get("/{name}/{version}", response_model=ModelVersionPublic)
def get_model(name: PathName, version: PathVersion, updates: UpdatesDep) -> ModelVersionPublic:
    """One version: manifest, metrics, lineage (training data sha256), approval, published."""
    return updates.registry.get(name, version)


@router.post("/{name}/{version}/publish", response_model=ModelVersionPublic)
def publish_model(
    name: PathName, version: PathVersion, updates: UpdatesDep, token: Approver
) -> ModelVersionPublic:
    """Sign the version into the TUF targets with the release key (lab mode only).

    409 if the fleet does not hold the release key: sign offline and PUT the result to
    ``/v1/repository/targets-metadata``.
    """
    return updates.registry.publish(name, version, approved_by=token.name)


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
