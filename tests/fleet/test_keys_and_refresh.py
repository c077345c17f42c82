"""Keys at start (passphrase, missing repository) and the metadata refresher."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.fleet.keys import create_lab_setup
from edgefleet.fleet.repo_access import MetadataRefresher, RepositoryAccess
from edgefleet.fleet.repository import ImageRepository
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.errors import KeyFileError
from tests.fleet.publisher import wait_until


def _settings(tmp_path: Path, keys_dir: Path, **overrides: object) -> FleetSettings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "fleet",
        "api_port": 0,
        "keys_dir": keys_dir,
        "lab_mode": True,
        "migrate_at_start": True,
    } | overrides
    return FleetSettings(**values)  # type: ignore[arg-type]


def test_encrypted_keys_load_with_the_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = create_lab_setup(tmp_path / "lab", b"correct horse battery")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "correct horse battery")
    service = FleetService(_settings(tmp_path, lab.keys_dir), ingest=False)
    service.start()
    try:
        pinned = json.loads((lab.bundle_dir / "director_pub.json").read_text())["keys"]
        assert list(pinned) == [service.director_key.keyid]
    finally:
        service.stop()


def test_a_wrong_passphrase_stops_the_start_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = create_lab_setup(tmp_path / "lab", b"correct horse battery")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong")
    service = FleetService(_settings(tmp_path, lab.keys_dir), ingest=False)
    with pytest.raises(
        KeyFileError, match=r"wrong passphrase for private key .*director\.key\.pem"
    ):
        service.start()
    monkeypatch.delenv(keys.PASSPHRASE_ENV)
    with pytest.raises(KeyFileError, match="encrypted and no passphrase was given"):
        FleetService(_settings(tmp_path, lab.keys_dir), ingest=False).start()


def test_lab_mode_needs_the_release_key(tmp_path: Path) -> None:
    lab = create_lab_setup(tmp_path / "lab")
    keys.private_key_path(lab.keys_dir, "targets").unlink()
    with pytest.raises(KeyFileError, match=r"lacks targets\.key\.pem .*lab mode"):
        FleetService(_settings(tmp_path, lab.keys_dir), ingest=False).start()


def test_without_a_repository_or_root_key_the_operator_is_told_to_run_keys_init(
    tmp_path: Path,
) -> None:
    lab = create_lab_setup(tmp_path / "lab")
    keys.private_key_path(lab.keys_dir, "root").unlink()
    settings = _settings(tmp_path, lab.keys_dir, repository_dir=tmp_path / "empty-repo")
    with pytest.raises(KeyFileError, match="run `edgefleet keys init"):
        FleetService(settings, ingest=False).start()


def test_a_missing_repository_is_created_when_all_role_keys_are_at_hand(tmp_path: Path) -> None:
    lab = create_lab_setup(tmp_path / "lab")
    repo_dir = tmp_path / "new-repo"
    service = FleetService(_settings(tmp_path, lab.keys_dir, repository_dir=repo_dir), ingest=False)
    service.start()
    service.stop()
    assert (repo_dir / "metadata" / "1.root.json").is_file()
    assert (repo_dir / "metadata" / "timestamp.json").is_file()


def test_refresher_resigns_the_timestamp_before_it_expires(tmp_path: Path) -> None:
    signers = {n: keys.generate_signer() for n in keys.TUF_ROLES}
    signed_at = datetime.now(UTC) - timedelta(hours=20)  # timestamp valid 1 day: 4 h left
    ImageRepository.create(tmp_path / "repo", signers, clock=lambda: signed_at)
    access = RepositoryAccess(tmp_path / "repo", {r: signers[r] for r in ("snapshot", "timestamp")})
    refresher = MetadataRefresher(access, interval_s=0.05)
    refresher.start()
    try:
        wait_until(lambda: refresher.runs >= 2, what="two refresher runs")
    finally:
        refresher.stop()
    timestamp = json.loads(access.metadata_file("timestamp.json"))["signed"]
    assert timestamp["version"] == 2  # re-signed once, not at every run
    expires = datetime.fromisoformat(timestamp["expires"].replace("Z", "+00:00"))
    assert expires > datetime.now(UTC) + timedelta(hours=23)
