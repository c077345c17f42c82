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

from edgefleet.shared.durable import atomic_write_bytes
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
# The newest root a refresh verified, in the metadata cache: the next refresh (and the
# next start) begins its chain there. python-tuf walks at most `max_root_rotations` (256)
# versions per refresh, so a device that always began at its provisioning root would be
# stuck for good once the repository is more than 256 root versions past it.
NEWEST_ROOT_FILE = "newest_root.json"


class HeaderFetcher(FetcherInterface):
    """A urllib3 fetcher that sends fixed headers (the device's auth token) with each request."""

    def __init__(
        self,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float = 30.0,
        chunk_bytes: int = 64 * 1024,
    ) -> None:
        self._pool = urllib3.PoolManager(
            headers={"User-Agent": "edgefleet-agent", **(headers or {})},
            retries=urllib3.Retry(total=2, backoff_factor=0.2, redirect=2),
        )
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._chunk_bytes = chunk_bytes

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request("GET", url, preload_content=False, timeout=self._timeout)
        except urllib3.exceptions.HTTPError as e:
            raise tuf_errors.DownloadError(f"cannot fetch {url}: {e}") from e
        if response.status >= 400:
            # Read the error body off the wire first: a kept-alive connection returned to
            # the pool with it unread makes the next response unparseable.
            response.drain_conn()
            response.release_conn()
            raise tuf_errors.DownloadHTTPError(
                f"{url} answered HTTP {response.status}", response.status
            )
        return self._chunks(url, response)

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
    (``NEWEST_ROOT_FILE`` in the cache, written durably); the pinned root is the floor:
    a cached root that does not parse, is not signed by its own root threshold, or is not
    newer than the pinned root is ignored and the chain starts at the pinned root. (The
    self-signature check catches a damaged cache, not one rewritten by someone who can
    write the cache and sign a root with a key of their own.)
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
                self._keep_newest_root(start)
        self._updater = updater
        logger.debug("TUF metadata refreshed from %s", self._base_url)
        return updater

    def _start_root(self) -> bytes:
        """The cached newest verified root if it is usable and newer than the pinned one."""
        try:
            cached = (self._metadata_dir / NEWEST_ROOT_FILE).read_bytes()
        except FileNotFoundError:
            return self._trusted_root
        except OSError as e:
            logger.warning("cannot read the cached TUF root, starting from the pinned root: %s", e)
            return self._trusted_root
        cached_version = _root_version(cached, self_signed=True)
        pinned_version = _root_version(self._trusted_root)
        if cached_version is None or pinned_version is None or cached_version <= pinned_version:
            if cached_version is None:
                logger.warning("the cached TUF root is unusable, starting from the pinned root")
            return self._trusted_root
        return cached

    def _keep_newest_root(self, start: bytes) -> None:
        """Store the root the Updater trusts now (``root.json``) if it is newer than ``start``.

        python-tuf keeps ``root.json`` pointing at the last root it verified through the
        chain; its own writes are not fsync'd, ours are. Raises `OSError` (the cache).
        """
        try:
            newest = (self._metadata_dir / "root.json").read_bytes()
        except FileNotFoundError:
            return
        newest_version = _root_version(newest)
        if newest_version is not None and newest_version > (_root_version(start) or 0):
            atomic_write_bytes(self._metadata_dir / NEWEST_ROOT_FILE, newest)
            logger.info("TUF root v%d is now the start of the chain", newest_version)

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


def _root_version(data: bytes, *, self_signed: bool = False) -> int | None:
    """The version of root metadata ``data``; None if it does not parse as a root or,
    with ``self_signed``, is not signed by its own root threshold (a damaged cache)."""
    try:
        md = Metadata.from_bytes(data)
        if not isinstance(md.signed, Root):
            return None
        if self_signed:
            md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except tuf_errors.RepositoryError as e:  # DeserializationError, UnsignedMetadataError
        logger.debug("not a usable TUF root: %s", e)
        return None
    version: int = md.signed.version
    return version


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
