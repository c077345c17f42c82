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
deleted: retrying resumes nothing bad); `TargetNotFound` means the server answered 404
(or 410) for the artifact: retrying the same URL will not make it appear; `TransportError`
means the network failed, the total deadline passed or the download was aborted (the
partial file is kept for the next try).

Redirects: one to the same origin (scheme, host and port) is followed, at most
`MAX_REDIRECTS` times, with the request's credentials made afresh for the new URL; one
to another origin is refused (`TransportError`) before anything is sent there, so the
device's credentials never reach another host.

A download ends by ``deadline_s`` at the latest, however slowly the server trickles bytes
(the per-read ``timeout_s`` alone would let a byte every few seconds hold it for ever),
and a `DownloadAbort` lets another thread stop it at once. Both shut the connection's
socket down, which wakes a read blocked in the downloading thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import urljoin, urlsplit

from edgefleet.shared.durable import fsync_dir
from edgefleet.shared.hashing import hash_stream
from edgefleet.shared.signing.errors import (
    DigestMismatch,
    LengthMismatch,
    TargetNotFound,
    TransportError,
)

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES: Final = 256 * 1024
DEFAULT_DEADLINE_S: Final = 1800.0
# Statuses that say the artifact is not there: a retry would ask again for nothing.
_NOT_FOUND: Final = frozenset({404, 410})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
MAX_REDIRECTS: Final = 2
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})

# (method, url) -> the credential headers of that one request (a device's signature
# covers the method and the URL's path, so each request, redirects too, gets its own).
RequestAuth = Callable[[str, str], Mapping[str, str]]


