"""Hostile payloads on the ``desired`` topic, through the agent's real `UpdateService`.

The service runs on a real provisioning bundle (a TUF root and a director key), a real
model store holding the factory model and the runner's real state file; only the event
publisher is a recorder (`EventPublisher` is the port the agent defines for it). The
runner is driven in the test's thread (`run_pending`), so each payload's outcome is known
when the call returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ModelHost
from edgefleet.agent.update.wiring import UpdateService
from edgefleet.fleet.repository import ImageRepository
from edgefleet.shared.messages import EventKind, ModelRef
from edgefleet.shared.signing import keys
from edgefleet.shared.signing.bundle import write_bundle
from edgefleet.shared.signing.tufapi import CryptoSigner
from edgefleet.simulators.models import TrainedModel


@dataclass
class RecordedEvent:
    kind: EventKind
    desired_seq: int | None
    reason: str | None


@dataclass
class Recorder:
    """EventPublisher: keeps what the agent would publish on its ``events`` topic."""

    events: list[RecordedEvent] = field(default_factory=list)

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
        self.events.append(RecordedEvent(kind, desired_seq, reason))
        return None

    def rejected(self) -> list[RecordedEvent]:
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
