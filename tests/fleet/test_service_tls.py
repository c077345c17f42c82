"""The fleet served over HTTPS, and devices reading its repository with their own
certificate: a real uvicorn with TLS, real clients (httpx and the agent's own fetcher
and downloader), the device enrolled for real. Nothing shares a repository token."""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import ValidationError
from tuf.api import exceptions as tuf_errors

from edgefleet.agent.credentials import DeviceCredentials, fleet_tls_context
from edgefleet.agent.download import download
from edgefleet.agent.identity import enroll
from edgefleet.agent.trust import HeaderFetcher
from edgefleet.fleet.keys import LabSetup
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.shared.cli import main
from edgefleet.shared.device_auth import authorization
from tests.support.fleet_fixtures import ADMIN_TOKEN, MakeFleet, upload
from tests.support.identity import p256_key
from tests.support.tls_fleet import ServerFiles, device_ca, server_files


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """HTTPS does not depend on the database: SQLite only."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def tls(lab: LabSetup, tmp_path: Path) -> ServerFiles:
    return server_files(device_ca(lab.keys_dir, tmp_path / "fleet"), tmp_path / "pki", "fleet")


def https_fleet(make_fleet: MakeFleet, tls: ServerFiles, **overrides: object) -> FleetService:
    return make_fleet(
        api_tls_cert_file=tls.cert,
        api_tls_key_file=tls.key,
        repository_device_token=None,  # no shared token: devices sign their requests
        device_identity_cache_s=0.2,
        **overrides,
    )


@pytest.fixture
def fleet(make_fleet: MakeFleet, tls: ServerFiles) -> FleetService:
    return https_fleet(make_fleet, tls)


@pytest.fixture
def admin(fleet: FleetService, tls: ServerFiles) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(
        base_url=fleet.base_url, headers=headers, verify=str(tls.ca), timeout=20
    ) as client:
        yield client


def enrolled(
    fleet: FleetService,
    admin: httpx.Client,
    tls: ServerFiles,
    directory: Path,
    device_id: str = "cam-1",
) -> DeviceCredentials:
    token = admin.post("/v1/enrollment-tokens", json={}).json()["token"]
    enroll(
        fleet.base_url,
        token,
        device_id=device_id,
        identity_dir=directory,
        context=fleet_tls_context(None, tls.ca),
    )
    return DeviceCredentials(directory)


def test_the_api_is_served_over_https_only(fleet: FleetService, tls: ServerFiles) -> None:
    assert fleet.base_url.startswith("https://127.0.0.1:")
    assert httpx.get(f"{fleet.base_url}/healthz", verify=str(tls.ca)).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{fleet.base_url}/healthz")  # the system's CAs do not know this one
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{fleet.port}/healthz")


def test_an_enrolled_device_reads_the_repository_with_its_own_signature(
    fleet: FleetService,
    admin: httpx.Client,
    tls: ServerFiles,
    wine_packages: dict[str, Path],
    tmp_path: Path,
) -> None:
    assert upload(admin, wine_packages["1.0.0"]).status_code == 201
    assert admin.post("/v1/models/wine/1.0.0/publish").status_code == 200
    data = wine_packages["1.0.0"].read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    repository = f"{fleet.base_url}/v1/repository"
    credentials = enrolled(fleet, admin, tls, tmp_path / "identity")
    # The pinned CA verifies the fleet; the device presents its certificate if asked.
    context = credentials.tls_context()
    fetcher = HeaderFetcher(auth=credentials.authorization, ssl_context=context)

    timestamp = b"".join(fetcher.fetch(f"{repository}/metadata/timestamp.json"))
    assert b'"_type": "timestamp"' in timestamp or b'"_type":"timestamp"' in timestamp
    result = download(
        f"{repository}/targets/{sha256}.wine-1.0.0.efpkg",
        tmp_path / "wine.efpkg",
        expected_sha256=sha256,
        expected_length=len(data),
        auth=credentials.authorization,
        context=context,
        timeout_s=10,
    )
    assert result.path.read_bytes() == data

    with pytest.raises(tuf_errors.DownloadHTTPError, match="401"):
        b"".join(HeaderFetcher(ssl_context=context).fetch(f"{repository}/metadata/timestamp.json"))
    revoked = admin.post("/v1/identities/cam-1/revoke", json={"reason": "stolen"})
    assert revoked.status_code == 200
    time.sleep(0.3)  # device_identity_cache_s
    with pytest.raises(tuf_errors.DownloadHTTPError, match="401"):
        b"".join(fetcher.fetch(f"{repository}/metadata/timestamp.json"))
    url = f"{repository}/metadata/1.root.json"
    answer = httpx.get(url, headers=credentials.authorization("GET", url), verify=context)
    assert answer.status_code == 401
    assert "the identity of cam-1 is revoked" in answer.json()["error"]["message"]


def test_a_signature_made_for_another_path_or_by_another_key_is_refused(
    fleet: FleetService, admin: httpx.Client, tls: ServerFiles, tmp_path: Path
) -> None:
    credentials = enrolled(fleet, admin, tls, tmp_path / "identity")
    repository = f"{fleet.base_url}/v1/repository/metadata"
    context = credentials.tls_context()
    other = credentials.authorization("GET", f"{repository}/1.root.json")
    replayed = httpx.get(f"{repository}/timestamp.json", headers=other, verify=context)
    assert replayed.status_code == 401
    assert "does not verify" in replayed.json()["error"]["message"]
    der = credentials.certificate.public_bytes(Encoding.DER)
    forged = authorization(p256_key(), der, "GET", f"{repository}/timestamp.json", time.time())
    answer = httpx.get(
        f"{repository}/timestamp.json", headers={"Authorization": forged}, verify=context
    )
    assert answer.status_code == 401
    assert (
        httpx.get(
            f"{repository}/timestamp.json",
            headers=credentials.authorization("GET", f"{repository}/timestamp.json"),
            verify=context,
        ).status_code
        == 200
    )


def test_a_required_client_certificate_keeps_out_clients_without_one(
    make_fleet: MakeFleet, lab: LabSetup, tls: ServerFiles, tmp_path: Path
) -> None:
    fleet = https_fleet(
        make_fleet, tls, api_tls_client_ca_file=tls.ca, api_tls_client_cert="required"
    )
    url = f"{fleet.base_url}/healthz"
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=str(tls.ca))
    # Enrollment comes before the device has a certificate, so a replica that requires
    # one serves only enrolled devices; here an operator's client certificate enrolls.
    ca = device_ca(lab.keys_dir, tmp_path / "fleet")
    operator = server_files(ca, tmp_path / "operator", "operator", server_names=())
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(operator.cert, operator.key)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=fleet.base_url, headers=headers, verify=context) as admin:
        token = admin.post("/v1/enrollment-tokens", json={}).json()["token"]
    directory = tmp_path / "identity"
    enroll(fleet.base_url, token, device_id="cam-7", identity_dir=directory, context=context)
    # The enrolled device's own certificate, as its agent presents it, gets in.
    credentials = DeviceCredentials(directory)
    assert httpx.get(url, verify=credentials.tls_context()).status_code == 200


def test_bad_tls_files_fail_the_start_with_their_name(tmp_path: Path) -> None:
    settings = FleetSettings(
        data_dir=tmp_path / "fleet",
        api_port=0,
        api_tls_cert_file=tmp_path / "missing.pem",
        api_tls_key_file=tmp_path / "missing.key",
        audit_checkpoints=False,
    )
    with pytest.raises(RuntimeError, match=r"missing\.pem"):
        FleetService(settings, ingest=False).start()


@pytest.mark.parametrize(
    "fields",
    [
        {"api_tls_cert_file": "a.pem"},
        {"api_tls_key_file": "a.key"},
        {"api_tls_client_ca_file": "ca.pem"},
    ],
)
def test_incomplete_tls_settings_are_refused(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="api_tls"):
        FleetSettings(**fields)  # type: ignore[arg-type]


def test_the_cli_enrolls_and_renews_over_https_with_the_fleet_ca(
    fleet: FleetService,
    admin: httpx.Client,
    tls: ServerFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = admin.post("/v1/enrollment-tokens", json={}).json()["token"]
    directory = ["--device-id", "cam-3", "--identity-dir", str(tmp_path / "identity")]
    enroll_args = ["agent", "enroll", "--fleet", fleet.base_url, "--token", token, *directory]
    assert main(enroll_args) == 2  # the system's CAs do not know the fleet's
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
    assert main([*enroll_args, "--fleet-ca", str(tls.ca)]) == 0
    # Renewal needs no --fleet-ca: the device CA pinned at enrollment signed the server's.
    assert main(["agent", "renew", "--fleet", fleet.base_url, *directory[2:]]) == 0
    assert "renewed cam-3" in capsys.readouterr().out