def origin(url: str) -> tuple[str, str, int | None]:
    """A URL's origin: scheme, host (lower case) and port (the scheme's default if none).

    Raises ValueError for a port that is not a number.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


class RedirectRefusedError(ValueError):
    """A redirect the agent does not follow; the message names both URLs."""


def redirect_target(
    first_url: str, home: tuple[str, str, int | None], current: str, location: str | None
) -> str:
    """Where a redirect from ``current`` (reached from ``first_url``, whose `origin` is
    ``home``) may be followed.

    Both of the agent's HTTP clients (this downloader and the TUF fetcher) ask this, so
    the same rule holds for metadata and artifacts: only within ``first_url``'s origin.
    Raises `RedirectRefusedError`, naming the URLs, for no Location or another origin.
    """
    if not location:
        raise RedirectRefusedError(f"{current} answered a redirect without a Location")
    target = urljoin(current, location)
    try:
        same = origin(target) == home
    except ValueError:
        same = False
    if not same:
        logger.warning("%s redirects to %s, another origin: refused", current, target)
        raise RedirectRefusedError(
            f"{current} redirects to {target}, another origin than {first_url}'s: refused,"
            " and no credentials were sent there"
        )
    return target


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hands a redirect back as an HTTPError: `open_following` decides where it may go."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def open_following(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    auth: RequestAuth | None = None,
    timeout_s: float,
    context: ssl.SSLContext | None = None,
) -> http.client.HTTPResponse:
    """GET ``url``, following redirects to its own origin only.

    ``headers`` go with every request; ``auth(method, url)`` adds the credentials of
    each one. Raises `TransportError` for a redirect to another origin (nothing is sent
    there), more than `MAX_REDIRECTS` redirects, or one without a Location;
    urllib.error.HTTPError for any other HTTP error status, URLError and OSError.
    """
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _NoRedirects()
    )
    home = origin(url)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(current, headers=dict(headers or {}))  # noqa: S310
        for name, value in (auth("GET", current) if auth else {}).items():
            request.add_header(name, value)
        try:
            response: http.client.HTTPResponse = opener.open(request, timeout=timeout_s)
            return response
        except urllib.error.HTTPError as e:
            if e.code not in REDIRECT_STATUSES:
                raise
            location = e.headers.get("Location")
            e.close()
        try:
            current = redirect_target(url, home, current, location)
        except RedirectRefusedError as e:
            raise TransportError(str(e)) from None
    raise TransportError(f"{url} redirected more than {MAX_REDIRECTS} times")


@dataclass(frozen=True)
class DownloadResult:
    """A verified artifact on disk."""

    path: Path
    sha256: str
    length: int
    fetched_bytes: int  # bytes read from the network by this call
    resumed_from: int  # bytes already on disk when this call started


class DownloadAbort:
    """Stops a download in progress from any thread: `abort` shuts its connection down.

    One per download. An abort before the connection opens makes `download` raise as soon
    as it starts or connects; one after it ends does nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._fd: int | None = None

    @property
    def reason(self) -> str | None:
        """Why it was aborted (the first reason given), or None."""
        return self._reason

    def abort(self, reason: str) -> None:
        """Stop the download with ``reason`` (it raises `TransportError`). Never raises."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            if self._fd is not None:
                _shutdown(self._fd)

    @contextlib.contextmanager
    def _watching(self, response: http.client.HTTPResponse) -> Iterator[None]:
        # Left (under the lock) before the response closes, so `abort` never shuts down
        # a descriptor that was closed and reused.
        fd = response.fileno()
        with self._lock:
            self._fd = fd
            if self._reason is not None:
                _shutdown(fd)
        try:
            yield
        finally:
            with self._lock:
                self._fd = None


def _shutdown(fd: int) -> None:
    # A blocked recv in another thread returns at once (EOF) after shutdown, where a
    # close would leave it waiting. The duplicate descriptor is ours to close.
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def download(
    url: str,
    dest: Path,
    *,
    expected_sha256: str,
    expected_length: int,
    headers: Mapping[str, str] | None = None,
    auth: RequestAuth | None = None,
    context: ssl.SSLContext | None = None,
    timeout_s: float = 30.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
    abort: DownloadAbort | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> DownloadResult:
    """Download ``url`` to ``dest``, resuming a previous partial download if there is one.

    ``headers`` go with every request and ``auth`` adds each one's credentials (see
    `open_following`); ``context`` verifies an https server (default: the system's CAs).
    ``timeout_s`` bounds each connect and read, ``deadline_s`` the whole call; ``abort``
    lets another thread stop it.

    Raises `LengthMismatch` (the server sent more than ``expected_length`` bytes, or a
    wrong Content-Length / Content-Range), `DigestMismatch` (complete but the hash
    differs), `TargetNotFound` (HTTP 404 or 410), `TransportError` (connection failure,
    timeout, other HTTP error, a redirect to another origin, the stream ended early, the
    deadline passed or ``abort`` was called; call again to resume).
    """
    abort = abort or DownloadAbort()
    if abort.reason is not None:
        raise TransportError(f"download of {url} stopped: {abort.reason}")
    timer = threading.Timer(
        deadline_s, abort.abort, args=(f"it passed its total deadline of {deadline_s:g} s",)
    )
    timer.daemon = True
    timer.start()
    try:
        return _download(
            url,
            dest,
            expected_sha256=expected_sha256,
            expected_length=expected_length,
            headers=headers,
            auth=auth,
            context=context,
            timeout_s=min(timeout_s, deadline_s),
            abort=abort,
            chunk_bytes=chunk_bytes,
        )
    finally:
        timer.cancel()


def _download(
    url: str,
    dest: Path,
    *,
    expected_sha256: str,
    expected_length: int,
    headers: Mapping[str, str] | None,
    auth: RequestAuth | None,
    context: ssl.SSLContext | None,
    timeout_s: float,
    abort: DownloadAbort,
    chunk_bytes: int,
) -> DownloadResult:
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
        sent = dict(headers or {})
        if offset:
            sent["Range"] = f"bytes={offset}-"
            if etag:
                sent["If-Range"] = etag
        started = time.monotonic()
        try:
            with (
                open_following(
                    url, headers=sent, auth=auth, timeout_s=timeout_s, context=context
                ) as response,
                abort._watching(response),
            ):
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
            raise _http_error(e, url, part, etag_file) from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            _raise_if_aborted(abort, url, offset, started)
            raise TransportError(f"download of {url} failed at byte {offset}: {e}") from e
        if offset < expected_length:
            _raise_if_aborted(abort, url, offset, started)
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


def _http_error(
    e: urllib.error.HTTPError, url: str, part: Path, etag_file: Path
) -> TargetNotFound | TransportError:
    if e.code == 416:
        # Our partial file is no prefix the server recognises: start over next time.
        _discard(part, etag_file)
    if e.code in _NOT_FOUND:
        return TargetNotFound(
            f"{url} answered HTTP {e.code} {e.reason}: the repository lists the target "
            "but does not serve it"
        )
    return TransportError(f"{url} answered HTTP {e.code} {e.reason}")


def _raise_if_aborted(abort: DownloadAbort, url: str, offset: int, started: float) -> None:
    if abort.reason is not None:
        raise TransportError(
            f"download of {url} stopped at byte {offset} after "
            f"{time.monotonic() - started:.1f} s: {abort.reason}"
        )


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
