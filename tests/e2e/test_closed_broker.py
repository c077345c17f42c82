"""The closed broker, for real: Mosquitto on what `edgefleet fleet broker-config` writes,
and the fleet on the settings it prints, in both modes (device certificates, and the
weaker per-device passwords).

The attacker is the strongest outsider there is: an enrolled device (``mallory``) with
its own valid credential, trying to speak for another (``victim``). Each forgery of the
issue that opened the broker is replayed and must be refused by the broker (MQTT 5
reason code 135) with nothing stored; a control message on mallory's own topics must
be granted and stored, so the test can fail.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlmodel import Session, select

from edgefleet.agent.identity import BROKER_PASSWORD_FILE, CA_FILE, CERT_FILE, KEY_FILE, enroll
from edgefleet.fleet.identity.broker_config import BrokerMode
from edgefleet.fleet.identity.broker_files import FLEET_PASSWORD_USER, BrokerSetup
from edgefleet.fleet.identity.ca import parse_csr
from edgefleet.fleet.service import FleetService
from edgefleet.fleet.store.tables import DeadLetter, Device, TelemetryRow
from edgefleet.shared.messages import StateMessage, encode
from edgefleet.shared.topics import ALERTS_TOPIC, Channel, device_topic
from tests.fleet.publisher import wait_until
from tests.support.closed_broker import (
    ClosedBroker,
    MqttTestClient,
    fleet_overrides,
    write_closed_setup,
)
from tests.support.fleet_fixtures import ADMIN_TOKEN, StartFleet
from tests.support.identity import csr_pem, p256_key
from tests.support.mqtt_fuzz import valid_payload
from tests.support.tls_fleet import device_ca

NOT_AUTHORIZED = 135  # MQTT 5 reason codes
GRANTED = {0, 16}  # success, and "no matching subscribers" (which is a success too)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@dataclass
class Closed:
    mode: BrokerMode
    setup: BrokerSetup
    broker: ClosedBroker
    fleet: FleetService
    admin: httpx.Client
    ids_dir: Path

    def enroll(self, device_id: str) -> Path:
        """Enroll ``device_id`` the way an agent does; its identity directory."""
        token = self.admin.post("/v1/enrollment-tokens", json={"device_id": device_id})
        assert token.status_code == 201, token.text
        identity_dir = self.ids_dir / device_id
        enroll(
            self.fleet.base_url,
            token.json()["token"],
            device_id=device_id,
            identity_dir=identity_dir,
        )
        return identity_dir

    def device(self, identity_dir: Path, *, client_id: str | None = None) -> MqttTestClient:
        """A client on the device listener with the device's own credential (not yet
        connected)."""
        device_id = identity_dir.name
        port = self.setup.device.port
        ca = identity_dir / CA_FILE
        if self.mode is BrokerMode.MTLS:
            return MqttTestClient(
                port,
                ca=ca,
                client_id=client_id or device_id,
                cert=identity_dir / CERT_FILE,
                key=identity_dir / KEY_FILE,
            )
        return MqttTestClient(
            port,
            ca=ca,
            client_id=client_id or device_id,
            username=device_id,
            password=(identity_dir / BROKER_PASSWORD_FILE).read_text(),
        )

    def connected(self, identity_dir: Path, *, client_id: str | None = None) -> MqttTestClient:
        """A connected device client. With passwords the broker knows a device only once
        the fleet's keeper has rewritten the password file and reloaded it, a moment
        after the enrollment answered, so a refusal is retried for a few seconds."""
        deadline = time.monotonic() + 15
        while True:
            client = self.device(identity_dir, client_id=client_id)
            if client.connect():
                return client
            client.close()
            assert time.monotonic() < deadline, (
                f"{identity_dir.name} could not connect:\n{self.broker.log()}"
            )
            time.sleep(0.2)

    def fleet_client(self) -> MqttTestClient:
        """A connected client with the fleet's own broker credential, on its listener."""
        layout = self.setup.layout
        if self.mode is BrokerMode.MTLS:
            client = MqttTestClient(
                self.setup.fleet.port,
                ca=layout.ca,
                client_id="fleet-probe",
                cert=layout.fleet_cert,
                key=layout.fleet_key,
            )
        else:
            client = MqttTestClient(
                self.setup.fleet.port,
                ca=layout.ca,
                client_id="fleet-probe",
                username=FLEET_PASSWORD_USER,
                password=layout.fleet_password.read_text().strip(),
            )
        assert client.connect()
        return client

    def stored(self, device_id: str) -> tuple[Device | None, list[TelemetryRow]]:
        with Session(self.fleet.engine) as session:
            device = session.get(Device, device_id)
            rows = session.exec(
                select(TelemetryRow).where(TelemetryRow.device_id == device_id)
            ).all()
            return device, list(rows)

    def dead_letters(self) -> list[DeadLetter]:
        with Session(self.fleet.engine) as session:
            return list(session.exec(select(DeadLetter)).all())


