"""``/v1/repository``: the TUF image repository over HTTP, for devices.

``GET /v1/repository/metadata/{file}`` serves ``N.root.json``, ``timestamp.json``,
``N.snapshot.json``, ``N.targets.json`` (and the unversioned latest of each role, for the
release owner's ``edgefleet model sign``); ``GET /v1/repository/targets/<sha256>.<name>``
serves an artifact with Range, ETag (its sha256) and If-Range, so the agent's
downloader (`edgefleet.agent.download`) resumes where it stopped. A device's repository URL is
``http(s)://<fleet>/v1/repository``.

Devices authenticate with the fleet's device token (or any API token); see
`edgefleet.fleet.api.update_deps.repository_client`.

A rollout makes every device of a wave fetch the same few files at once, so the GET
routes are ``async`` and serve from `ImmutableFileCache` (one per app) whatever cannot
change under a name: an artifact (its name is its sha256; the repository stores it
atomically and never rewrites or deletes it) and a versioned metadata file (a version is
written once, before the timestamp that names it). A cached file costs no disk access
and no worker thread; a miss costs one worker-thread round trip, and concurrent misses
of one file read it once. ``timestamp.json`` and the unversioned names change in place
and are read from disk on every request. An artifact larger than
`MAX_CACHED_FILE_BYTES` is streamed from disk in `CHUNK_BYTES` reads instead.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from edgefleet.fleet.api.deps import Caller, require
from edgefleet.fleet.api.errors import ErrorBody, error_response
from edgefleet.fleet.api.update_deps import (
    PayloadTooLargeError,
    RepositoryClient,
    UpdatesDep,
)
from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.governance.permissions import Permission
from edgefleet.fleet.http_range import RangePlan, plan
from edgefleet.fleet.repo_access import RepositoryAccess
from edgefleet.fleet.repository import NotFoundError as RepoNotFoundError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/repository", tags=["repository"])

CHUNK_BYTES = 1024 * 1024
MAX_TARGETS_METADATA_BYTES = 16 * 1024 * 1024
# A cached artifact is shared by every response that sends it, so memory stays at one
# copy however many devices fetch it; the budget holds a few typical edge models.
MAX_CACHED_FILE_BYTES = 64 * 1024 * 1024
CACHE_BUDGET_BYTES = 256 * 1024 * 1024
OCTET_STREAM = "application/octet-stream"
MAX_FILE_NAME_CHARS = 255  # a file name on every file system the repository lives on
# Longer than any range a client needs; any header within it is planned, never refused.
MAX_HEADER_CHARS = 16 * 1024
METADATA_KEY = "metadata/"  # cache keys: a URL's last segment under its directory
TARGETS_KEY = "targets/"


class TargetsAccepted(BaseModel):
    """The targets the repository lists after an upload of targets metadata."""

    targets: list[str]


@dataclass(frozen=True)
class CachedFile:
    """A file's bytes and its strong ETag (quoted)."""

    data: bytes
    etag: str


class ImmutableFileCache:
    """Bytes of files that never change under their key, least recently used evicted.

    Safe to use from the event loop and worker threads at once: `get` only takes a lock
    held for a dictionary operation, and `load` (for a worker thread) reads a key once
    however many callers miss it together.
    """

    def __init__(self, budget_bytes: int, max_file_bytes: int) -> None:
        self._budget_bytes = budget_bytes
        self._max_file_bytes = max_file_bytes
        self._files: OrderedDict[str, CachedFile] = OrderedDict()
        self._size_bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str) -> CachedFile | None:
        """The cached file, or None."""
        with self._lock:
            found = self._files.get(key)
            if found is not None:
                self._files.move_to_end(key)
            return found

    def load(self, key: str, read: Callable[[], CachedFile]) -> CachedFile:
        """The cached file, else ``read()``'s, kept if it fits; raises what ``read`` raises.

        Blocks on ``read``: call it in a worker thread.
        """
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            found = self.get(key)
            if found is not None:
                return found
            try:
                loaded = read()
                self._keep(key, loaded)
            finally:
                # Only once it is kept: a caller arriving now finds it, not a new lock.
                with self._lock:
                    self._loading.pop(key, None)
            return loaded

    def _keep(self, key: str, loaded: CachedFile) -> None:
        size = len(loaded.data)
        if size > self._max_file_bytes or size > self._budget_bytes:
            return
        with self._lock:
            if key in self._files:
                return
            self._files[key] = loaded
            self._size_bytes += size
            while self._size_bytes > self._budget_bytes:
                _, evicted = self._files.popitem(last=False)
                self._size_bytes -= len(evicted.data)


async def get_file_cache(request: Request) -> ImmutableFileCache:
    """The app's cache of immutable repository files, made on first use."""
    cache: ImmutableFileCache | None = getattr(request.app.state, "repository_files", None)
    if cache is None:
        cache = ImmutableFileCache(CACHE_BUDGET_BYTES, MAX_CACHED_FILE_BYTES)
        request.app.state.repository_files = cache
    return cache


