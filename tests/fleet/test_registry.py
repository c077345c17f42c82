"""The model registry over HTTP: verified uploads, conflicts, publishing in both modes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from edgefleet.fleet.keys import LabSetup
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.tables import ModelVersion
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.signing import keys, tuf_metadata
from edgefleet.shared.signing.tufapi import CryptoSigner
from tests.support.fleet_fixtures import MakeFleet, admin_client, retar, upload


def test_upload_records_manifest_lineage_and_uploader(
    api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    package = wine_packages["1.0.0"]
    with package.open("rb") as f:
        created = api.post("/v1/models", files={"package": ("wine.efpkg", f)})
    assert created.status_code == 201, created.text
    body = created.json()
    manifest = json.loads(_member(package, "manifest.json"))
    assert body["sha256"] == sha256_file(package)
    assert body["length"] == package.stat().st_size
    assert body["uploaded_by"] == "admin"
    assert body["training_data_sha256"] == manifest["training_data_sha256"] is not None
    assert body["metrics"] == manifest["metrics"]
    assert body["published"] is False
    assert body["approved_by"] is None

    again = upload(api, package)  # raw body this time, same bytes
    assert again.status_code == 200
    assert again.json()["uploaded_at"] == body["uploaded_at"]
    listed = api.get("/v1/models", params={"name": "wine"}).json()
    assert [(m["name"], m["version"]) for m in listed] == [("wine", "1.0.0")]
    one = api.get("/v1/models/wine/1.0.0").json()
    assert one["manifest"]["sha256"] == manifest["sha256"]


def test_other_bytes_for_an_existing_version_conflict(
    api: httpx.Client, wine_packages: dict[str, Path], tmp_path: Path
) -> None:
    assert upload(api, wine_packages["1.0.0"]).status_code == 201
    # Same manifest, an extra byte of padding in the tar: other bytes, same version.
    other = tmp_path / "other.efpkg"
    other.write_bytes(wine_packages["1.0.0"].read_bytes() + b"\0" * 512)
    response = upload(api, other)
    assert response.status_code == 409, response.text
    assert "exists with sha256" in response.json()["error"]["message"]
    assert api.get("/v1/models/wine/1.0.0").json()["sha256"] == sha256_file(wine_packages["1.0.0"])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("not_a_tar", "not a model package"),
        ("tampered", "differs from the manifest"),
        ("traversal", "../"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(
    fleet: FleetService,
    api: httpx.Client,
    wine_packages: dict[str, Path],
    tmp_path: Path,
    kind: str,
    expected: str,
) -> None:
    bad = tmp_path / "bad.efpkg"
    if kind == "not_a_tar":
        bad.write_bytes(b"this is not a tar archive" * 100)
    elif kind == "tampered":
        retar(
            wine_packages["1.0.0"], bad, lambda m: m | {"model.onnx": m["model.onnx"][:-1] + b"x"}
        )
    else:
        retar(wine_packages["1.0.0"], bad, lambda m: m | {"../evil": b"x"})
    response = upload(api, bad)
    assert response.status_code == 422, response.text
    assert expected in response.json()["error"]["message"]
    with Session(fleet.engine) as session:
        assert session.exec(select(ModelVersion)).all() == []
    models_dir = fleet.settings.resolved_models_dir
    assert [p for p in models_dir.rglob("*") if p.is_file()] == []


def test_upload_needs_a_token(fleet: FleetService, wine_packages: dict[str, Path]) -> None:
    response = httpx.post(
        fleet.base_url + "/v1/models",
        content=wine_packages["1.0.0"].read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 401


def test_lab_mode_publish_signs_the_target_and_approves_nothing(
    api: httpx.Client, wine_packages: dict[str, Path]
) -> None:
    assert upload(api, wine_packages["1.0.0"]).status_code == 201
    published = api.post("/v1/models/wine/1.0.0/publish")
    assert published.status_code == 200, published.text
    assert published.json()["published"] is True
    assert published.json()["approved_by"] is None  # approval is a second person's step
    assert published.json()["review"]["state"] == "uploaded"
    targets = json.loads(api.get("/v1/repository/metadata/targets.json").content)["signed"]
    info = targets["targets"]["wine-1.0.0.efpkg"]
    assert info["hashes"]["sha256"] == sha256_file(wine_packages["1.0.0"])
    assert info["custom"] == {"name": "wine", "version": "1.0.0", "runtime": "onnx"}


def test_publishing_an_unknown_version_is_404(api: httpx.Client) -> None:
    response = api.post("/v1/models/wine/9.9.9/publish")
    assert response.status_code == 404
    assert "wine 9.9.9" in response.json()["error"]["message"]


def test_without_the_release_key_publish_says_how_to_sign_offline(
    make_fleet: MakeFleet, wine_packages: dict[str, Path]
) -> None:
    fleet = make_fleet(lab_mode=False)
    with admin_client(fleet) as api:
        assert upload(api, wine_packages["1.0.0"]).status_code == 201
        response = api.post("/v1/models/wine/1.0.0/publish")
    assert response.status_code == 409
    message = response.json()["error"]["message"]
    assert "edgefleet model sign" in message
    assert "targets-metadata" in message


def test_offline_signed_targets_are_accepted_and_publish_the_version(
    make_fleet: MakeFleet, lab: LabSetup, wine_packages: dict[str, Path]
) -> None:
    fleet = make_fleet(lab_mode=False)
    with admin_client(fleet) as api:
        assert upload(api, wine_packages["1.0.0"]).status_code == 201
        current = api.get("/v1/repository/metadata/targets.json").content
        release_key = keys.load_named(lab.keys_dir, "targets", None)
        signed = _sign_offline(current, wine_packages["1.0.0"], release_key)
        response = api.put("/v1/repository/targets-metadata", content=signed)
        assert response.status_code == 200, response.text
        assert response.json()["targets"] == ["wine-1.0.0.efpkg"]
        model = api.get("/v1/models/wine/1.0.0").json()
    assert model["published"] is True
    assert model["review"]["state"] == "uploaded"


def test_targets_signed_by_another_key_are_refused(
    make_fleet: MakeFleet, wine_packages: dict[str, Path]
) -> None:
    fleet = make_fleet(lab_mode=False)
    with admin_client(fleet) as api:
        assert upload(api, wine_packages["1.0.0"]).status_code == 201
        current = api.get("/v1/repository/metadata/targets.json").content
        forged = _sign_offline(current, wine_packages["1.0.0"], keys.generate_signer())
        response = api.put("/v1/repository/targets-metadata", content=forged)
        assert response.status_code == 422
        assert "not signed by targets's key" in response.json()["error"]["message"]
        assert api.get("/v1/models/wine/1.0.0").json()["published"] is False
        after = api.get("/v1/repository/metadata/targets.json").content
    assert after == current


def test_offline_targets_naming_a_package_not_in_the_registry_are_refused(
    make_fleet: MakeFleet, lab: LabSetup, wine_packages: dict[str, Path]
) -> None:
    fleet = make_fleet(lab_mode=False)
    with admin_client(fleet) as api:
        current = api.get("/v1/repository/metadata/targets.json").content
        release_key = keys.load_named(lab.keys_dir, "targets", None)
        signed = _sign_offline(current, wine_packages["1.1.0"], release_key)
        response = api.put("/v1/repository/targets-metadata", content=signed)
    assert response.status_code == 422
    assert "wine-1.1.0.efpkg" in response.json()["error"]["message"]


def _sign_offline(current: bytes, package: Path, signer: CryptoSigner) -> bytes:
    version = package.stem.split("-", 1)[1]
    md = tuf_metadata.sign_targets_offline(
        current,
        package,
        name=package.name,
        custom={"name": "wine", "version": version, "runtime": "onnx"},
        release_signer=signer,
        now=datetime.now(UTC),
        expiries=tuf_metadata.Expiries(),
    )
    return tuf_metadata.to_bytes(md)


def _member(package: Path, name: str) -> bytes:
    import tarfile

    with tarfile.open(package, "r:") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()
