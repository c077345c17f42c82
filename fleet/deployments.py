"""A device's deployments, reconstructed from the events it reported. Pure except `load`.

One deployment = the events that name one ``desired_seq`` (the desired state the device
was acting on), in the device's own order (its message ``seq``). Its phase is the latest
event's kind; it is finished at its last terminal event (committed, failed, rejected,
rolled_back) and its outcome is that event's kind. Events that name no desired state (a
payload that failed verification cannot be trusted to name one) each stand alone.

A step names its model by the registry's name for the package's sha256 when the fleet
has that package, else by the name the event reported: agents before
`edgefleet.shared.messages.ModelRef.target` put the TUF target name there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel
from sqlmodel import Session, col, select

from edgefleet.fleet.errors import NotFoundError
from edgefleet.fleet.store.tables import DesiredStateRow, Device, EventRow, ModelVersion
from edgefleet.shared.signing.director import DesiredBody

TERMINAL = frozenset({"committed", "failed", "rejected", "rolled_back"})
MAX_EVENTS = 5000


class Outcome(StrEnum):
    """How a deployment ended, or that it has not."""

    PENDING = "pending"  # desired, but the device has reported nothing about it yet
    IN_PROGRESS = "in_progress"
    COMMITTED = "committed"
    FAILED = "failed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


class DeploymentStep(BaseModel):
    """One event of a deployment."""

    seq: int
    ts: datetime
    kind: str
    model_name: str | None
    model_version: str | None
    reason: str | None


class Deployment(BaseModel):
    """One desired state's journey on one device."""

    desired_seq: int | None
    rollout_id: str | None
    model_name: str | None
    model_version: str | None
    phase: str | None
    outcome: Outcome
    started_at: datetime | None
    finished_at: datetime | None
    reasons: list[str]
    steps: list[DeploymentStep]


class DeviceDeployments(BaseModel):
    """What ``GET /v1/devices/{id}/deployments`` returns."""

    device_id: str
    desired: DesiredBody | None
    current: Deployment | None
    history: list[Deployment]  # newest first, ``current`` included


def group(
    events: Sequence[EventRow],
    desired: DesiredBody | None,
    names: Mapping[str, str] | None = None,
) -> list[Deployment]:
    """Deployments from ``events``, newest first; a desired state without events is pending.

    ``names`` maps a package sha256 to its model's manifest name (see `model_names`).
    """
    buckets: dict[tuple[int, int], list[EventRow]] = {}
    for event in sorted(events, key=lambda e: e.seq):
        # Standalone events key on their own seq; the -1 keeps them apart from real ones.
        key = (event.desired_seq, 0) if event.desired_seq is not None else (-1, event.seq)
        buckets.setdefault(key, []).append(event)
    deployments = [_deployment(evs, names or {}) for evs in buckets.values()]
    if desired is not None and not any(d.desired_seq == desired.seq for d in deployments):
        deployments.append(_pending(desired))
    return sorted(deployments, key=_recency, reverse=True)


def current(deployments: Sequence[Deployment], desired: DesiredBody | None) -> Deployment | None:
    """The deployment of the current desired state, else the newest one."""
    if desired is not None:
        for deployment in deployments:
            if deployment.desired_seq == desired.seq:
                return deployment
    return deployments[0] if deployments else None


def load(session: Session, device_id: str) -> DeviceDeployments:
    """The device's deployments from the database; raises `NotFoundError` for a device the
    fleet has neither heard from nor directed."""
    row = session.get(DesiredStateRow, device_id)
    desired = DesiredBody.model_validate(row.body) if row is not None and row.body else None
    events = session.exec(
        select(EventRow)
        .where(col(EventRow.device_id) == device_id)
        .order_by(col(EventRow.seq).desc())
        .limit(MAX_EVENTS)
    ).all()
    if desired is None and not events and session.get(Device, device_id) is None:
        raise NotFoundError(f"device {device_id!r} has never been seen by this fleet")
    deployments = group(events, desired, model_names(session, events))
    return DeviceDeployments(
        device_id=device_id,
        desired=desired,
        current=current(deployments, desired),
        history=deployments,
    )


def model_names(session: Session, events: Sequence[EventRow]) -> dict[str, str]:
    """The registry's model name of each package sha256 the events report (one query)."""
    hashes = {e.model_sha256 for e in events if e.model_sha256}
    if not hashes:
        return {}
    rows = session.exec(
        select(ModelVersion.sha256, ModelVersion.name).where(col(ModelVersion.sha256).in_(hashes))
    ).all()
    return dict(rows)


def _model_name(event: EventRow, names: Mapping[str, str]) -> str | None:
    if event.model_sha256 is not None and event.model_sha256 in names:
        return names[event.model_sha256]
    return event.model_name


def _deployment(events: list[EventRow], names: Mapping[str, str]) -> Deployment:
    last = events[-1]
    terminal = [e for e in events if e.kind in TERMINAL]
    named = next((e for e in reversed(events) if e.model_name), None)
    return Deployment(
        desired_seq=events[0].desired_seq,
        rollout_id=next((e.rollout_id for e in events if e.rollout_id), None),
        model_name=_model_name(named, names) if named else None,
        model_version=named.model_version if named else None,
        phase=last.kind,
        outcome=Outcome(terminal[-1].kind) if terminal else Outcome.IN_PROGRESS,
        started_at=events[0].ts,
        finished_at=terminal[-1].ts if terminal else None,
        reasons=[e.reason for e in events if e.reason],
        steps=[
            DeploymentStep(
                seq=e.seq,
                ts=e.ts,
                kind=e.kind,
                model_name=_model_name(e, names),
                model_version=e.model_version,
                reason=e.reason,
            )
            for e in events
        ],
    )


def _pending(desired: DesiredBody) -> Deployment:
    return Deployment(
        desired_seq=desired.seq,
        rollout_id=desired.rollout_id,
        model_name=None,
        model_version=desired.target.version,
        phase=None,
        outcome=Outcome.PENDING,
        started_at=None,
        finished_at=None,
        reasons=[],
        steps=[],
    )


def _recency(deployment: Deployment) -> float:
    # By the device's own order of its latest event; a pending one has none yet and is
    # the newest by definition.
    return deployment.steps[-1].seq if deployment.steps else float("inf")
