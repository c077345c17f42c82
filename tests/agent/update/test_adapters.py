"""The real adapters of the update runner's ports (`edgefleet.agent.update.adapters`)."""

from __future__ import annotations

from typing import Any

from edgefleet.agent.update.adapters import OutboxEventSink
from edgefleet.agent.update.types import Report, UpdateTarget
from edgefleet.shared.messages import EventKind, ModelRef

SHA = "ab" * 32


class Recorder:
    """An `EventPublisher` that keeps what it was asked to publish."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish_event(self, kind: EventKind, **fields: Any) -> int | None:
        self.events.append({"kind": kind, **fields})
        return len(self.events)


def _target(name: str) -> UpdateTarget:
    return UpdateTarget(desired_seq=4, name=name, version="1.1.0", sha256=SHA, length=10)


def test_an_event_names_the_manifest_and_the_target_before_the_download() -> None:
    recorder = Recorder()
    OutboxEventSink(recorder).report(
        Report(event=EventKind.DOWNLOADING, target=_target("wine-1.1.0.efpkg"))
    )
    (event,) = recorder.events
    assert event["model"] == ModelRef(
        name="wine", version="1.1.0", sha256=SHA, target="wine-1.1.0.efpkg"
    )
    assert event["desired_seq"] == 4


def test_a_target_named_otherwise_is_shown_by_its_target_name() -> None:
    recorder = Recorder()
    OutboxEventSink(recorder).report(Report(event=EventKind.FAILED, target=_target("custom")))
    assert recorder.events[0]["model"] == ModelRef(
        name="custom", version="1.1.0", sha256=SHA, target="custom"
    )