@pytest.fixture(params=[BrokerMode.MTLS, BrokerMode.PASSWORD], ids=["mtls", "password"])
def closed(
    request: pytest.FixtureRequest, start_fleet: StartFleet, tmp_path: Path
) -> Iterator[Closed]:
    mode: BrokerMode = request.param
    ca = device_ca(None, tmp_path / "fleet")  # the CA the fleet below opens
    setup = write_closed_setup(tmp_path / "broker", ca, mode)
    broker = ClosedBroker(tmp_path / "mosquitto", setup)
    broker.start()
    settings = fleet_overrides(setup)
    fleet = start_fleet(
        str(settings.pop("broker_url")),
        **settings,
        lab_mode=True,
        admin_token=ADMIN_TOKEN,
        device_identity_cache_s=0.2,
        broker_reload_command=broker.reload_command,
        broker_sync_interval_s=3600.0,
    )
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=fleet.base_url, headers=headers, timeout=20) as admin:
        yield Closed(mode, setup, broker, fleet, admin, tmp_path / "ids")
    fleet.stop()
    broker.stop()


def test_a_device_publishes_on_its_own_topics_and_is_stored(closed: Closed) -> None:
    mallory = closed.connected(closed.enroll("mallory"))
    assert (
        mallory.publish(
            device_topic("mallory", Channel.STATE), valid_payload(Channel.STATE, "mallory", 1)
        )
        == 0
    )
    assert (
        mallory.publish(
            device_topic("mallory", Channel.TELEMETRY),
            valid_payload(Channel.TELEMETRY, "mallory", 2),
        )
        == 0
    )
    wait_until(lambda: len(closed.stored("mallory")[1]) == 1, what="mallory's telemetry stored")
    mallory.close()


FORGERIES = {
    "telemetry under the victim's id": (Channel.TELEMETRY, "victim"),
    "deployment events for the victim": (Channel.EVENTS, "victim"),
    "a retained state keeping the victim offline": (Channel.STATE, "victim"),
    "a state registering a device that does not exist": (Channel.STATE, "ghost"),
    "a drift window raising fleet alerts": (Channel.DRIFT, "victim"),
    "a desired state for the victim": (Channel.DESIRED, "victim"),
    "a desired state for itself": (Channel.DESIRED, "mallory"),
}


def test_every_forgery_of_another_device_is_refused_by_the_broker_and_nothing_is_stored(
    closed: Closed,
) -> None:
    victim_dir = closed.enroll("victim")
    mallory = closed.connected(closed.enroll("mallory"))
    for what, (channel, device_id) in FORGERIES.items():
        payload = (
            valid_payload(channel, device_id, 10**6)
            if channel is not Channel.DESIRED
            else b'{"forged": true}'
        )
        rc = mallory.publish(device_topic(device_id, channel), payload, retain=True)
        assert rc == NOT_AUTHORIZED, f"{what}: reason code {rc}"
    assert mallory.publish(ALERTS_TOPIC, b'{"forged": true}') == NOT_AUTHORIZED
    # The control: the same client on its own topic is granted and stored.
    assert (
        mallory.publish(
            device_topic("mallory", Channel.TELEMETRY),
            valid_payload(Channel.TELEMETRY, "mallory", 1),
        )
        == 0
    )
    wait_until(lambda: len(closed.stored("mallory")[1]) == 1, what="the control stored")
    assert closed.stored("victim") == (None, [])
    assert closed.stored("ghost") == (None, [])
    # On its own topics the schemas bound what it says: a 1 MB hardware string is
    # dead-lettered, not served.
    huge = StateMessage(device_id="mallory", seq=2, ts=datetime.now(UTC), online=True)
    oversized = encode(huge).replace(b'"hardware":""', b'"hardware":"' + b"x" * 1_000_000 + b'"')
    assert len(oversized) > 1_000_000
    assert mallory.publish(device_topic("mallory", Channel.STATE), oversized) == 0
    wait_until(
        lambda: any(d.topic.endswith("mallory/state") for d in closed.dead_letters()),
        what="the oversized state dead-lettered",
    )
    device = closed.stored("mallory")[0]
    assert device is not None
    assert device.hardware == ""
    # Nothing retained reaches the victim either: it reads its desired topic and gets
    # only what the fleet publishes there.
    victim = closed.connected(victim_dir)
    assert victim.subscribe(device_topic("victim", Channel.DESIRED)) == [1]
    fleet = closed.fleet_client()
    assert (
        fleet.publish(device_topic("victim", Channel.DESIRED), b'{"from": "fleet"}', retain=True)
        == 0
    )
    wait_until(lambda: len(victim.received) == 1, what="the fleet's desired state delivered")
    assert victim.received[0].payload == b'{"from": "fleet"}'
    assert fleet.publish(ALERTS_TOPIC, b'{"from": "fleet"}') in GRANTED
    for client in (mallory, victim, fleet):
        client.close()


