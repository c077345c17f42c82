"""Resumable, size-capped, hash-checked artifact download on the standard library.

`download` fetches ``url`` into ``dest`` and returns only once ``dest`` holds exactly
``expected_length`` bytes whose sha256 is ``expected_sha256``. Progress is kept in
``<dest>.part`` (and the server's ETag in ``<dest>.part.etag``), so a broken connection,
a reboot or a new process resumes with an HTTP ``Range`` request instead of starting over.

Invariants:
- never more than ``expected_length`` bytes are written, and a response that would go
  past it is cut off at the limit (an endless or oversized stream raises `LengthMismatch`);
- a resumed download re-hashes the bytes already on disk, so the final digest covers the
  whole file, not only the part fetched this time;
- ``If-Range`` with the saved ETag makes a server whose file changed send the whole new
  file (HTTP 200), which restarts the download from zero rather than splicing two files;
- ``dest`` appears only by an atomic rename of a verified file.

Errors: `LengthMismatch` and `DigestMismatch` mean the bytes are wrong (the partial file is
deleted: retrying resumes nothing bad); `TransportError` means the network failed (the
partial file is kept for the next try).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from edgefleet.shared.durable import fsync_dir
from edgefleet.shared.hashing import hash_stream
from edgefleet.shared.signing.errors import DigestMismatch, LengthMismatch, TransportError

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES: Final = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class DownloadResult:
    """A verified artifact on disk."""

    path: Path
    sha256: str
    length: int
    fetched_bytes: int  # bytes read from the network by this call
    resumed_from: int  # bytes already on disk when this call started


def download(
    url: str,
    dest: Path,
    *,
    expected_sha256: str,
    expected_length: int,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> DownloadResult:
    """Download ``url`` to ``dest``, resuming a previous partial download if there is one.

    Raises `LengthMismatch` (the server sent more than ``expected_length`` bytes, or a
    wrong Content-Length / Content-Range), `DigestMismatch` (complete but the hash
    differs), `TransportError` (connection failure, timeout, HTTP error, or the stream
    ended early; call again to resume).
    """
    expected_sha256 = expected_sha256.lower()
    part = dest.with_name(dest.name + ".part")
    etag_file = dest.with_name(dest.name + ".part.etag")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, offset = _rehash_prefix(part, expected_length)
    resumed_from = offset
    etag = _read_etag(etag_file) if offset else None
    fetched = 0
    if expected_length == 0:
        part.touch()
    if offset < expected_length:
        request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - http(s) from config
        if offset:
            request.add_header("Range", f"bytes={offset}-")
            if etag:
                request.add_header("If-Range", etag)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                start = _start_offset(response, offset, expected_length, url)
                if start == 0 and offset:
                    logger.info("server sent all of %s again; restarting from byte 0", url)
                    digest, offset = hashlib.sha256(), 0
                new_etag = response.headers.get("ETag")
                if new_etag:
                    _write_etag(etag_file, new_etag)
                with part.open("r+b" if offset else "wb") as out:
                    out.seek(offset)
                    out.truncate()
                    fetched, offset = _copy_capped(
                        response,
                        out,
                        digest=digest,
                        offset=offset,
                        expected_length=expected_length,
                        chunk_bytes=chunk_bytes,
                        url=url,
                        part=part,
                    )
        except urllib.error.HTTPError as e:
            if e.code == 416:
                # Our partial file is no prefix the server recognises: start over next time.
                _discard(part, etag_file)
            raise TransportError(f"{url} answered HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise TransportError(f"download of {url} failed at byte {offset}: {e}") from e
    if offset < expected_length:
        raise TransportError(
            f"download of {url} ended at byte {offset} of {expected_length}; call again to resume"
        )
    found = digest.hexdigest()
    if found != expected_sha256:
        _discard(part, etag_file)
        raise DigestMismatch(f"{url} has sha256 {found}, expected {expected_sha256}")
    os.replace(part, dest)
    with contextlib.suppress(FileNotFoundError):
        etag_file.unlink()
    fsync_dir(dest.parent)
    logger.debug("downloaded %s (%s bytes, %s fetched)", url, expected_length, fetched)
    return DownloadResult(dest, found, expected_length, fetched, resumed_from)


def _rehash_prefix(part: Path, expected_length: int) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return digest, 0
    if size > expected_length:
        # Cannot be a prefix of the expected file: start over.
        part.unlink()
        return digest, 0
    with part.open("rb") as f:
        hash_stream(digest, f)
    return digest, size


def _start_offset(
    response: http.client.HTTPResponse, offset: int, expected_length: int, url: str
) -> int:
    """Where the body of ``response`` starts in the file; checks the declared sizes."""
    status = response.status
    content_length = response.headers.get("Content-Length")
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise LengthMismatch(
                f"{url} answered a range from byte {offset} with Content-Range "
                f"{response.headers.get('Content-Range')!r}"
            )
        total = match.group(3)
        if total != "*" and int(total) != expected_length:
            raise LengthMismatch(f"{url} is {total} bytes, expected {expected_length}")
        start = offset
    elif status == 200:
        start = 0
    else:
        raise TransportError(f"{url} answered HTTP {status}, expected 200 or 206")
    if (
        content_length is not None
        and content_length.isdigit()
        and start + int(content_length) > expected_length
    ):
        raise LengthMismatch(
            f"{url} announces {start + int(content_length)} bytes, expected {expected_length}"
        )
    return start


def _copy_capped(
    response: http.client.HTTPResponse,
    out: BinaryIO,
    *,
    digest: hashlib._Hash,
    offset: int,
    expected_length: int,
    chunk_bytes: int,
    url: str,
    part: Path,
) -> tuple[int, int]:
    fetched = 0
    try:
        while True:
            # Never ask for more than one byte past the limit: an endless stream stops here.
            want = min(chunk_bytes, expected_length - offset + 1)
            chunk = response.read(want)
            if not chunk:
                break
            fetched += len(chunk)
            if offset + len(chunk) > expected_length:
                raise LengthMismatch(
                    f"{url} sent more than the expected {expected_length} bytes; stopped"
                )
            out.write(chunk)
            digest.update(chunk)
            offset += len(chunk)
    except LengthMismatch:
        out.close()
        _discard(part, part.with_name(part.name + ".etag"))
        raise
    finally:
        if not out.closed:
            out.flush()
            os.fsync(out.fileno())
    return fetched, offset


def _read_etag(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _write_etag(path: Path, etag: str) -> None:
    path.write_text(etag)


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
