"""The device trusts only what the image repository's TUF metadata says, over real HTTP."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.agent.trust import TrustedRepository
from edgefleet.fleet.repository import ImageRepository, KeyNotHeldError, NotFoundError
from edgefleet.shared.modeltools import sign as sign_command
from edgefleet.shared.signing import keys, tuf_metadata
from edgefleet.shared.signing.errors import (
    DigestMismatch,
    Expired,
    LengthMismatch,
    TargetNotFound,
    TransportError,
    TufError,
)
from edgefleet.shared.signing.tufapi import CryptoSigner
from tests.shared.signing.conftest import Clock
from tests.shared.signing.repo_server import RepoServer

CUSTOM = {"name": "wine", "version": "1.5.2", "runtime": "onnx"}


def test_published_target_is_found_with_its_signed_hash_length_and_custom(
    repo: ImageRepository, device_repo: TrustedRepository, package: Path
):
    info = repo.add_target(package, custom=CUSTOM)

    found = device_repo.find_target(package.name)

    assert found.sha256 == tuf_metadata.sha256_of(info)
    assert found.length == package.stat().st_size
    assert found.custom == CUSTOM
    assert repo.target_path(found.url_path.removeprefix("targets/")).read_bytes() == (
        package.read_bytes()
    )
    assert [repo.version(r) for r in ("targets", "snapshot", "timestamp")] == [2, 2, 2]


def test_arbitrary_artifact_not_in_targets_is_rejected(
    repo: ImageRepository, device_repo: TrustedRepository, package: Path
):
    repo.add_target(package, custom=CUSTOM)

    with pytest.raises(TargetNotFound, match=r"evil\.efpkg"):
        device_repo.verify_target_info("evil.efpkg", "0" * 64, 10)


def test_director_hash_that_differs_from_tuf_is_rejected(
    repo: ImageRepository, device_repo: TrustedRepository, package: Path
):
    info = repo.add_target(package, custom=CUSTOM)
    real = tuf_metadata.sha256_of(info)
    other = ("0" if real[0] != "0" else "1") + real[1:]

    with pytest.raises(DigestMismatch, match=f"director says .* sha256 {other}.*say {real}"):
        device_repo.verify_target_info(package.name, other, info.length)


def test_director_length_that_differs_from_tuf_is_rejected(
    repo: ImageRepository, device_repo: TrustedRepository, package: Path
):
    info = repo.add_target(package, custom=CUSTOM)

    with pytest.raises(LengthMismatch, match=f"{info.length + 1} bytes.*say {info.length}"):
        device_repo.verify_target_info(package.name, tuf_metadata.sha256_of(info), info.length + 1)


def test_matching_director_claim_is_accepted(
    repo: ImageRepository, device_repo: TrustedRepository, package: Path
):
    info = repo.add_target(package, custom=CUSTOM)

    found = device_repo.verify_target_info(package.name, tuf_metadata.sha256_of(info), info.length)

    assert found.url_path == f"targets/{tuf_metadata.sha256_of(info)}.{package.name}"


def test_expired_timestamp_metadata_is_rejected(
    tmp_path: Path,
    signers: dict[str, CryptoSigner],
    clock: Clock,
    pinned_root: Path,
    package: Path,
):
    # A freeze attack: the repository (or a man in the middle) keeps serving old metadata.
    repo = ImageRepository(tmp_path / "repo", signers, clock=clock)
    clock.now -= timedelta(days=3)
    repo.add_target(package, custom=CUSTOM)  # timestamp signed 3 days ago, valid for 1
    server = RepoServer(tmp_path / "repo")
    try:
        device = TrustedRepository(tmp_path / "device-tuf", pinned_root, server.url)
        with pytest.raises(Expired, match="timestamp"):
            device.refresh()
    finally:
        server.stop()


def test_timestamp_version_rollback_is_rejected(
    repo: ImageRepository, device_repo: TrustedRepository, server: RepoServer, package: Path
):
    old_timestamp = repo.metadata_bytes("timestamp")
    repo.add_target(package, custom=CUSTOM)
    device_repo.refresh()
    server.faults.replace_body["/metadata/timestamp.json"] = old_timestamp

    with pytest.raises(TufError, match=r"BadVersionNumberError"):
        device_repo.refresh()


def test_targets_metadata_signed_by_a_wrong_key_is_rejected_by_the_device(
    repo: ImageRepository, device_repo: TrustedRepository, server: RepoServer, package: Path
):
    repo.add_target(package, custom=CUSTOM)
    forged = tuf_metadata.sign_targets_offline(
        repo.metadata_bytes("targets", 1),
        package,
        name="evil.efpkg",
        custom=CUSTOM,
        release_signer=keys.generate_signer(),
        now=repo.root.expires - timedelta(days=300),
        expiries=tuf_metadata.Expiries(),
    )
    server.faults.replace_body["/metadata/2.targets.json"] = tuf_metadata.to_bytes(forged)

    with pytest.raises(TufError):
        device_repo.refresh()


def test_flipped_bit_in_served_metadata_is_rejected(
    repo: ImageRepository, device_repo: TrustedRepository, server: RepoServer, package: Path
):
    repo.add_target(package, custom=CUSTOM)
    data = bytearray(repo.metadata_bytes("targets", 2))
    data[data.index(b'"length"') + 12] ^= 0x01  # a digit of the target length changes
    server.faults.replace_body["/metadata/2.targets.json"] = bytes(data)

    with pytest.raises(TufError):
        device_repo.refresh()


def test_key_rotation_through_the_root_chain_is_followed_by_a_device_pinned_to_v1(
    repo: ImageRepository, device_repo: TrustedRepository, package: Path
):
    device_repo.refresh()
    new_root, new_timestamp = keys.generate_signer(), keys.generate_signer()
    repo.rotate_keys({"root": new_root, "timestamp": new_timestamp})
    repo.add_target(package, custom=CUSTOM)

    device_repo.refresh()  # needs root v2 to trust the new timestamp key
    found = device_repo.find_target(package.name)

    assert repo.version("root") == 2
    assert found.length == package.stat().st_size
    assert new_timestamp.public_key.keyid in repo.root.roles["timestamp"].keyids


def test_root_v2_not_signed_by_the_v1_root_key_is_rejected(
    repo: ImageRepository, device_repo: TrustedRepository, server: RepoServer
):
    # An attacker who has only the new (their own) root key cannot start a chain.
    attacker_root = keys.generate_signer()
    root = tuf_metadata.next_root(
        repo.root,
        {"root": attacker_root.public_key},
        repo.root.expires - timedelta(days=300),
        tuf_metadata.Expiries(),
    )
    from edgefleet.shared.signing.tufapi import Metadata

    md = Metadata(root)
    md.sign(attacker_root)
    server.faults.replace_body["/metadata/2.root.json"] = tuf_metadata.to_bytes(md)
    (server.root / "metadata" / "2.root.json").write_bytes(b"placeholder")

    with pytest.raises(TufError, match="root"):
        device_repo.refresh()


def _sign_offline(tmp_path: Path, repo: ImageRepository, package: Path, key: Path) -> Path:
    current = tmp_path / "targets-in.json"
    current.write_bytes(repo.metadata_bytes("targets"))
    out = tmp_path / "targets-out.json"
    parser = argparse.ArgumentParser()
    sign_command.add_command(parser.add_subparsers())
    args = parser.parse_args(
        [
            "sign",
            str(package),
            "--release-key",
            str(key),
            "--metadata-in",
            str(current),
            "--out",
            str(out),
            "--model-name",
            "wine",
            "--model-version",
            "1.5.2",
            "--runtime",
            "onnx",
            "--passphrase",
            "release pass",
        ]
    )
    assert args.handler(args) == 0
    return out


def test_offline_signed_targets_are_accepted_and_reach_the_device(
    tmp_path: Path,
    signers: dict[str, CryptoSigner],
    clock: Clock,
    device_repo: TrustedRepository,
    package: Path,
):
    # The fleet holds only the online keys; the release key lives with the release manager.
    online = {role: signers[role] for role in ("snapshot", "timestamp")}
    fleet_repo = ImageRepository(tmp_path / "repo", online, clock=clock)
    keys.save_signer(signers["targets"], tmp_path / "release", "targets", b"release pass")
    with pytest.raises(KeyNotHeldError, match="targets key"):
        fleet_repo.add_target(package, custom=CUSTOM)
    signed = _sign_offline(tmp_path, fleet_repo, package, tmp_path / "release/targets.key.pem")

    fleet_repo.accept_targets(signed.read_bytes(), {package.name: package})

    found = device_repo.find_target(package.name)
    assert found.custom == CUSTOM
    assert fleet_repo.version("targets") == 2


def test_offline_targets_signed_by_a_wrong_key_are_refused(
    tmp_path: Path, repo: ImageRepository, package: Path
):
    keys.save_signer(keys.generate_signer(), tmp_path / "impostor", "targets", b"release pass")
    signed = _sign_offline(tmp_path, repo, package, tmp_path / "impostor/targets.key.pem")

    with pytest.raises(TufError, match="not signed by targets"):
        repo.accept_targets(signed.read_bytes(), {package.name: package})
    assert repo.version("targets") == 1
    assert list((tmp_path / "repo" / "targets").iterdir()) == []


def test_uploaded_artifact_that_differs_from_the_signed_one_is_refused(
    tmp_path: Path, signers: dict[str, CryptoSigner], repo: ImageRepository, package: Path
):
    keys.save_signer(signers["targets"], tmp_path / "release", "targets", b"release pass")
    signed = _sign_offline(tmp_path, repo, package, tmp_path / "release/targets.key.pem")
    tampered = tmp_path / "tampered.efpkg"
    data = bytearray(package.read_bytes())
    data[1000] ^= 0x01
    tampered.write_bytes(bytes(data))

    with pytest.raises(DigestMismatch, match=package.name):
        repo.accept_targets(signed.read_bytes(), {package.name: tampered})
    with pytest.raises(NotFoundError, match="no artifact"):
        repo.accept_targets(signed.read_bytes(), {})
    assert repo.version("targets") == 1


def test_replayed_targets_upload_is_refused(
    tmp_path: Path, signers: dict[str, CryptoSigner], repo: ImageRepository, package: Path
):
    keys.save_signer(signers["targets"], tmp_path / "release", "targets", b"release pass")
    signed = _sign_offline(tmp_path, repo, package, tmp_path / "release/targets.key.pem")
    repo.accept_targets(signed.read_bytes(), {package.name: package})

    with pytest.raises(TufError, match="v2 is not newer than the current v2"):
        repo.accept_targets(signed.read_bytes(), {package.name: package})


def test_refresh_resigns_snapshot_and_timestamp_before_they_expire(
    repo: ImageRepository, clock: Clock
):
    assert repo.refresh(clock.now + timedelta(hours=1)) == []
    assert repo.refresh(clock.now + timedelta(hours=13)) == ["timestamp"]
    assert repo.refresh(clock.now + timedelta(days=4)) == ["snapshot", "timestamp"]
    assert repo.version("timestamp") == 3


def test_device_sends_its_auth_header(
    tmp_path: Path, pinned_root: Path, server: RepoServer, repo: ImageRepository
):
    device = TrustedRepository(
        tmp_path / "dev", pinned_root, server.url, headers={"Authorization": "Bearer dev-1"}
    )
    device.refresh()

    assert server.requests
    assert all(h.get("Authorization") == "Bearer dev-1" for _, h in server.requests)


def test_unreachable_repository_is_a_transport_error_not_a_rejection(
    tmp_path: Path, pinned_root: Path, server: RepoServer
):
    url = server.url
    server.stop()
    device = TrustedRepository(tmp_path / "dev", pinned_root, url)

    with pytest.raises(TransportError):
        device.refresh()


def test_repository_serves_metadata_and_refuses_traversal(repo: ImageRepository):
    assert repo.metadata_file("1.root.json") == repo.metadata_bytes("root", 1)
    for bad in ("../keys.json", "7.root.json", "x.json"):
        with pytest.raises(NotFoundError):
            repo.metadata_file(bad)
    with pytest.raises(NotFoundError):
        repo.target_path("../../etc/passwd")
