"""Test helpers: a rollout spec builder and a tiny simulated fleet that reacts to actions.

The simulated devices stand in for agents at the interface this package defines (they
produce `DeviceObservation`s); nothing here mocks a broker or a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from edgefleet.fleet.rollouts import (
    Action,
    Assign,
    Candidate,
    DeviceObservation,
    ModelTarget,
    RollBack,
    RolloutSpec,
)
from edgefleet.shared.messages import EventKind

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
OLD, NEW = "1.0.0", "2.0.0"
A = TypeVar("A")
Outcome = Literal["healthy", "fail", "silent"]


def spec(**overrides: object) -> RolloutSpec:
    values: dict[str, object] = {"model": ModelTarget(name="wine", version=NEW)}
    values.update(overrides)
    return RolloutSpec.model_validate(values)


def fleet(n: int, *, prefix: str = "dev") -> list[Candidate]:
    return [
        Candidate(device_id=f"{prefix}-{i:03d}", tags=("lab",), hardware="pi4") for i in range(n)
    ]


def observe(
    device_id: str,
    *,
    online: bool = True,
    version: str | None = OLD,
    event: EventKind | None = None,
    at: datetime | None = None,
    previous: str | None = None,
    assigned_at: datetime | None = None,
) -> DeviceObservation:
    return DeviceObservation(
        device_id=device_id,
        online=online,
        current_version=version,
        previous_version=previous,
        last_event_kind=event,
        last_event_at=at,
        assigned_at=assigned_at,
    )


def idle(devices: Iterable[Candidate | str]) -> dict[str, DeviceObservation]:
    """Every device online on the old version, no event."""
    ids = [d if isinstance(d, str) else d.device_id for d in devices]
    return {d: observe(d) for d in ids}


def healthy(device_id: str, at: datetime) -> DeviceObservation:
    return observe(device_id, version=NEW, previous=OLD, event=EventKind.COMMITTED, at=at)


def failed(device_id: str, at: datetime) -> DeviceObservation:
    return observe(device_id, version=OLD, event=EventKind.FAILED, at=at)


def of_kind(actions: Sequence[object], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


@dataclass
class SimDevice:
    device_id: str
    outcome: Outcome
    online: bool = True
    version: str | None = OLD
    previous: str | None = None
    event: EventKind | None = None
    event_at: datetime | None = None
    ready_at: datetime | None = None


class SimFleet:
    """Devices that install ``install_s`` after an assignment (when online) and end as
    their outcome says; a rollback puts the version back at once (when online)."""

    def __init__(self, outcomes: dict[str, Outcome], *, install_s: float = 5.0) -> None:
        self.devices = {d: SimDevice(d, o) for d, o in outcomes.items()}
        self.install_s = install_s
        self.rollbacks: dict[str, str | None] = {}

    def apply(self, actions: Iterable[Action], now: datetime) -> None:
        for action in actions:
            if isinstance(action, Assign):
                self.devices[action.device_id].ready_at = now + timedelta(seconds=self.install_s)
            elif isinstance(action, RollBack):
                self.rollbacks[action.device_id] = action.to_version

    def advance(self, now: datetime) -> None:
        for d in self.devices.values():
            if not d.online:
                continue
            if d.device_id in self.rollbacks:
                d.version, d.ready_at = self.rollbacks.pop(d.device_id), None
                continue
            if d.ready_at is None or now < d.ready_at:
                continue
            at, d.ready_at = d.ready_at, None
            if d.outcome == "healthy":
                d.previous, d.version, d.event, d.event_at = d.version, NEW, EventKind.COMMITTED, at
            elif d.outcome == "fail":
                d.event, d.event_at = EventKind.FAILED, at

    def observations(self) -> dict[str, DeviceObservation]:
        return {
            d.device_id: observe(
                d.device_id,
                online=d.online,
                version=d.version,
                previous=d.previous,
                event=d.event,
                at=d.event_at,
            )
            for d in self.devices.values()
        }
