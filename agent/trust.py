"""The device side of the image repository: TUF-verified knowledge of which targets exist.

`TrustedRepository` wraps `tuf.ngclient.Updater`: it starts from the newest root it has
verified (never older than the root pinned at provisioning, ``trusted_root.json``), walks
the root chain, and refuses expired or rolled-back metadata (a freeze or replay attack)
before it says anything about a target.
It does not download artifacts: the update runner does that with `edgefleet.agent.download`
(resumable, size-capped), after `verify_target_info` has checked that the director's claim
(name, sha256, length) is exactly what the release key signed — mix-and-match protection.

Errors: `TufError` / `Expired` / `LengthMismatch` (the repository sent bad metadata),
`TargetNotFound`, `DigestMismatch` (director and TUF disagree), versus `TransportError`
(the network failed; retry later).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from edgefleet.agent.download import (
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    RedirectRefusedError,
    RequestAuth,
    origin,
    redirect_target,
)
from edgefleet.shared.durable import fsync_dir, fsync_file
from edgefleet.shared.signing.errors import (
    DigestMismatch,
    Expired,
    LengthMismatch,
    TargetNotFound,
    TransportError,
    TufError,
)
from edgefleet.shared.signing.tufapi import Metadata, Root, TargetFile

logger = logging.getLogger(__name__)

METADATA_PATH = "metadata/"
TARGETS_PATH = "targets/"
# python-tuf keeps every root it verified here, as ``<version>.root.json``. A refresh
# starts its chain at the newest root this cache chains to from the pinned root: python-tuf
# walks at most `max_root_rotations` (256) versions per refresh, so a device that always
# began at its provisioning root would be stuck for good once the repository is more than
# 256 root versions past it.
ROOT_HISTORY_DIR = "root_history"


class HeaderFetcher(FetcherInterface):
    """A urllib3 fetcher that sends the device's credentials with each request.

    ``headers`` go with every request (a shared device token); ``auth(method, url)`` adds
    each request's own (a device's signature, `edgefleet.agent.credentials`). A redirect
    is followed only to the origin it came from (at most `MAX_REDIRECTS`, each with its
    own credentials); one to another origin is refused before anything is sent there.
    ``ssl_context`` verifies an https repository (default: the system's CAs).
    """

    def __init__(
        self,
        headers: Mapping[str, str] | None = None,
        *,
        auth: RequestAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 30.0,
        chunk_bytes: int = 64 * 1024,
    ) -> None:
        self._headers = {"User-Agent": "edgefleet-agent", **(headers or {})}
        self._auth = auth
        # redirect=False: urllib3 hands a 3xx back instead of following it (it would send
        # our headers, all but Authorization, to wherever it points).
        self._pool = urllib3.PoolManager(
            retries=urllib3.Retry(total=2, backoff_factor=0.2, redirect=False),
            ssl_context=ssl_context,
        )
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._chunk_bytes = chunk_bytes

    def _fetch(self, url: str) -> Iterator[bytes]:
        home = origin(url)
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get(current)
            if response.status not in REDIRECT_STATUSES:
                break
            location = response.headers.get("Location")
            response.drain_conn()
            response.release_conn()
            try:
                current = redirect_target(url, home, current, location)
            except RedirectRefusedError as e:
                raise tuf_errors.DownloadError(str(e)) from None
        else:
            raise tuf_errors.DownloadError(f"{url} redirected more than {MAX_REDIRECTS} times")
        if response.status >= 400:
            # Read the error body off the wire first: a kept-alive connection returned to
            # the pool with it unread makes the next response unparseable.
            response.drain_conn()
            response.release_conn()
            raise tuf_errors.DownloadHTTPError(
                f"{url} answered HTTP {response.status}", response.status
            )
        return self._chunks(url, response)

    def _get(self, url: str) -> urllib3.BaseHTTPResponse:
        headers = dict(self._headers)
        if self._auth is not None:
            headers.update(self._auth("GET", url))
        try:
            return self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                redirect=False,
                timeout=self._timeout,
            )
        except urllib3.exceptions.HTTPError as e:
            raise tuf_errors.DownloadError(f"cannot fetch {url}: {e}") from e

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(self._chunk_bytes)
        except urllib3.exceptions.HTTPError as e:
            raise tuf_errors.DownloadError(f"download of {url} broke off: {e}") from e
        finally:
            response.release_conn()


@dataclass(frozen=True)
class TargetInfo:
    """What the release key signed about one target."""

    name: str
    length: int
    sha256: str
    custom: Mapping[str, Any]
    url_path: str  # relative to the repository base URL: ``targets/<sha256>.<name>``


class TrustedRepository:
    """TUF-verified view of the image repository at ``base_url``.

    ``metadata_dir`` is the device's writable metadata cache; ``trusted_root_path`` is the
    root pinned at provisioning. The chain starts at the newest root a refresh verified
    (``ROOT_HISTORY_DIR`` in the cache, fsync'd after each refresh); the pinned root is
    the floor: the cached roots are followed only as far as each is the next version,
    signed by the threshold of the one before and its own, starting at the pinned root —
    so a damaged or rewritten cache cannot replace the trust anchor, only shorten the
    walk.
    """

    def __init__(
        self,
        metadata_dir: Path,
        trusted_root_path: Path,
        base_url: str,
        fetcher: FetcherInterface | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        config: UpdaterConfig | None = None,
    ) -> None:
        """Raises `TufError` if the pinned root cannot be read."""
        self._metadata_dir = metadata_dir
        self._base_url = base_url.rstrip("/") + "/"
        self._fetcher = fetcher or HeaderFetcher(headers)
        self._config = config or UpdaterConfig(app_user_agent="edgefleet-agent")
        try:
            self._trusted_root = trusted_root_path.read_bytes()
        except OSError as e:
            raise TufError(f"cannot read the pinned TUF root {trusted_root_path}: {e}") from e
        self._updater: Updater | None = None
        # The newest root known to chain from the pinned one: where the next walk begins.
        self._verified_root = self._trusted_root

    @property
    def trusted_root_version(self) -> int:
        """The version of the root the next refresh starts its chain from (0: unreadable)."""
        return _root_version(self._start_root()) or 0

    @property
    def base_url(self) -> str:
        """The repository base URL (ends with ``/``)."""
        return self._base_url

    def refresh(self) -> None:
        """Fetch and verify root (chain) → timestamp → snapshot → targets.

        Raises `Expired` (freeze attack or a stale repository), `TufError` (bad signature,
        version rollback, other verification failure), `LengthMismatch` (oversized
        metadata), `TransportError` (network).
        """
        self._refreshed()

    def _refreshed(self) -> Updater:
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        start = self._start_root()
        with _translated("refresh"):
            # An Updater refreshes once in its life; a new one per refresh is the ngclient way.
            updater = Updater(
                metadata_dir=str(self._metadata_dir),
                metadata_base_url=self._base_url + METADATA_PATH,
                target_base_url=self._base_url + TARGETS_PATH,
                fetcher=self._fetcher,
                config=self._config,
                bootstrap=start,
            )
            try:
                updater.refresh()
            finally:
                # Also when the refresh failed later on (a timestamp key only a root past
                # this walk's 256 versions knows): the roots verified so far are kept, so
                # the next refresh walks on from there.
                self._keep_new_roots(start)
        self._updater = updater
        logger.debug("TUF metadata refreshed from %s", self._base_url)
        return updater

    def _start_root(self) -> bytes:
        """The newest cached root that chains from the pinned root (the pinned one at worst)."""
        self._verified_root, _ = _follow_cached_chain(
            self._verified_root, self._metadata_dir / ROOT_HISTORY_DIR
        )
        return self._verified_root

    def _keep_new_roots(self, start: bytes) -> None:
        """Make the roots the Updater added after ``start`` durable; they start the next walk.

        python-tuf writes them atomically but does not fsync; a root lost in a power cut
        would only shorten the next walk, but a durable chain keeps a device that was far
        behind from falling back past the 256-version window. Does not raise: it runs
        while a refresh error may be on its way out, and that error must not be masked.
        """
        history = self._metadata_dir / ROOT_HISTORY_DIR
        newest, added = _follow_cached_chain(start, history)
        self._verified_root = newest
        if not added:
            return
        try:
            for path in added:
                fsync_file(path)
            fsync_dir(history)
            fsync_dir(self._metadata_dir)
        except OSError as e:
            logger.warning("cannot fsync the cached TUF roots (kept, not yet durable): %s", e)
        logger.info("TUF root v%d is now the start of the chain", _root_version(newest))

    def find_target(self, name: str) -> TargetInfo:
        """What the signed targets of the last `refresh` say about ``name``.

        Refreshes first if this instance never has; call `refresh` to see newer metadata.

        Raises `TargetNotFound` (an artifact the release key never approved), and whatever
        `refresh` raises.
        """
        updater = self._updater or self._refreshed()
        with _translated(f"lookup of {name}"):
            info: TargetFile | None = updater.get_targetinfo(name)
        if info is None:
            raise TargetNotFound(f"target {name!r} is not in the image repository's signed targets")
        sha256 = info.hashes.get("sha256")
        if not sha256:
            raise TufError(f"target {name!r} has no sha256 in targets metadata")
        custom = info.unrecognized_fields.get("custom") or {}
        return TargetInfo(
            name=name,
            length=info.length,
            sha256=str(sha256),
            custom=dict(custom) if isinstance(custom, dict) else {},
            url_path=f"{TARGETS_PATH}{sha256}.{name}",
        )

    def verify_target_info(
        self, name: str, expected_sha256: str, expected_length: int
    ) -> TargetInfo:
        """Check the director's claim about ``name`` against the release key's signed targets.

        Raises `TargetNotFound`, `DigestMismatch` or `LengthMismatch` naming both values,
        and whatever `refresh` raises.
        """
        info = self.find_target(name)
        if info.sha256 != expected_sha256.lower():
            raise DigestMismatch(
                f"director says {name} has sha256 {expected_sha256}, "
                f"the signed targets say {info.sha256}"
            )
        if info.length != expected_length:
            raise LengthMismatch(
                f"director says {name} is {expected_length} bytes, "
                f"the signed targets say {info.length}"
            )
        return info

    def target_url(self, info: TargetInfo) -> str:
        """The absolute URL of ``info``'s artifact (content-addressed)."""
        return self._base_url + info.url_path


def _root_version(data: bytes) -> int | None:
    """The version of root metadata ``data``; None if it does not parse as a root."""
    try:
        md = Metadata.from_bytes(data)
    except tuf_errors.RepositoryError:
        return None
    if not isinstance(md.signed, Root):
        return None
    version: int = md.signed.version
    return version


def _follow_cached_chain(trusted: bytes, history: Path) -> tuple[bytes, list[Path]]:
    """Follow ``history/<n>.root.json`` from ``trusted`` as far as each root verifies.

    Each next root must be version n+1 and signed by the root threshold of version n and
    of itself, as TUF's root update requires (expiry is not checked: the walk's end is
    checked against the clock by the refresh). Returns the newest root's bytes and the
    files followed. Does not raise: an unreadable or bad file ends the walk.
    """
    try:
        current = Metadata.from_bytes(trusted)
    except tuf_errors.RepositoryError:
        return trusted, []  # the Updater says what is wrong with it
    followed: list[Path] = []
    newest = trusted
    while isinstance(current.signed, Root):
        expected = current.signed.version + 1
        path = history / f"{expected}.root.json"
        try:
            data = path.read_bytes()
        except OSError:
            break
        try:
            new = Metadata.from_bytes(data)
            if not isinstance(new.signed, Root) or new.signed.version != expected:
                raise tuf_errors.RepositoryError(f"{path.name} is not root v{expected}")
            current.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
        except tuf_errors.RepositoryError as e:
            logger.warning(
                "cached TUF root %s does not chain, the walk ends before it: %s", path, e
            )
            break
        current, newest = new, data
        followed.append(path)
    return newest, followed


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn tuf's exceptions into ours: bad data versus transport failure."""
    try:
        yield
    except tuf_errors.ExpiredMetadataError as e:
        raise Expired(f"TUF {what}: {e}") from e
    except tuf_errors.DownloadLengthMismatchError as e:
        raise LengthMismatch(f"TUF {what}: {e}") from e
    except tuf_errors.RepositoryError as e:
        raise TufError(f"TUF {what}: {type(e).__name__}: {e}") from e
    except tuf_errors.DownloadError as e:
        raise TransportError(f"TUF {what}: {e}") from e
    except OSError as e:
        raise TufError(f"TUF {what}: cannot use the metadata cache: {e}") from e