FileCache = Annotated[ImmutableFileCache, Depends(get_file_cache)]


@router.get("/metadata/{file_name}")
async def metadata(
    file_name: Annotated[str, PathParam(max_length=MAX_FILE_NAME_CHARS)],
    updates: UpdatesDep,
    cache: FileCache,
    _client: RepositoryClient,
) -> Response:
    """One metadata file; 404 for anything else (the name is matched, never joined)."""
    repository = updates.require_repository()
    # timestamp.json and the unversioned names change in place; versioned ones never do.
    versioned = file_name[:1].isdigit()
    key = METADATA_KEY + file_name
    found = cache.get(key) if versioned else None
    if found is None:
        try:
            if versioned:
                found = await run_in_threadpool(
                    cache.load, key, lambda: _read_metadata(repository, file_name)
                )
            else:
                found = await run_in_threadpool(_read_metadata, repository, file_name)
        except RepoNotFoundError as e:
            raise NotFoundError(str(e)) from e
    return Response(
        found.data,
        media_type="application/json",
        headers={
            "ETag": found.etag,
            "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache",
        },
    )


@router.get(
    "/targets/{hash_prefixed_name}",
    responses={
        206: {"description": "a byte range"},
        416: {"model": ErrorBody, "description": "range not satisfiable"},
    },
)
async def target(
    hash_prefixed_name: Annotated[str, PathParam(max_length=MAX_FILE_NAME_CHARS)],
    *,
    updates: UpdatesDep,
    cache: FileCache,
    client: RepositoryClient,
    range_header: Annotated[str | None, Header(alias="Range", max_length=MAX_HEADER_CHARS)] = None,
    if_range: Annotated[str | None, Header(alias="If-Range", max_length=MAX_HEADER_CHARS)] = None,
) -> Response:
    """An artifact by content hash, with Range / If-Range; its ETag is its sha256."""
    repository = updates.require_repository()
    # The name starts with the sha256 of the bytes (checked when stored): a strong ETag.
    etag = f'"{hash_prefixed_name.split(".", 1)[0]}"'
    found: CachedFile | tuple[Path, int] | None = cache.get(TARGETS_KEY + hash_prefixed_name)
    if found is None:
        try:
            found = await run_in_threadpool(
                _open_target, repository, cache, hash_prefixed_name, etag
            )
        except RepoNotFoundError as e:
            raise NotFoundError(str(e)) from e
    size = len(found.data) if isinstance(found, CachedFile) else found[1]
    decision = plan(range_header, if_range, etag, size)
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    if decision.content_range:
        headers["Content-Range"] = decision.content_range
    if decision.status == 416:
        return error_response(
            416,
            "range_not_satisfiable",
            f"the range is outside the file's {decision.length} bytes",
            headers=headers,
        )
    logger.debug("%s fetches %s (%s)", client.principal.name, hash_prefixed_name, decision)
    if isinstance(found, CachedFile):
        body = found.data
        if decision.status == 206:
            body = body[decision.first : decision.last + 1]
        # Response sets Content-Length from the body.
        return Response(body, status_code=decision.status, media_type=OCTET_STREAM, headers=headers)
    headers["Content-Length"] = str(decision.length)
    return StreamingResponse(
        _stream(found[0], decision),
        status_code=decision.status,
        media_type=OCTET_STREAM,
        headers=headers,
    )


@router.put("/targets-metadata", response_model=TargetsAccepted)
async def upload_targets_metadata(
    request: Request,
    updates: UpdatesDep,
    caller: Annotated[Caller, Depends(require(Permission.MODEL_PUBLISH))],
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
        lambda: updates.registry.accept_targets_metadata(
            bytes(body),
            by=caller.principal.name,
            audit=caller.record("repository.targets.put", "repository", "targets"),
        )
    )
    return TargetsAccepted(targets=targets)


def _read_metadata(repository: RepositoryAccess, file_name: str) -> CachedFile:
    data = repository.metadata_file(file_name)
    return CachedFile(data, f'"{hashlib.sha256(data).hexdigest()}"')


def _open_target(
    repository: RepositoryAccess, cache: ImmutableFileCache, hash_prefixed_name: str, etag: str
) -> CachedFile | tuple[Path, int]:
    """An artifact's cached bytes, or its path and size if it is too big to cache."""
    path = repository.target_path(hash_prefixed_name)
    size = path.stat().st_size
    if size > MAX_CACHED_FILE_BYTES:
        return path, size
    return cache.load(TARGETS_KEY + hash_prefixed_name, lambda: CachedFile(path.read_bytes(), etag))


async def _stream(path: Path, decision: RangePlan) -> AsyncIterator[bytes]:
    # Big reads, one worker-thread round trip each: the loop never waits on the disk.
    f = await run_in_threadpool(_open_at, path, decision.first)
    try:
        remaining = decision.length
        while remaining > 0:
            chunk = await run_in_threadpool(f.read, min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
    finally:
        f.close()


def _open_at(path: Path, offset: int) -> BinaryIO:
    f = path.open("rb")
    f.seek(offset)
    return f
