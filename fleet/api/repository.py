"""``/v1/repository``: the TUF image repository over HTTP, for devices.

``GET /v1/repository/metadata/{file}`` serves ``N.root.json``, ``timestamp.json``,
``N.snapshot.json``, ``N.targets.json`` (and the unversioned latest of each role, for the
release owner's ``edgefleet model sign``); ``GET /v1/repository/targets/<sha256>.<name>``
streams an artifact from disk with Range, ETag (its sha256) and If-Range, so the agent's
downloader (`agent.download`) resumes where it stopped. A device's repository URL is
``http(s)://<fleet>/v1/repository``.

Devices authenticate with the fleet's device token (or any API token); see
`fleet.api.update_deps.repository_client`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from fleet.api.update_deps import Approver, PayloadTooLargeError, RepositoryClient, UpdatesDep
from fleet.errors import NotFoundError
from fleet.http_range import RangePlan, plan
from fleet.repository import NotFoundError as RepoNotFoundError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/repository", tags=["repository"])

CHUNK_BYTES = 256 * 1024
MAX_TARGETS_METADATA_BYTES = 16 * 1024 * 1024


class TargetsAccepted(BaseModel):
    """The targets the repository lists after an upload of targets metadata."""

    targets: list[str]


@router.get("/metadata/{file_name}")
def metadata(file_name: str, updates: UpdatesDep, _client: RepositoryClient) -> Response:
    """One metadata file; 404 for anything else (the name is matched, never joined)."""
    try:
        data = updates.require_repository().metadata_file(file_name)
    except RepoNotFoundError as e:
        raise NotFoundError(str(e)) from e
    # timestamp.json and the unversioned names change in place; versioned ones never do.
    versioned = file_name[0].isdigit()
    return Response(
        data,
        media_type="application/json",
        headers={
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache",
        },
    )


@router.get(
    "/targets/{hash_prefixed_name}",
    responses={206: {"description": "a byte range"}, 416: {"description": "range not satisfiable"}},
)
def target(
    hash_prefixed_name: str,
    updates: UpdatesDep,
    client: RepositoryClient,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    """An artifact by content hash, with Range / If-Range; its ETag is its sha256."""
    try:
        path = updates.require_repository().target_path(hash_prefixed_name)
    except RepoNotFoundError as e:
        raise NotFoundError(str(e)) from e
    size = path.stat().st_size
    # The name starts with the sha256 of the bytes (checked when stored): a strong ETag.
    etag = f'"{hash_prefixed_name.split(".", 1)[0]}"'
    decision = plan(range_header, if_range, etag, size)
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if decision.content_range:
        headers["Content-Range"] = decision.content_range
    if decision.status == 416:
        return Response(status_code=416, headers=headers)
    headers["Content-Length"] = str(decision.length)
    logger.debug("%s fetches %s (%s)", client, hash_prefixed_name, decision)
    return StreamingResponse(
        _read(path, decision),
        status_code=decision.status,
        media_type="application/octet-stream",
        headers=headers,
    )


@router.put("/targets-metadata", response_model=TargetsAccepted)
async def upload_targets_metadata(
    request: Request, updates: UpdatesDep, token: Approver
) -> TargetsAccepted:
    """Accept targets.json signed offline with the release key (``edgefleet model sign``).

    Every target it lists must be a package in the registry with the same bytes. 422 with
    the reason when it is refused (wrong key, expired, not newer, unknown target).
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_TARGETS_METADATA_BYTES:
            raise PayloadTooLargeError(
                f"targets metadata is larger than {MAX_TARGETS_METADATA_BYTES} bytes"
            )
    targets = await run_in_threadpool(
        updates.registry.accept_targets_metadata, bytes(body), approved_by=token.name
    )
    return TargetsAccepted(targets=targets)


def _read(path: Path, decision: RangePlan) -> Iterator[bytes]:
    remaining = decision.length
    with path.open("rb") as f:
        f.seek(decision.first)
        while remaining > 0:
            chunk = f.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
