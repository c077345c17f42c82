"""What the API shows of a rollout: pydantic views built from stored state and history.

Pure: `summary` and `detail` read a `StoredRollout` and history rows, nothing else.
Counts always list every `DeviceRolloutState` (zeros included), so clients need not
guess which keys exist. A target without a device record (a state the orchestrator
paused as inconsistent) is left out rather than failing the view. A rollout whose state
does not parse is summarised from its columns, its ``status_reason`` saying why
(`UnreadableRollout.problem`), its plan and progress empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from edgefleet.fleet.rollout_service.store import StoredRollout, UnreadableRollout, wave_sizes
from edgefleet.fleet.rollouts.model import (
    ApprovalRecord,
    DeviceRecord,
    DeviceRolloutState,
    Gate,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
)
from edgefleet.fleet.store.rollout_tables import RolloutEvent


def counts(records: Iterable[DeviceRecord]) -> dict[str, int]:
    """Devices per state, every state listed."""
    found = Counter(r.state.value for r in records)
    return {s.value: found.get(s.value, 0) for s in DeviceRolloutState}


class HistoryEntry(BaseModel):
    """One line of a rollout's history."""

    id: int
    ts: datetime
    kind: str
    message: str
    device_id: str | None
    wave: int | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, row: RolloutEvent) -> HistoryEntry:
        assert row.id is not None
        return cls(
            id=row.id,
            ts=row.ts,
            kind=row.kind,
            message=row.message,
            device_id=row.device_id,
            wave=row.wave,
            detail=dict(row.detail or {}),
        )


class GateDecisionView(BaseModel):
    """A gate decision: which wave, passed or not, why, and when."""

    wave: int
    passed: bool
    reasons: list[str]
    at: datetime


class WaveView(BaseModel):
    """One planned wave: its size, gate, progress and latest gate decision."""

    index: int
    size: int = Field(description="devices this wave adds")
    end: int = Field(description="devices in this wave and the ones before it")
    started: bool
    gate: Gate
    counts: dict[str, int]
    gate_decision: GateDecisionView | None = None


class RolloutSummary(BaseModel):
    """A rollout in a list."""

    id: str
    model: str
    version: str
    status: RolloutStatus
    status_reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    current_wave: int
    targets: int
    wave_sizes: list[int]
    counts: dict[str, int]
    approval: ApprovalRecord | None = Field(
        default=None, description="why it waits for approval, and who approved or denied it"
    )
    held: str | None = Field(default=None, description="why it does not go past a passed gate")


class RolloutDetail(RolloutSummary):
    """A rollout with its plan, per-wave progress, gate decisions and timeline."""

    spec: RolloutSpec
    waves: list[WaveView]
    gate_decisions: list[GateDecisionView]
    timeline: list[HistoryEntry] = Field(description="rollout-level history, oldest first")


class RolloutPage(BaseModel):
    items: list[RolloutSummary]
    total: int


class HistoryPage(BaseModel):
    """History lines oldest first; pass ``next_after_id`` as ``after_id`` for more."""

    items: list[HistoryEntry]
    next_after_id: int | None


class DeviceView(BaseModel):
    """One target device's progress in a rollout."""

    device_id: str
    wave: int
    state: DeviceRolloutState
    assigned_at: datetime | None
    from_version: str | None
    healthy_at: datetime | None
    failure: str | None
    rollback_requested_at: datetime | None


def summary(stored: StoredRollout | UnreadableRollout) -> RolloutSummary:
    """The list entry of ``stored``. Raises `ValueError` only for an unreadable one
    whose status column is not a `RolloutStatus` (written by hand)."""
    if isinstance(stored, UnreadableRollout):
        return _unreadable_summary(stored)
    state = stored.state
    return RolloutSummary(
        id=stored.id,
        model=state.spec.model.name,
        version=state.spec.model.version,
        status=state.status,
        status_reason=state.status_reason,
        created_by=stored.created_by,
        created_at=state.created_at,
        updated_at=state.updated_at,
        finished_at=state.finished_at,
        current_wave=state.current_wave,
        targets=len(state.targets),
        wave_sizes=wave_sizes(state),
        counts=counts(state.devices.values()),
        approval=state.approval,
        held=state.held,
    )


def _unreadable_summary(rollout: UnreadableRollout) -> RolloutSummary:
    return RolloutSummary(
        id=rollout.id,
        model=rollout.model_name,
        version=rollout.model_version,
        status=RolloutStatus(rollout.status),
        # Its own reason (an abort's says the problem too), else what is wrong with it.
        status_reason=rollout.status_reason
        if rollout.status_reason and rollout.problem in rollout.status_reason
        else rollout.problem,
        created_by=rollout.created_by,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        finished_at=None,
        current_wave=-1,
        targets=0,
        wave_sizes=[],
        counts=counts(()),
    )


def detail(
    stored: StoredRollout, gates: Sequence[RolloutEvent], timeline: Sequence[RolloutEvent]
) -> RolloutDetail:
    """The full view; ``gates`` are its ``gate_decision`` lines, ``timeline`` its
    rollout-level lines."""
    state = stored.state
    decisions = [
        GateDecisionView(
            wave=row.wave if row.wave is not None else -1,
            passed=bool((row.detail or {}).get("passed")),
            reasons=list((row.detail or {}).get("reasons", [])),
            at=row.ts,
        )
        for row in gates
    ]
    latest = {d.wave: d for d in decisions}
    sizes = wave_sizes(state)
    waves = [
        WaveView(
            index=i,
            size=sizes[i],
            end=planned.end,
            started=i <= state.current_wave,
            gate=planned.gate,
            counts=counts(_members(state, i)),
            gate_decision=latest.get(i),
        )
        for i, planned in enumerate(state.waves)
    ]
    return RolloutDetail(
        **summary(stored).model_dump(),
        spec=state.spec,
        waves=waves,
        gate_decisions=decisions,
        timeline=[HistoryEntry.of(r) for r in timeline],
    )


def devices(stored: StoredRollout) -> list[DeviceView]:
    """Every target device in wave order."""
    return [
        DeviceView(**stored.state.devices[d].model_dump(exclude={"timed_out"}))
        for d in stored.state.targets
        if d in stored.state.devices
    ]


def _members(state: RolloutState, wave: int) -> list[DeviceRecord]:
    """The records of a wave's targets. Unlike `RolloutState.wave_members` it skips a
    target without a record: a state the orchestrator paused because it is inconsistent
    must still be shown."""
    start = state.waves[wave - 1].end if wave > 0 else 0
    targets = state.targets[start : state.waves[wave].end]
    return [state.devices[d] for d in targets if d in state.devices]
