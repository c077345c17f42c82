"""Hostile payloads on the ``desired`` topic, through the agent's real `UpdateService`.

The service runs on a real provisioning bundle (a TUF root and a director key), a real
model store holding the factory model and the runner's real state file; only the event
publisher is a recorder (`EventPublisher` is the port the agent defines for it). The
runner is driven in the test's thread (`run_pending`), so each payload's outcome is known
when the call returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ModelHost
from edgefleet.agent.update.acceptance import Accepted, Ignored, Rejected, judge, judge_install
from edgefleet.agent.update.machine import Phase
from edgefleet.agent.update.types import (
    DesiredReceived,
    DesiredRejected,
    InstalledModel,
    UpdateTarget,
)
from edgefleet.agent.update.wiring import UpdateService
from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.messages import EventKind, EventMessage, ModelRef
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.bundle import write_bundle
from edgefleet.shared.signing.errors import UpdateRejected
from edgefleet.shared.signing.tufapi import CryptoSigner
from edgefleet.simulators.models import TrainedModel
from tests.shared.signing.hostile import hostile_payloads


@dataclass
class Recorder:
    """EventPublisher: builds each event's wire message, as the agent does, and keeps it.

    Building the `EventMessage` is what the agent's own `publish_event` does before the
    outbox; a value it refuses (a seq beyond 64 bits...) would lose the event there.
    """

    events: list[EventMessage] = field(default_factory=list)

    def publish_event(
        self,
        kind: EventKind,
        *,
        model: ModelRef | None = None,
        desired_seq: int | None = None,
        rollout_id: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int | None:
        message = EventMessage(
            device_id="cam-17",
            seq=len(self.events),
            kind=kind,
            model=model,
            desired_seq=desired_seq,
            rollout_id=rollout_id,
            reason=reason,
            detail=detail or {},
        )
        self.events.append(EventMessage.model_validate_json(message.model_dump_json()))
        return message.seq

    def rejected(self) -> list[EventMessage]:
        return [e for e in self.events if e.kind is EventKind.REJECTED]


@dataclass
class Device:
    service: UpdateService
    recorder: Recorder
    director: CryptoSigner
    device_id: str
    factory_sha256: str

    def offer(self, payload: bytes) -> None:
        """One payload on the ``desired`` topic, handled to the end."""
        self.service.on_desired(payload)
        self.service.runner.run_pending()

    def assert_untouched(self) -> None:
        store = self.service.store
        assert store.active() == self.factory_sha256
        assert store.models() == [self.factory_sha256]
        store.verify(self.factory_sha256)
        active = self.service.state.active
        assert active is not None
        assert active.sha256 == self.factory_sha256


def make_device(root: Path, wine_model: TrainedModel) -> Iterator[Device]:
    """A provisioned device with the factory model installed and the runner resumed."""
    signers = {name: keys.generate_signer() for name in keys.ALL_KEYS}
    repo = ImageRepository.create(root / "repo", signers)
    trust = root / "trust"
    write_bundle(trust, repo.metadata_bytes("root", 1), [signers["director"].public_key])
    config = AgentConfig.model_validate(
        {
            "device_id": "cam-17",
            "data_dir": str(root / "data"),
            # Never contacted: a payload that does not open downloads nothing.
            "update": {
                "enabled": True,
                "repository_url": "http://127.0.0.1:9/",
                "trust_dir": str(trust),
            },
            "model": {"path": str(wine_model.path), "name": "wine", "version": "1.0.0"},
        }
    )
    recorder = Recorder()
    service = UpdateService(config, host=ModelHost(InferenceMetrics()), publisher=recorder)
    service.runner.run_pending()  # Resumed: the factory model is active and loaded
    factory = service.store.active()
    assert factory is not None
    yield Device(service, recorder, signers["director"], "cam-17", factory)
    service.stop()


@pytest.fixture
def device(tmp_path: Path, wine_model: TrainedModel) -> Iterator[Device]:
    yield from make_device(tmp_path, wine_model)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (nested(100_000), "at most 65536"),  # over the cap: once parsed for the seq
        (nested(30_000), "levels deep"),  # under the cap: the decoder's recursion
        (b'{"signed":{"seq":4,"x":"\\udfff"},"signatures":[{"keyid":"k","sig":"0"}]}', "UTF-8"),
    ],
    ids=["nested_100k", "nested_30k", "lone_surrogate"],
)
def test_hostile_desired_payload_is_reported_rejected(
    device: Device, payload: bytes, reason: str
) -> None:
    device.offer(payload)
    (rejected,) = device.recorder.rejected()
    assert rejected.reason is not None
    assert reason in rejected.reason
    device.assert_untouched()


def test_rejection_reports_the_seq_a_bounded_payload_claims(device: Device) -> None:
    device.offer(b'{"signed":{"seq":41},"signatures":[{"keyid":"k","sig":"00"}]}')
    (rejected,) = device.recorder.rejected()
    assert rejected.desired_seq == 41
    assert rejected.reason is not None
    assert "unknown key" in rejected.reason


def test_a_seq_beyond_64_bits_is_rejected_and_reported_without_it(device: Device) -> None:
    device.offer(b'{"signed":{"seq":%d},"signatures":[]}' % 2**70)
    (rejected,) = device.recorder.rejected()
    assert rejected.desired_seq is None
    assert rejected.reason is not None
    assert "signatures" in rejected.reason


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one device takes every example, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_fuzzed_desired_payloads_are_each_rejected_and_change_no_model(
    device: Device, data: st.DataObject
) -> None:
    payload = data.draw(hostile_payloads(device.director, device.device_id), label="payload")
    again = hashlib.sha256(payload).hexdigest() == device.service.state.last_rejected_envelope
    before = len(device.recorder.events)
    device.offer(payload)  # raises nothing: on_desired runs on the MQTT thread
    new = device.recorder.events[before:]
    if again:  # the same payload as the one rejected last: reported once already
        assert new == []
    else:
        assert [e.kind for e in new] == [EventKind.REJECTED]
        assert new[0].reason
    assert device.service.state.phase is Phase.IDLE
    assert device.service.state.last_desired_seq == -1
    device.assert_untouched()


NOW = datetime(2025, 6, 1, tzinfo=UTC)
SHAS = st.sampled_from(["a" * 64, "b" * 64, "c" * 64])
targets = st.builds(
    UpdateTarget,
    desired_seq=st.integers(min_value=0, max_value=2**63),
    name=st.text(max_size=20),
    version=st.text(max_size=20) | st.sampled_from(["1.0.0", "0.9.0", "2.0.0-rc.1"]),
    sha256=SHAS,
    length=st.integers(min_value=0, max_value=2**63),
    rollout_id=st.none() | st.text(max_size=10),
    rollback=st.booleans(),
)
offers = st.one_of(
    st.builds(
        DesiredReceived,
        target=targets,
        expires_at=st.datetimes(timezones=st.just(UTC)),
        envelope_sha256=SHAS,
    ),
    st.builds(
        DesiredRejected,
        reason=st.text(min_size=1, max_size=50),
        desired_seq=st.none() | st.integers(min_value=0),
        envelope_sha256=SHAS,
    ),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    offer=offers,
    last_seq=st.integers(min_value=-1, max_value=2**63),
    held=st.lists(st.none() | targets, max_size=2),
    last_rejected=st.none() | SHAS,
    active=st.none()
    | st.builds(
        InstalledModel, name=st.text(max_size=5), version=st.text(max_size=12), sha256=SHAS
    ),
)
def test_judge_never_raises_and_every_rejection_has_a_reason(
    offer: DesiredReceived | DesiredRejected,
    last_seq: int,
    held: list[UpdateTarget | None],
    last_rejected: str | None,
    active: InstalledModel | None,
) -> None:
    verdict = judge(offer, last_seq=last_seq, held=held, last_rejected=last_rejected, now=NOW)
    assert isinstance(verdict, Accepted | Ignored | Rejected)
    if isinstance(offer, DesiredRejected):
        assert not isinstance(verdict, Accepted), "an envelope that did not open is never taken"
    if isinstance(verdict, Rejected):
        assert verdict.reason
        assert issubclass(verdict.cause, UpdateRejected)
    if isinstance(verdict, Accepted):
        refused = judge_install(verdict.target, active=active)
        assert refused is None or (refused.reason and issubclass(refused.cause, UpdateRejected))
