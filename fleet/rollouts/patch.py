"""Changing a rollout after it was created, pure: its selector, waves, gate, failure policy.

Rules:

1. **When.** A rollout may change while it is waiting for approval, created, running,
   soaking or paused, and has not started a wave past its first (``current_wave`` ≤ 0).
   A finished one (terminal status), one rolling back and one past its first wave are
   refused with `RolloutCommandError` (409).
2. **Re-plan.** The new spec's targets are selected again with the rollout's own seed
   (a changed selector picks by the same stable hash order) and split into the new
   waves; a device of the new plan held by another active rollout is refused
   (`RolloutOverlapError`). Devices the rollout already assigned must stay targets, in
   its first wave: a change that would drop one, or move it to a later wave, is refused
   (`RolloutConflictError` naming them). Their records (progress) are kept.
3. **Approval.** If approval applies to the changed rollout (`approval_reasons` over its
   new targets) it goes back to WAITING_FOR_APPROVAL, whatever it was (an earlier
   approval does not cover the change). If it does not and the rollout was waiting, it
   goes on (CREATED, or RUNNING when its canary had started). A change that changes
   nothing is a no-op.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime

from pydantic import Field, ValidationError

from edgefleet.fleet.errors import InvalidRequestError
from edgefleet.fleet.rollouts.approval import ApprovalRules, approval_reasons, request_approval
from edgefleet.fleet.rollouts.model import (
    MAX_WAVES,
    Candidate,
    DeviceRecord,
    FailurePolicy,
    Frozen,
    Gate,
    RolloutCommandError,
    RolloutConflictError,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    Selector,
    TimelineEntry,
    Wave,
)
from edgefleet.fleet.rollouts.selector import check_overlap, plan_waves, select_targets, split_waves
from edgefleet.shared.replace import replace

S = RolloutStatus
CHANGEABLE = frozenset({S.WAITING_FOR_APPROVAL, S.CREATED, S.RUNNING, S.SOAKING, S.PAUSED})


class RolloutChange(Frozen):
    """What to change; a field left out (None) stays as it is."""

    selector: Selector | None = None
    waves: tuple[Wave, ...] | None = Field(default=None, max_length=MAX_WAVES)
    gate: Gate | None = None
    failure_policy: FailurePolicy | None = None

    def fields(self) -> dict[str, object]:
        return {k: v for k, v in self if v is not None}


def change_rollout(
    state: RolloutState,
    change: RolloutChange,
    candidates: Iterable[Candidate],
    active: Mapping[str, Collection[str]],
    *,
    rules: ApprovalRules,
    now: datetime,
) -> tuple[RolloutState, list[TimelineEntry]]:
    """``state`` with ``change`` applied (see the rules above) and its history lines.

    ``active`` maps the other active rollouts to the devices they hold. Raises
    `RolloutCommandError` (the status forbids changes), `RolloutConflictError` (assigned
    devices would leave the first wave), `RolloutOverlapError`, `SelectionError` and
    `InvalidRequestError` (the changed spec is not valid).
    """
    if state.status not in CHANGEABLE or state.current_wave >= 1:
        where = f"is {state.status.value}" if state.current_wave < 1 else "is past its first wave"
        raise RolloutCommandError(
            f"cannot change rollout {state.rollout_id!r}: it {where}; a rollout changes only"
            " until its first wave is done (waiting for approval, created, running, soaking"
            " or paused in wave 0)"
        )
    try:
        spec = RolloutSpec.model_validate(
            {**state.spec.model_dump(), **{k: v for k, v in change if v is not None}}
        )
    except ValidationError as e:
        raise InvalidRequestError(
            "the changed rollout is not valid: " + "; ".join(str(x["msg"]) for x in e.errors())
        ) from None
    if spec == state.spec:
        return state, []
    by_id = {c.device_id: c for c in candidates}
    targets = select_targets(by_id.values(), spec.selector, seed=state.seed)
    check_overlap(targets, {rid: held for rid, held in active.items() if rid != state.rollout_id})
    waves = plan_waves(spec.waves, len(targets), spec.gate)
    devices: dict[str, DeviceRecord] = {}
    for index, members in enumerate(split_waves(targets, waves)):
        for device_id in members:
            old = state.devices.get(device_id)
            devices[device_id] = (
                DeviceRecord(device_id=device_id, wave=index)
                if old is None
                else replace(old, wave=index)
            )
    stranded = sorted(
        d
        for d, r in state.devices.items()
        if r.touched and (d not in devices or devices[d].wave != 0)
    )
    if stranded:
        shown = ", ".join(stranded[:10]) + (" ..." if len(stranded) > 10 else "")
        raise RolloutConflictError(
            f"cannot change rollout {state.rollout_id!r}: it already assigned {len(stranded)}"
            f" device(s) that the change would drop or move past the first wave: {shown}"
        )
    changed = sorted(k for k, v in change if v is not None and getattr(state.spec, k) != v)
    new = replace(
        state, spec=spec, targets=tuple(targets), waves=waves, devices=devices, updated_at=now
    )
    sizes = [w.end - (waves[i - 1].end if i else 0) for i, w in enumerate(waves)]
    lines = [
        TimelineEntry(
            at=now,
            event="changed",
            message=f"changed {', '.join(changed)}: {len(targets)} device(s) in"
            f" {len(waves)} wave(s) {sizes}",
        )
    ]
    reasons = approval_reasons(rules, (by_id[d] for d in targets))
    if reasons:
        new, line = request_approval(new, reasons, now)
        lines.append(line)
    elif new.status is S.WAITING_FOR_APPROVAL:
        status = S.RUNNING if new.current_wave >= 0 else S.CREATED
        new = replace(new, status=status, status_reason=None, approval=None)
        lines.append(
            TimelineEntry(at=now, event="approval_not_needed", message="approval no longer applies")
        )
    return new, lines
