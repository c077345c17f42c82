"""Fixtures for the signing tests: real keys, a real TUF repository, a real HTTP server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.agent.trust import TrustedRepository
from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.tufapi import CryptoSigner
from tests.shared.signing.repo_server import RepoServer


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def signers() -> dict[str, CryptoSigner]:
    """The four TUF role keys and the director key."""
    return {name: keys.generate_signer() for name in keys.ALL_KEYS}


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC))


@pytest.fixture
def repo(tmp_path: Path, signers: dict[str, CryptoSigner], clock: Clock) -> ImageRepository:
    return ImageRepository.create(tmp_path / "repo", signers, clock=clock)


@pytest.fixture
def server(tmp_path: Path, repo: ImageRepository) -> Iterator[RepoServer]:
    srv = RepoServer(tmp_path / "repo")
    yield srv
    srv.stop()


@pytest.fixture
def pinned_root(tmp_path: Path, repo: ImageRepository) -> Path:
    """The root a device pins at provisioning: version 1 of this repository's root."""
    path = tmp_path / "device" / "trusted_root.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(repo.metadata_bytes("root", 1))
    return path


@pytest.fixture
def device_repo(tmp_path: Path, pinned_root: Path, server: RepoServer) -> TrustedRepository:
    return TrustedRepository(tmp_path / "device" / "tuf", pinned_root, server.url)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A model package's bytes (content is opaque to signing): 300 KiB of random data."""
    path = tmp_path / "wine-1.5.2.efpkg"
    path.write_bytes(os.urandom(300 * 1024))
    return path
