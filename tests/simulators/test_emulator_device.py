"""The emulated device's pure protocol: seqs, desired-state verification, reports."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from edgefleet.shared.messages import (
    EventKind,
    EventMessage,
    ModelRef,
    StateMessage,
    StoredMessage,
    TelemetryMessage,
)
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.director import (
    DesiredBody,
    DesiredTarget,
    sign_desired,
    trusted_keys,
)
from edgefleet.shared.signing.tufapi import CryptoSigner
from edgefleet.shared.topics import Channel, device_topic
from edgefleet.simulators.emulator.device import (
    Action,
    DeviceSpec,
    EmulatedDevice,
    Fetch,
    Publish,
    artifact_problem,
)

NOW_S = 1_780_000_000.0
NOW = datetime.fromtimestamp(NOW_S, UTC)
ARTIFACT = b"an artifact of the fleet's repository" * 100
FACTORY = ModelRef(name="wine", version="1.0.0", sha256="cd" * 32)


@pytest.fixture(scope="module")
def director() -> CryptoSigner:
    return keys.generate_signer()


def make(director: CryptoSigner, device_id: str = "emu-00001") -> EmulatedDevice:
    return EmulatedDevice(
        DeviceSpec(device_id=device_id, tags=("bench",), factory=FACTORY),
        director_keys=trusted_keys([director.public_key]),
        now_s=NOW_S,
        telemetry_interval_s=10.0,
        telemetry_phase_s=3.0,
    )


def desired(
    signer: CryptoSigner, seq: int = 5, device_id: str = "emu-00001", content: bytes = ARTIFACT
) -> bytes:
    body = DesiredBody(
        device_id=device_id,
        seq=seq,
        target=DesiredTarget(
            name="wine-1.1.0.efpkg",
            sha256=hashlib.sha256(content).hexdigest(),
            length=len(content),
            version="1.1.0",
        ),
        expires_at=NOW + timedelta(hours=1),
        rollout_id="ro-1",
        issued_at=NOW,
    )
    return sign_desired(body, signer).to_bytes()


def events(actions: list[Action]) -> list[EventMessage]:
    return [
        EventMessage.model_validate_json(a.payload)
        for a in actions
        if isinstance(a, Publish) and a.topic.endswith("/events")
    ]


def seqs(actions: list[Action]) -> list[int]:
    return [json.loads(a.payload)["seq"] for a in actions if isinstance(a, Publish)]


def test_seqs_start_at_the_clock_and_order_birth_before_will(director: CryptoSigner) -> None:
    device = make(director)
    will, birth = device.session()
    will_msg = StateMessage.model_validate_json(will.payload)
    birth_msg = StateMessage.model_validate_json(birth.payload)
    # The agent's outbox floor: the wall clock in microseconds.
    assert birth_msg.seq == int(NOW_S * 1000) * 1000
    assert birth_msg.seq < will_msg.seq
    assert (birth_msg.online, will_msg.online, will_msg.reason) == (True, False, "will")
    assert will.retain
    assert birth.retain
    assert birth.topic == device_topic("emu-00001", Channel.STATE)
    assert birth_msg.tags == ["bench"]
    assert birth_msg.active_model == FACTORY
    _, next_birth = device.session()
    assert StateMessage.model_validate_json(next_birth.payload).seq > will_msg.seq


def test_telemetry_is_due_on_its_phase_then_every_interval(director: CryptoSigner) -> None:
    device = make(director)
    assert device.tick(NOW_S + 2.9) == []
    first = device.tick(NOW_S + 3.0)
    assert len(first) == 1
    assert isinstance(first[0], Publish)
    message = TelemetryMessage.model_validate_json(first[0].payload)
    assert first[0].topic == device_topic("emu-00001", Channel.TELEMETRY)
    assert message.device_id == "emu-00001"
    assert message.active_model == FACTORY
    assert message.interval_s == pytest.approx(3.0)
    assert device.tick(NOW_S + 12.0) == []
    second = device.tick(NOW_S + 13.0)
    assert seqs(second)[0] == message.seq + 1


def test_a_signed_desired_state_installs_and_reports_like_the_agent(
    director: CryptoSigner,
) -> None:
    device = make(director)
    actions = device.on_desired(desired(director), NOW)
    assert [e.kind for e in events(actions)] == [EventKind.DOWNLOADING]
    fetch = [a for a in actions if isinstance(a, Fetch)]
    assert len(fetch) == 1
    assert fetch[0].target.desired_seq == 5
    digest = hashlib.sha256(ARTIFACT).hexdigest()
    after = device.fetched(fetch[0].target, len(ARTIFACT), digest, NOW)
    assert [e.kind for e in events(after)] == [EventKind.INFO, EventKind.VERIFIED, EventKind.STAGED]
    # The next tick activates; one second of probation later it commits.
    activated = device.tick(NOW_S + 1.0)
    assert EventKind.ACTIVATED in [e.kind for e in events(activated)]
    done = device.tick(NOW_S + 2.5)
    kinds = [e.kind for e in events(done)]
    assert kinds[-2:] == [EventKind.HEALTHY, EventKind.COMMITTED]
    healthy = events(done)[-2]
    assert healthy.rollout_id == "ro-1"
    assert healthy.desired_seq == 5
    assert healthy.model is not None
    assert healthy.model.name == "wine"
    # The fresh birth after the commit names the new model.
    birth = StateMessage.model_validate_json(done[-1].payload)  # type: ignore[union-attr]
    assert birth.online
    assert birth.active_model is not None
    assert birth.active_model.version == "1.1.0"
    assert birth.active_model.sha256 == digest
    every = seqs(actions) + seqs(after) + seqs(activated) + seqs(done)
    assert every == sorted(every)
    assert len(set(every)) == len(every)
    # The same retained desired state again (a reconnect): a redelivery, nothing to say.
    assert device.on_desired(desired(director), NOW) == []


def test_a_forged_signature_is_rejected_and_changes_nothing(director: CryptoSigner) -> None:
    device = make(director)
    forger = keys.generate_signer()
    forged = json.loads(desired(director))
    # The director's key id with another key's signature: a forgery, not an unknown key.
    other = json.loads(desired(forger))
    forged["signatures"][0]["sig"] = other["signatures"][0]["sig"]
    actions = device.on_desired(json.dumps(forged).encode(), NOW)
    rejected = events(actions)
    assert [e.kind for e in rejected] == [EventKind.REJECTED]
    assert "signature does not verify" in (rejected[0].reason or "")
    assert rejected[0].desired_seq == 5
    assert not [a for a in actions if isinstance(a, Fetch)]
    assert device.active == FACTORY
    assert not device.busy
    # Signed by a key the device does not pin: refused too.
    unknown = events(device.on_desired(desired(forger, seq=6), NOW))
    assert [e.kind for e in unknown] == [EventKind.REJECTED]
    assert "unknown key" in (unknown[0].reason or "")


def test_a_desired_state_for_another_device_or_older_seq_is_refused(
    director: CryptoSigner,
) -> None:
    device = make(director)
    other = events(device.on_desired(desired(director, device_id="emu-00002"), NOW))
    assert [e.kind for e in other] == [EventKind.REJECTED]
    device.on_desired(desired(director, seq=9), NOW)
    older = events(device.on_desired(desired(director, seq=8), NOW))
    assert [e.kind for e in older] == [EventKind.REJECTED]
    assert "not newer" in (older[0].reason or "")


def test_an_artifact_unlike_the_signed_one_is_rejected(director: CryptoSigner) -> None:
    device = make(director)
    fetch = next(a for a in device.on_desired(desired(director), NOW) if isinstance(a, Fetch))
    tampered = b"x" + ARTIFACT[1:]
    problem = artifact_problem(fetch.target, len(tampered), hashlib.sha256(tampered).hexdigest())
    assert problem is not None
    assert "sha256" in problem
    assert "bytes" in (artifact_problem(fetch.target, 3, fetch.target.sha256) or "")
    after = device.fetched(fetch.target, len(tampered), hashlib.sha256(tampered).hexdigest(), NOW)
    assert [e.kind for e in events(after)][-1] == EventKind.REJECTED
    assert device.active == FACTORY
    assert not device.busy


def stored(device_id: str, *ranges: tuple[int, int]) -> bytes:
    return StoredMessage(device_id=device_id, seqs=list(ranges)).model_dump_json().encode()


def test_the_outbox_keeps_what_the_fleet_has_not_stored_and_sends_it_again(
    director: CryptoSigner,
) -> None:
    device = make(director)
    device.session()
    actions = device.on_desired(desired(director), NOW)
    event_seqs = seqs(actions)
    telemetry = device.tick(NOW_S + 3.0)
    assert device.outbox_depth == len(event_seqs) + 1
    # The fleet stored the telemetry, not the event: only the event stays.
    telemetry_seq = seqs(telemetry)[0]
    assert device.on_stored(stored("emu-00001", (telemetry_seq, telemetry_seq)), NOW_S + 4) == []
    assert device.outbox_depth == len(event_seqs)
    # A reconnect replays it after the birth; an acknowledgement for another device is
    # ignored.
    device.session()
    assert seqs(device.replay(NOW_S + 5)) == event_seqs
    assert device.on_stored(stored("emu-00002", (0, 2**62)), NOW_S + 6) == []
    assert device.outbox_depth == len(event_seqs)
    # Unacknowledged past the agent's timeout (30 s): sent again on a tick.
    again = [a for a in device.tick(NOW_S + 40.0) if seqs([a])[0] in event_seqs]
    assert seqs(again) == event_seqs
    device.on_stored(stored("emu-00001", (event_seqs[0], event_seqs[-1])), NOW_S + 41)
    assert device.outbox_depth == 1  # the telemetry of that tick