def test_a_device_reads_nothing_of_another_device(closed: Closed) -> None:
    victim = closed.connected(closed.enroll("victim"))
    mallory = closed.connected(closed.enroll("mallory"))
    mallory.subscribe("#")
    mallory.subscribe(device_topic("victim", Channel.DESIRED))
    fleet = closed.fleet_client()
    assert (
        fleet.publish(device_topic("victim", Channel.DESIRED), b'{"for": "victim"}', retain=True)
        == 0
    )
    assert (
        fleet.publish(device_topic("mallory", Channel.DESIRED), b'{"for": "mallory"}', retain=True)
        == 0
    )
    assert (
        victim.publish(
            device_topic("victim", Channel.TELEMETRY), valid_payload(Channel.TELEMETRY, "victim", 1)
        )
        == 0
    )
    # mallory's own desired state arrives (so its subscriptions work); nothing else does.
    wait_until(lambda: len(mallory.received) >= 1, what="mallory's own desired state")
    wait_until(lambda: len(closed.stored("victim")[1]) == 1, what="the victim's telemetry stored")
    assert {m.topic for m in mallory.received} == {device_topic("mallory", Channel.DESIRED)}
    for client in (mallory, victim, fleet):
        client.close()


def test_taking_over_a_client_id_does_not_disturb_the_device(closed: Closed) -> None:
    victim_dir = closed.enroll("victim")
    victim = closed.connected(victim_dir)
    victim.subscribe(device_topic("victim", Channel.DESIRED))
    # mallory asks for the victim's client id; the broker gives it its own instead.
    intruder = closed.connected(closed.enroll("mallory"), client_id="victim")
    fleet = closed.fleet_client()
    fleet.publish(device_topic("victim", Channel.DESIRED), b'{"for": "victim"}', retain=True)
    wait_until(lambda: len(victim.received) == 1, what="the victim still served")
    assert victim.disconnects == 0
    assert intruder.received == []
    for client in (victim, intruder, fleet):
        client.close()


def test_no_credential_or_another_cas_cannot_connect(closed: Closed, tmp_path: Path) -> None:
    identity_dir = closed.enroll("victim")
    ca = identity_dir / CA_FILE
    port = closed.setup.device.port
    assert not MqttTestClient(port, ca=ca, client_id="anonymous").connect()
    # The fleet listener takes no device credential either.
    assert not MqttTestClient(closed.setup.fleet.port, ca=ca, client_id="anon").connect()
    if closed.mode is BrokerMode.PASSWORD:
        wrong = MqttTestClient(
            port, ca=ca, client_id="victim", username="victim", password="guess-0123456789"
        )
        assert not wrong.connect()
        return
    # A certificate for the same device id from a CA of the attacker's own.
    other_ca = device_ca(None, tmp_path / "other")
    key = p256_key()
    issued = other_ca.sign(
        parse_csr(csr_pem(key, "victim")), lifetime=timedelta(days=1), now=datetime.now(UTC)
    )
    (tmp_path / "forged.pem").write_text(issued.pem)
    (tmp_path / "forged.key").write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    forged = MqttTestClient(
        port, ca=ca, client_id="victim", cert=tmp_path / "forged.pem", key=tmp_path / "forged.key"
    )
    assert not forged.connect()
    # And the victim's own certificate is useless without its key.
    with pytest.raises(ssl.SSLError):
        MqttTestClient(
            port,
            ca=ca,
            client_id="victim",
            cert=identity_dir / CERT_FILE,
            key=tmp_path / "forged.key",
        )


def test_a_revoked_device_is_refused_by_the_fleet_at_once_and_by_the_broker_after_reload(
    closed: Closed,
) -> None:
    victim_dir = closed.enroll("victim")
    victim = closed.connected(victim_dir)
    assert (
        victim.publish(
            device_topic("victim", Channel.TELEMETRY), valid_payload(Channel.TELEMETRY, "victim", 1)
        )
        == 0
    )
    wait_until(lambda: len(closed.stored("victim")[1]) == 1, what="telemetry before revocation")
    keeper = closed.fleet.broker_keeper
    assert keeper is not None
    reloads, syncs = closed.broker.reloads(), keeper.syncs
    revoked = closed.admin.post("/v1/identities/victim/revoke", json={"reason": "stolen"})
    assert revoked.status_code == 200, revoked.text
    # The fleet rewrote the broker's files and reloaded it by itself.
    wait_until(lambda: keeper.syncs > syncs, what="the broker files rewritten")
    closed.broker.wait_reloaded(reloads)
    if closed.mode is BrokerMode.MTLS:
        # Mosquitto checks a certificate at connect: the open connection stays, but what
        # it still sends is refused by the fleet.
        victim.publish(
            device_topic("victim", Channel.TELEMETRY),
            valid_payload(Channel.TELEMETRY, "victim", 2),
        )
        wait_until(
            lambda: any(
                "victim" in d.topic and "revoked" in d.error for d in closed.dead_letters()
            ),
            what="the in-flight message dead-lettered as revoked",
        )
    else:
        # The reload checks open connections against the new password file.
        wait_until(lambda: victim.disconnects > 0, what="the revoked device disconnected")
    assert len(closed.stored("victim")[1]) == 1
    victim.close()
    assert not closed.device(victim_dir).connect(), "a revoked device connected again"
