"""A failed or superseded download leaves nothing in ``downloads/``: no artifact, no partials.

The downloads are real (`edgefleet.agent.download.download` over HTTP from `RepoServer`, whose
connection is cut mid-body), so the ``.part`` and ``.part.etag`` files are the ones the
real downloader writes; the other ports are the fakes of `tests.agent.update.test_runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.agent.download import download
from edgefleet.agent.store import ModelStore
from edgefleet.agent.update.machine import Phase, UpdatePolicy
from edgefleet.agent.update.runner import UpdateRunner
from edgefleet.agent.update.types import UpdateTarget
from edgefleet.shared.messages import EventKind
from tests.agent.update.support import Package
from tests.agent.update.test_runner import T0, Ports, drive
from tests.shared.signing.repo_server import RepoServer


class HttpPorts(Ports):
    """Downloads for real over HTTP; the connection is cut after ``cut_bytes`` while set."""

    def __init__(self, packages: list[Package], server: RepoServer) -> None:
        super().__init__(packages)
        self.server = server
        self.cut_bytes: int | None = None
        self.after_download: Callable[[Path], None] | None = None
        for package in packages:
            (server.root / package.sha256).write_bytes(package.artifact)

    def download(self, target: UpdateTarget, dest: Path, progress) -> None:
        path = f"/{target.sha256}"
        if self.cut_bytes is not None:
            self.server.faults.cut_after[path] = self.cut_bytes
        try:
            result = download(
                self.server.url + target.sha256,
                dest,
                expected_sha256=target.sha256,
                expected_length=target.length,
                timeout_s=5,
            )
        finally:
            if self.after_download is not None:
                self.after_download(dest)
        progress(result.length)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    root = tmp_path / "served"
    root.mkdir()
    repo = RepoServer(root)
    yield repo
    repo.stop()


def _runner(tmp_path: Path, ports: Ports, attempts: int) -> UpdateRunner:
    return UpdateRunner(
        state_path=tmp_path / "update-state.json",
        store=ModelStore(tmp_path / "store"),
        downloads_dir=tmp_path / "downloads",
        downloader=ports,
        verifier=ports,
        extractor=ports,
        activator=ports,
        golden=ports,
        sink=ports,
        policy=UpdatePolicy(retry_base_s=0, max_download_attempts=attempts),
        clock=lambda: T0,
    )


def _partials(downloads: Path, sha256: str) -> list[str]:
    return sorted(p.name.removeprefix(sha256) for p in downloads.glob(f"{sha256}*"))


def test_download_that_ends_failed_leaves_no_partial_file_behind(
    tmp_path: Path, packages: list[Package], server: RepoServer
) -> None:
    ports = HttpPorts(packages, server)
    ports.cut_bytes = 100  # every attempt is cut: the download can only end FAILED
    downloads = tmp_path / "downloads"
    seen: list[list[str]] = []
    ports.after_download = lambda dest: seen.append(_partials(downloads, packages[0].sha256))
    runner = _runner(tmp_path, ports, attempts=2)
    runner.submit(packages[0].offer(1))
    drive(runner)
    assert runner.state.phase is Phase.FAILED
    assert EventKind.FAILED in ports.kinds()
    # The real downloader did leave resumable partials after each cut attempt...
    assert seen == [[".efpkg.part", ".efpkg.part.etag"]] * 2
    # ...and the failure removed them.
    assert list(downloads.iterdir()) == []


def test_superseded_download_leaves_no_partial_file_behind(
    tmp_path: Path, packages: list[Package], server: RepoServer
) -> None:
    ports = HttpPorts(packages, server)
    ports.cut_bytes = 100
    downloads = tmp_path / "downloads"
    runner = _runner(tmp_path, ports, attempts=5)
    runner.submit(packages[0].offer(1))
    runner.run_pending()  # one cut attempt; a retry is scheduled
    assert runner.state.phase is Phase.DOWNLOADING
    assert _partials(downloads, packages[0].sha256) == [".efpkg.part", ".efpkg.part.etag"]
    ports.cut_bytes = None
    runner.submit(packages[1].offer(2))
    drive(runner)
    final = runner.state  # a new name: mypy still narrows runner.state.phase from above
    assert final.phase is Phase.COMMITTED
    assert ModelStore(tmp_path / "store").active() == packages[1].sha256
    assert list(downloads.iterdir()) == []
