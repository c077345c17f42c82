"""The device keeps the newest verified TUF root as the start of its chain.

python-tuf walks at most 256 root versions per refresh from the root it starts with; a
device that always started from its provisioning root could never get past version 257.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.trust import ROOT_HISTORY_DIR, TrustedRepository
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


def test_a_cached_chain_older_than_the_provisioning_root_is_not_a_start(
    tmp_path: Path, repo: ImageRepository, server: RepoServer, signers: dict[str, CryptoSigner]
) -> None:
    _rotate(repo, signers, 3)
    cache = tmp_path / "device" / "tuf"
    TrustedRepository(cache, _pin(tmp_path, repo, 1), server.url).refresh()
    for version in (3, 4):
        (cache / ROOT_HISTORY_DIR / f"{version}.root.json").unlink()
    # Re-provisioned with v3: the floor moves up, the older cached v2 is not a start.
    device = TrustedRepository(cache, _pin(tmp_path, repo, 3), server.url)
    assert device.trusted_root_version == 3
    device.refresh()
    assert device.trusted_root_version == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "unsigned", "attacker"])
def test_a_cached_root_that_does_not_chain_ends_the_walk_and_is_fetched_again(
    tmp_path: Path,
    repo: ImageRepository,
    server: RepoServer,
    signers: dict[str, CryptoSigner],
    damage: str,
) -> None:
    _rotate(repo, signers, 3)
    pinned = _pin(tmp_path, repo)
    cache = tmp_path / "device" / "tuf"
    TrustedRepository(cache, pinned, server.url).refresh()
    cached = cache / ROOT_HISTORY_DIR / "3.root.json"
    good = cached.read_bytes()
    md = Metadata.from_bytes(good)
    if damage == "garbage":
        cached.write_bytes(b"not json at all")
    elif damage == "truncated":
        cached.write_bytes(good[: len(good) // 2])
    elif damage == "unsigned":
        md.signatures.clear()
        cached.write_bytes(md.to_bytes())
    else:
        # Someone who can write the cache but holds no root key: a root of their own,
        # self-signed, must not become the trust anchor.
        attacker = keys.generate_signer()
        root = md.signed
        root.roles["root"].keyids = [attacker.public_key.keyid]
        root.keys[attacker.public_key.keyid] = attacker.public_key
        forged = Metadata(root)
        forged.sign(attacker)
        cached.write_bytes(forged.to_bytes())

    device = TrustedRepository(cache, pinned, server.url)
    assert device.trusted_root_version == 2  # the walk ends before the bad v3
    device.refresh()  # v3 is fetched and verified again, the chain goes on to v4
    assert device.trusted_root_version == 4
    assert cached.read_bytes() == good
