"""Shared access to the image repository: serialised writers, fresh state, a refresher.

`ImageRepository` is not safe for two writers and caches the metadata it opened with.
Several replicas (or threads) of the fleet share one ``repository_dir`` (a shared volume),
so every write here takes a lock (a thread lock, then ``flock`` on ``<repo>/.lock`` for
other processes) and re-opens the repository from disk first, so it signs on top of the
newest versions, never a stale copy. Reads need no lock: each file is replaced
atomically, and the timestamp that makes new metadata visible is written last.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.signing import layout
from edgefleet.shared.signing.tufapi import Signer, TargetFile

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RepositoryAccess:
    """The fleet's handle on the image repository in ``repo_dir``."""

    def __init__(self, repo_dir: Path, keys: Mapping[str, Signer]) -> None:
        """Raises `edgefleet.fleet.repository.NotFoundError` if ``repo_dir`` holds no repository."""
        self.repo_dir = repo_dir
        self._keys = dict(keys)
        self._thread_lock = threading.Lock()
        self._reader = ImageRepository(repo_dir, self._keys)

    @property
    def holds_release_key(self) -> bool:
        return "targets" in self._keys

    @contextmanager
    def writing(self) -> Iterator[ImageRepository]:
        """The repository freshly opened from disk, locked against every other writer."""
        with self._thread_lock, (self.repo_dir / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield ImageRepository(self.repo_dir, self._keys)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def metadata_file(self, file_name: str) -> bytes:
        """Bytes of a metadata URL's last segment.

        Raises `edgefleet.fleet.repository.NotFoundError`."""
        return self._reader.metadata_file(file_name)

    def target_path(self, hash_prefixed_name: str) -> Path:
        """The artifact behind a target URL; raises `edgefleet.fleet.repository.NotFoundError`."""
        return self._reader.target_path(hash_prefixed_name)

    def current_targets(self) -> dict[str, TargetFile]:
        """The targets the latest targets metadata on disk lists, by name."""
        return ImageRepository(self.repo_dir, {}).targets

    def refresh(self) -> list[str]:
        """Re-sign snapshot/timestamp past half-life; returns the roles re-signed.

        Raises `KeyNotHeldError` without the online keys.
        """
        with self.writing() as repo:
            return repo.refresh()


class MetadataRefresher:
    """A daemon thread that calls `RepositoryAccess.refresh` every ``interval_s``."""

    def __init__(self, access: RepositoryAccess, interval_s: float) -> None:
        self._access = access
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-tuf-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        # First run at once: a fleet that was down for a day must not serve stale metadata.
        while True:
            try:
                self._access.refresh()
            except Exception as e:  # the thread must outlive any one bad run
                logger.warning("cannot refresh TUF metadata in %s: %s", self._access.repo_dir, e)
            self.runs += 1
            if self._stop.wait(self._interval_s):
                return


def is_repository(repo_dir: Path) -> bool:
    """Whether ``repo_dir`` holds an image repository."""
    return (repo_dir / layout.METADATA_DIR / "root.json").is_file()
