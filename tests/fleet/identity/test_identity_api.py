"""Enrollment, renewal and revocation over REST, on SQLite and PostgreSQL.

The real app (`create_app`) on a real database, through its request guard: the public
routes are called without any API token, the operator routes with one. Every change
must leave its audit entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.identity.service import IdentityService
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.governance_tables import AuditRow
from edgefleet.shared.identity import key_fingerprint
from tests.support.identity import csr_pem, p256_key
from tests.support.people import user_token


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(engine: Engine, tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    settings = FleetSettings(data_dir=tmp_path / "fleet", database_url=str(engine.url))
    app = create_app(settings, engine=engine)
    app.state.identity = IdentityService(
        engine,
        tmp_path / "fleet" / "device-ca",
        passphrase=b"test passphrase",
        allow_unencrypted=False,
        cert_lifetime=timedelta(days=90),
        clock=clock,
    )
    with TestClient(app) as client:
        yield client


@pytest.fixture
def operator(engine: Engine) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(engine, 'olga', 'operator')}"}


def _token(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/enrollment-tokens", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _enroll(client: TestClient, token: str, key: ec.EllipticCurvePrivateKey, device: str) -> Any:
    return client.post("/v1/enroll", json={"token": token, "csr_pem": csr_pem(key, device)})


def _audit(engine: Engine, action: str) -> list[AuditRow]:
    with Session(engine) as session:
        return list(session.exec(select(AuditRow).where(col(AuditRow.action) == action)).all())


def test_a_device_enrolls_once_with_a_token_and_is_audited_as_itself(
    client: TestClient, operator: dict[str, str], engine: Engine
) -> None:
    created = _token(client, operator)
    key = p256_key()
    response = _enroll(client, created["token"], key, "cam-1")
    assert response.status_code == 200, response.text
    issued = response.json()
    cert = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(client.get("/v1/identity/ca.pem").content)
    cert.verify_directly_issued_by(ca)
    assert issued["ca_pem"] == ca.public_bytes(Encoding.PEM).decode()
    assert issued["key_fingerprint"] == key_fingerprint(key.public_key())
    identity = client.get("/v1/identities/cam-1", headers=operator).json()
    assert identity["state"] == "active"
    assert identity["cert_serial"] == issued["serial"]
    again = _enroll(client, created["token"], p256_key(), "cam-2")
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "enrollment_refused"
    assert "used already" in again.json()["error"]["message"]
    (made,) = _audit(engine, "enrollment_token.create")
    assert (made.actor_name, made.after["prefix"]) == ("olga", created["prefix"])  # type: ignore[index]
    (enrolled,) = _audit(engine, "identity.enroll")
    assert (enrolled.actor_kind, enrolled.actor_id, enrolled.object_id) == (
        "device",
        "cam-1",
        "cam-1",
    )
    assert enrolled.after["serial"] == issued["serial"]  # type: ignore[index]


def test_an_expired_token_is_refused(
    client: TestClient, operator: dict[str, str], clock: Clock
) -> None:
    created = _token(client, operator, expires_in_s=60)
    clock.now += timedelta(seconds=61)
    response = _enroll(client, created["token"], p256_key(), "cam-1")
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]
    assert client.get("/v1/identities/cam-1", headers=operator).status_code == 404


def test_an_unknown_token_is_refused(client: TestClient) -> None:
    response = _enroll(client, "efe_00000000_" + "x" * 43, p256_key(), "cam-1")
    assert response.status_code == 401
    assert "not known" in response.json()["error"]["message"]


def test_a_pre_authorised_device_enrolls_only_with_its_key(
    client: TestClient, operator: dict[str, str], engine: Engine
) -> None:
    key = p256_key()
    fingerprint = key_fingerprint(key.public_key())
    created = _token(client, operator, device_id="cam-9", key_fingerprint=fingerprint)
    pending = client.get("/v1/identities/cam-9", headers=operator).json()
    assert (pending["state"], pending["key_fingerprint"]) == ("pending", fingerprint)
    wrong_key = _enroll(client, created["token"], p256_key(), "cam-9")
    assert wrong_key.status_code == 403
    assert wrong_key.json()["error"]["code"] == "key_mismatch"
    wrong_id = _enroll(client, created["token"], key, "cam-8")
    assert wrong_id.status_code == 403
    assert _enroll(client, created["token"], key, "cam-9").status_code == 200
    assert client.get("/v1/identities/cam-9", headers=operator).json()["state"] == "active"
    assert _audit(engine, "identity.enroll")[0].before == {
        "state": "pending",
        "serial": None,
        "key_fingerprint": fingerprint,
        "not_after": None,
    }


def test_revocation_puts_the_serial_on_the_crl_and_is_final(
    client: TestClient, operator: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    key = p256_key()
    issued = _enroll(client, _token(client, operator)["token"], key, "cam-1").json()
    response = client.post(
        "/v1/identities/cam-1/revoke", json={"reason": "stolen"}, headers=operator
    )
    assert response.status_code == 200, response.text
    assert (response.json()["state"], response.json()["revoke_reason"]) == ("revoked", "stolen")
    crl = x509.load_pem_x509_crl(client.get("/v1/identity/crl").content)
    assert crl.get_revoked_certificate_by_serial_number(int(issued["serial"], 16)) is not None
    on_disk = x509.load_pem_x509_crl((tmp_path / "fleet" / "device-ca" / "crl.pem").read_bytes())
    assert on_disk.get_revoked_certificate_by_serial_number(int(issued["serial"], 16))
    (revoked,) = _audit(engine, "identity.revoke")
    assert (revoked.actor_name, revoked.after["reason"]) == ("olga", "stolen")  # type: ignore[index]
    again = client.post("/v1/identities/cam-1/revoke", json={"reason": "x"}, headers=operator)
    assert again.status_code == 409
    renewal = client.post(
        "/v1/identity/renew",
        json={"certificate_pem": issued["certificate_pem"], "csr_pem": csr_pem(key, "cam-1")},
    )
    assert renewal.status_code == 409
    assert "revoked" in renewal.json()["error"]["message"]
    token = client.post("/v1/enrollment-tokens", json={"device_id": "cam-1"}, headers=operator)
    assert token.status_code == 409


def test_renewal_over_the_current_certificate(
    client: TestClient, operator: dict[str, str], engine: Engine, clock: Clock
) -> None:
    key = p256_key()
    first = _enroll(client, _token(client, operator)["token"], key, "cam-1").json()
    clock.now += timedelta(days=60)
    body = {"certificate_pem": first["certificate_pem"], "csr_pem": csr_pem(key, "cam-1")}
    renewed = client.post("/v1/identity/renew", json=body)
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["serial"] != first["serial"]
    identity = client.get("/v1/identities/cam-1", headers=operator).json()
    assert identity["cert_serial"] == renewed.json()["serial"]
    (audited,) = _audit(engine, "identity.renew")
    assert (audited.actor_kind, audited.actor_id) == ("device", "cam-1")
    stale = client.post("/v1/identity/renew", json=body)  # the superseded certificate
    assert stale.status_code == 401
    other_key = {
        "certificate_pem": renewed.json()["certificate_pem"],
        "csr_pem": csr_pem(p256_key(), "cam-1"),
    }
    assert client.post("/v1/identity/renew", json=other_key).status_code == 403


def test_the_public_routes_need_no_api_token_but_operator_routes_do(
    client: TestClient, engine: Engine
) -> None:
    assert client.get("/v1/identity/ca.pem").status_code == 200
    assert client.post("/v1/enrollment-tokens", json={}).status_code == 401
    viewer = {"Authorization": f"Bearer {user_token(engine, 'vic', 'viewer')}"}
    refused = client.post("/v1/enrollment-tokens", json={}, headers=viewer)
    assert refused.status_code == 403
    assert "device:enroll" in refused.json()["error"]["message"]
    bad = client.post("/v1/enroll", json={"token": "x" * 20, "csr_pem": "not a csr"})
    assert bad.status_code == 422
    assert "bad CSR" in bad.json()["error"]["message"]


def test_a_fingerprint_without_a_device_id_is_refused(
    client: TestClient, operator: dict[str, str]
) -> None:
    body = {"key_fingerprint": "sha256:" + "0" * 64}
    assert client.post("/v1/enrollment-tokens", json=body, headers=operator).status_code == 422


def test_without_a_passphrase_the_ca_is_unavailable_and_says_why(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_KEY_PASSPHRASE", raising=False)
    settings = FleetSettings(data_dir=tmp_path / "plain", database_url=str(engine.url))
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.get("/v1/identity/ca.pem")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "identity_unavailable"
        assert "EDGEFLEET_KEY_PASSPHRASE" in response.json()["error"]["message"]
    assert not (tmp_path / "plain" / "device-ca" / "ca.bundle.pem").exists()
    lab = FleetSettings(data_dir=tmp_path / "lab", database_url=str(engine.url), lab_mode=True)
    with TestClient(create_app(lab, engine=engine)) as client:
        assert client.get("/v1/identity/ca.pem").status_code == 200
    assert (tmp_path / "lab" / "device-ca" / "ca.bundle.pem").exists()
