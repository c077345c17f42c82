"""The device keeps the newest verified TUF root as the start of its chain.

python-tuf walks at most 256 root versions per refresh from the root it starts with; a
device that always started from its provisioning root could never get past version 257.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.trust import NEWEST_ROOT_FILE, TrustedRepository
from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.errors import TufError
from edgefleet.shared.signing.tufapi import CryptoSigner, Metadata
from tests.shared.signing.repo_server import RepoServer


@pytest.fixture
def signers() -> dict[str, CryptoSigner]:
    return {name: keys.generate_signer() for name in keys.ALL_KEYS}


@pytest.fixture
def repo(tmp_path: Path, signers: dict[str, CryptoSigner]) -> ImageRepository:
    return ImageRepository.create(tmp_path / "repo", signers)


@pytest.fixture
def server(repo: ImageRepository, tmp_path: Path) -> Iterator[RepoServer]:
    srv = RepoServer(tmp_path / "repo")
    # The handler writes headers and body separately; with Nagle on, each of the ~600
    # root fetches waits ~40 ms for a delayed ACK. Off, the test takes seconds, not half
    # a minute (tests/shared/signing/repo_server.py is shared; this is set only here).
    srv._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def _pin(tmp_path: Path, repo: ImageRepository, version: int = 1) -> Path:
    path = tmp_path / "device" / "trusted_root.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(repo.metadata_bytes("root", version))
    return path


def _rotate(repo: ImageRepository, signers: dict[str, CryptoSigner], count: int) -> None:
    """``count`` new root versions; the last one moves timestamp to a new key.

    The same timestamp key is re-listed in between (TUF allows a role to keep its key
    across root versions), which keeps the generation fast; the final key change means
    a device that did not reach the newest root cannot verify the timestamp.
    """
    for _ in range(count - 1):
        repo.rotate_keys({"timestamp": signers["timestamp"]})
    signers["timestamp"] = keys.generate_signer()
    repo.rotate_keys({"timestamp": signers["timestamp"]})


def test_a_device_follows_300_root_rotations_across_refreshes_and_a_restart(
    tmp_path: Path, repo: ImageRepository, server: RepoServer, signers: dict[str, CryptoSigner]
) -> None:
    started = time.monotonic()
    pinned = _pin(tmp_path, repo)
    cache = tmp_path / "device" / "tuf"
    TrustedRepository(cache, pinned, server.url).refresh()

    _rotate(repo, signers, 200)
    device = TrustedRepository(cache, pinned, server.url)
    device.refresh()
    assert device.trusted_root_version == 201

    # A restart (a new instance over the same cache) starts from v201, not from v1.
    restarted = TrustedRepository(cache, pinned, server.url)
    assert restarted.trusted_root_version == 201

    # 100 more: v301 is 300 versions past the provisioning root, beyond one walk from v1.
    _rotate(repo, signers, 100)
    restarted.refresh()
    assert restarted.trusted_root_version == 301 == repo.version("root")
    assert TrustedRepository(cache, pinned, server.url).trusted_root_version == 301
    assert time.monotonic() - started < 20


def test_one_refresh_walks_at_most_256_versions_and_the_next_one_continues(
    tmp_path: Path, repo: ImageRepository, server: RepoServer, signers: dict[str, CryptoSigner]
) -> None:
    pinned = _pin(tmp_path, repo)
    cache = tmp_path / "device" / "tuf"
    _rotate(repo, signers, 300)
    device = TrustedRepository(cache, pinned, server.url)

    # The timestamp key of v301 is not yet trusted, but the 256 verified roots are kept...
    with pytest.raises(TufError):
        device.refresh()
    assert device.trusted_root_version == 257

    # ...so the next refresh starts there and reaches the newest root.
    device.refresh()
    assert device.trusted_root_version == 301


def test_a_cached_root_older_than_the_provisioning_root_is_replaced_by_it(
    tmp_path: Path, repo: ImageRepository, server: RepoServer, signers: dict[str, CryptoSigner]
) -> None:
    _rotate(repo, signers, 3)
    cache = tmp_path / "device" / "tuf"
    cache.mkdir(parents=True)
    (cache / NEWEST_ROOT_FILE).write_bytes(repo.metadata_bytes("root", 2))
    # Re-provisioned with v3: the floor moves up, the older cached root is not a start.
    device = TrustedRepository(cache, _pin(tmp_path, repo, 3), server.url)
    assert device.trusted_root_version == 3
    device.refresh()
    assert device.trusted_root_version == 4


@pytest.mark.parametrize("damage", ["garbage", "unsigned", "truncated"])
def test_a_cached_root_that_does_not_parse_or_verify_falls_back_to_the_provisioning_root(
    tmp_path: Path,
    repo: ImageRepository,
    server: RepoServer,
    signers: dict[str, CryptoSigner],
    damage: str,
) -> None:
    _rotate(repo, signers, 2)
    pinned = _pin(tmp_path, repo)
    cache = tmp_path / "device" / "tuf"
    TrustedRepository(cache, pinned, server.url).refresh()
    newest = cache / NEWEST_ROOT_FILE
    good = newest.read_bytes()
    if damage == "garbage":
        newest.write_bytes(b"not json at all")
    elif damage == "truncated":
        newest.write_bytes(good[: len(good) // 2])
    else:
        md = Metadata.from_bytes(good)
        md.signatures.clear()
        newest.write_bytes(md.to_bytes())

    device = TrustedRepository(cache, pinned, server.url)
    assert device.trusted_root_version == 1
    device.refresh()  # the chain is walked again from the provisioning root
    assert device.trusted_root_version == 3
    assert Metadata.from_bytes(newest.read_bytes()).signed.version == 3
