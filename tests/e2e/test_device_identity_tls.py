"""An enrolled device on a secured fleet: HTTPS, an mTLS broker listener, no shared token.

Everything is real and from the fleet's own device CA: the fleet serves HTTPS with a
server certificate of its CA; Mosquitto has an mTLS listener for devices (a device
certificate required, its CN the username) beside the plain one the fleet and the test's
subscriber use; the device enrolls over HTTPS and then uses only its identity: its
certificate on the broker, its signature on the repository, its timer to renew.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.credentials import fleet_tls_context
from edgefleet.agent.daemon import Agent
from edgefleet.agent.identity import enroll
from edgefleet.fleet.identity.ca import DeviceCA
from edgefleet.fleet.keys import LabSetup
from edgefleet.fleet.service import FleetService
from edgefleet.shared.hashing import sha256_file
from edgefleet.shared.messages import EventKind
from edgefleet.simulators.models import TrainedModel
from tests.fleet.publisher import wait_until
from tests.support.agent import Subscriber, agent_config, infer_until
from tests.support.fleet_fixtures import ADMIN_TOKEN, StartFleet, upload
from tests.support.mosquitto import MosquittoBroker
from tests.support.tls_fleet import ServerFiles, device_ca, mtls_broker, server_files


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@dataclass
class Secured:
    fleet: FleetService
    broker: MosquittoBroker
    device_port: int
    ca: DeviceCA
    files: ServerFiles
    admin: httpx.Client

    def enroll(self, device_id: str, identity_dir: Path) -> None:
        token = self.admin.post("/v1/enrollment-tokens", json={"device_id": device_id})
        assert token.status_code == 201, token.text
        context = fleet_tls_context(None, self.files.ca)  # before enrolling: out of band
        enroll(
            self.fleet.base_url,
            token.json()["token"],
            device_id=device_id,
            identity_dir=identity_dir,
            context=context,
        )

    def agent_config(self, tmp_path: Path, device_id: str, **fields: object) -> AgentConfig:
        """An enrolled agent on the mTLS listener; nothing in it but where to go."""
        data_dir = tmp_path / f"data-{device_id}"
        self.enroll(device_id, data_dir / "identity")
        identity: dict[str, object] = {
            "use": "on",
            "fleet_url": self.fleet.base_url,
            "renew_retry_min_s": 0.1,
            "renew_retry_max_s": 0.5,
        }
        identity.update(fields.pop("identity", {}))  # type: ignore[call-overload]
        return agent_config(
            tmp_path,
            self.broker,
            device_id,
            broker={"url": f"mqtts://127.0.0.1:{self.device_port}", "keepalive_s": 5},
            identity=identity,
            **fields,
        )


@pytest.fixture
def secured(start_fleet: StartFleet, lab: LabSetup, tmp_path: Path) -> Iterator[Secured]:
    ca = device_ca(lab.keys_dir, tmp_path / "fleet")
    files = server_files(ca, tmp_path / "pki", "server")
    broker, device_port = mtls_broker(tmp_path / "mosquitto", files)
    broker.start()
    fleet = start_fleet(
        broker.url,
        keys_dir=lab.keys_dir,
        lab_mode=True,
        admin_token=ADMIN_TOKEN,
        publish_timeout_s=5.0,
        api_tls_cert_file=files.cert,
        api_tls_key_file=files.key,
        require_device_identity=True,
        device_identity_cache_s=0.2,
    )
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(
        base_url=fleet.base_url, headers=headers, verify=str(files.ca), timeout=20
    ) as admin:
        yield Secured(fleet, broker, device_port, ca, files, admin)
    broker.stop()


def _events(sub: Subscriber) -> set[int]:
    return {r.doc["seq"] for r in sub.on("events")}


def test_renewal_keeps_the_device_connected_with_its_new_certificate_and_loses_nothing(
    secured: Secured,
    start_agent: Callable[[AgentConfig], Agent],
    tmp_path: Path,
    unique_id: str,
) -> None:
    device_id = f"cam-{unique_id}"
    config = secured.agent_config(tmp_path, device_id)
    sub = Subscriber(secured.broker.port, [f"edgefleet/v1/devices/{device_id}/events"])
    try:
        agent = start_agent(config)
        wait_until(lambda: agent.connected, what="the agent to connect over mTLS")
        assert agent.credentials is not None
        assert agent.renewer is not None
        assert agent.link is not None
        old = agent.credentials.certificate
        # Messages in flight while the link reconnects: queued before, during and after.
        seqs = [agent.publish_event(EventKind.INFO, reason=f"before {i}") for i in range(200)]
        agent.renewer.renew_now()
        seqs += [agent.publish_event(EventKind.INFO, reason=f"during {i}") for i in range(200)]
        wait_until(
            lambda: agent.renewer is not None and agent.renewer.renewals == 1, what="the renewal"
        )
        wait_until(
            lambda: agent.link is not None and agent.link.connects_total == 2 and agent.connected,
            what="the link to reconnect",
        )
        seqs += [agent.publish_event(EventKind.INFO, reason=f"after {i}") for i in range(50)]
        assert None not in seqs
        wait_until(
            lambda: set(seqs) <= _events(sub),
            timeout_s=20,
            what="every queued event to reach the broker",
        )
        new = agent.credentials.certificate
        assert new.serial_number != old.serial_number
        assert new.public_key() == old.public_key()
        identity = secured.admin.get(f"/v1/identities/{device_id}").json()
        assert identity["cert_serial"] == format(new.serial_number, "x")

        # The reconnected link presents the new certificate: once the broker refuses the
        # old one (a CRL listing its serial), the device still gets in.
        crl = tmp_path / "superseded.crl.pem"
        crl.write_bytes(
            secured.ca.crl(
                [(format(old.serial_number, "x"), datetime.now(UTC))], now=datetime.now(UTC)
            )
        )
        crl.chmod(0o644)
        secured.broker.extra_config += f"crlfile {crl}\n"
        secured.broker.stop()
        secured.broker.start()
        wait_until(
            lambda: agent.link is not None and agent.link.connects_total == 3 and agent.connected,
            timeout_s=15,
            what="the link to come back with the new certificate",
        )
        sub.close()
        sub = Subscriber(secured.broker.port, [f"edgefleet/v1/devices/{device_id}/events"])
        last = agent.publish_event(EventKind.INFO, reason="after the restart")
        wait_until(lambda: last in _events(sub), what="an event over the new connection")
    finally:
        sub.close()


def test_a_certificate_on_the_brokers_crl_no_longer_connects(
    secured: Secured,
    start_agent: Callable[[AgentConfig], Agent],
    tmp_path: Path,
    unique_id: str,
) -> None:
    # The counterpart of the test above, so that one cannot pass for a broker that
    # ignores its CRL. Without a fleet URL there is no renewal timer either.
    device_id = f"cam-{unique_id}"
    config = secured.agent_config(tmp_path, device_id, identity={"fleet_url": None})
    agent = start_agent(config)
    assert agent.renewer is None
    wait_until(lambda: agent.connected, what="the agent to connect over mTLS")
    certificate = x509.load_pem_x509_certificate(
        (config.identity_dir / "device.cert.pem").read_bytes()
    )
    crl = tmp_path / "revoked.crl.pem"
    serial = format(certificate.serial_number, "x")
    crl.write_bytes(secured.ca.crl([(serial, datetime.now(UTC))], now=datetime.now(UTC)))
    crl.chmod(0o644)
    secured.broker.extra_config += f"crlfile {crl}\n"
    secured.broker.stop()
    secured.broker.start()
    threading.Event().wait(2.0)  # many reconnect attempts (0.05-0.3 s apart), all refused
    assert not agent.connected
    assert agent.link is not None
    assert agent.link.connects_total == 1


def test_an_enrolled_agent_installs_an_update_signing_its_repository_requests(
    secured: Secured,
    lab: LabSetup,
    start_agent: Callable[[AgentConfig], Agent],
    fast_wine_packages: dict[str, Path],
    wine_model: TrainedModel,
    tmp_path: Path,
    unique_id: str,
) -> None:
    device_id = f"cam-{unique_id}"
    factory, upgrade = fast_wine_packages["1.0.0"], fast_wine_packages["1.1.0"]
    config = secured.agent_config(
        tmp_path,
        device_id,
        model={"path": str(factory), "name": "wine", "version": "1.0.0"},
        update={
            "enabled": True,
            "repository_url": f"{secured.fleet.base_url}/v1/repository",
            "trust_dir": str(lab.bundle_dir),
            "tick_s": 0.05,
            "policy": {"retry_base_s": 0.05, "retry_max_s": 0.2},
        },
    )
    assert secured.fleet.settings.repository_device_token is None  # nothing shared
    agent = start_agent(config)
    stop = threading.Event()
    traffic = threading.Thread(target=infer_until, args=(agent, wine_model, stop), daemon=True)
    traffic.start()
    api = secured.admin
    try:
        for package in (factory, upgrade):
            assert upload(api, package).status_code == 201
        assert api.post("/v1/models/wine/1.1.0/publish").status_code == 200
        # require_device_identity: the fleet takes the birth state of an enrolled device.
        wait_until(
            lambda: api.get(f"/v1/devices/{device_id}").status_code == 200,
            what="the fleet to register the enrolled device",
        )
        desired = api.put(
            f"/v1/devices/{device_id}/desired", json={"model": "wine", "version": "1.1.0"}
        )
        assert desired.status_code == 200, desired.text
        wait_until(
            lambda: (
                (api.get(f"/v1/devices/{device_id}/deployments").json().get("current") or {}).get(
                    "outcome"
                )
                == "committed"
            ),
            timeout_s=60,
            what="the update to commit",
        )
        assert agent.updates is not None
        assert agent.updates.store.active() == sha256_file(upgrade)
    finally:
        stop.set()
        traffic.join(5)
