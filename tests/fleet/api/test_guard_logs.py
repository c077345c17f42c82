"""The ids of a request reach its JSON log lines: `RequestGuard`'s request id on every
request, and the device id once the repository's device check has verified a signature
(a real device CA, a really enrolled device)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlmodel import Session

from edgefleet.fleet.api.app import create_app
from edgefleet.fleet.api.update_deps import RepositoryClient
from edgefleet.fleet.identity.device_auth import DeviceAuthenticator
from edgefleet.fleet.identity.service import IdentityService, device_recorder
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.shared.device_auth import authorization
from edgefleet.shared.identity import EnrollRequest
from edgefleet.shared.logs import DEVICE_ID, REQUEST_ID, JsonFormatter
from tests.support.identity import csr_pem, p256_key

probe_log = logging.getLogger("tests.probe")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    probe_log.addHandler(handler)
    probe_log.setLevel(logging.INFO)
    yield stream
    probe_log.removeHandler(handler)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    create_all(engine)
    app = create_app(FleetSettings(), engine=engine)

    def sync_probe() -> dict[str, str]:  # served from a worker thread
        probe_log.info("sync probe")
        return {}

    async def async_probe() -> dict[str, str]:  # served on the event loop
        probe_log.info("async probe")
        return {}

    def device_probe(caller: RepositoryClient) -> dict[str, str]:
        probe_log.info("device probe")
        return {}

    app.add_api_route("/probe/sync", sync_probe)
    app.add_api_route("/probe/async", async_probe)
    # Under the repository's prefix, as the device check expects of what it guards.
    app.add_api_route("/v1/repository/probe", device_probe)
    with TestClient(app) as test_client:
        yield test_client
    engine.dispose()


def _logged(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("path", ["/probe/sync", "/probe/async"])
def test_the_clients_request_id_is_on_the_lines_the_request_logs(
    client: TestClient, lines: io.StringIO, path: str
) -> None:
    response = client.get(path, headers={"X-Request-ID": "req-abc.1"})
    assert response.headers["X-Request-ID"] == "req-abc.1"
    [line] = _logged(lines)
    assert line["request_id"] == "req-abc.1"
    assert line["logger"] == "tests.probe"


def test_a_generated_request_id_is_the_one_echoed(client: TestClient, lines: io.StringIO) -> None:
    response = client.get("/probe/sync", headers={"X-Request-ID": "bad id with spaces"})
    echoed = response.headers["X-Request-ID"]
    assert echoed != "bad id with spaces"
    assert _logged(lines)[0]["request_id"] == echoed


def test_the_request_id_does_not_outlive_its_request(client: TestClient) -> None:
    client.get("/probe/sync", headers={"X-Request-ID": "req-1"})
    assert REQUEST_ID.get() is None


def _enrolled(
    client: TestClient, ca_dir: Path, device_id: str
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A device CA for the app's device check, and ``device_id`` enrolled with it: its
    key and certificate DER."""
    engine = client.app.state.context.engine  # type: ignore[attr-defined]
    identities = IdentityService(
        engine, ca_dir, passphrase=b"pass", allow_unencrypted=False, cert_lifetime=timedelta(days=1)
    )
    client.app.state.device_authenticator = DeviceAuthenticator(  # type: ignore[attr-defined]
        ca=identities.ca, engine=engine, identity_ttl_s=60, max_skew_s=300
    )
    key = p256_key()
    operator = device_recorder("ops", request_id=None, source=None)
    with Session(identities.engine) as session:
        token = identities.create_token(session, operator, created_by="ops", ttl=timedelta(hours=1))
        issued = identities.enroll(
            session,
            EnrollRequest(token=token.token, csr_pem=csr_pem(key, device_id)),
            request_id=None,
            source=None,
        )
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    return key, certificate.public_bytes(Encoding.DER)


def test_a_signed_device_request_logs_the_device_it_proved(
    client: TestClient, lines: io.StringIO, tmp_path: Path
) -> None:
    key, der = _enrolled(client, tmp_path / "ca", "cam-42")
    url = "http://testserver/v1/repository/probe"
    signed = authorization(key, der, "GET", url, time.time())
    response = client.get(url, headers={"Authorization": signed, "X-Request-ID": "req-dev"})
    assert response.status_code == 200, response.text
    [line] = _logged(lines)
    assert (line["device_id"], line["request_id"]) == ("cam-42", "req-dev")

    client.get("/probe/sync", headers={"X-Request-ID": "req-next"})  # not a device's
    assert "device_id" not in _logged(lines)[1]
    assert DEVICE_ID.get() is None
