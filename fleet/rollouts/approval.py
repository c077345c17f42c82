"""Rollout approval, pure: when a rollout needs it, and what approving or denying does.

Rules:

1. **When.** A rollout needs approval when the fleet says so for every rollout
   (``rollout_approval_required``), when it selects more than
   ``rollout_approval_min_devices`` devices, or when a selected device carries one of
   ``rollout_approval_tags`` (`approval_reasons`; every rule that applies is a reason).
2. **Waiting.** Such a rollout is stored WAITING_FOR_APPROVAL (`request_approval`): the
   orchestrator assigns nothing to it, but it holds its devices like any active rollout.
3. **Four eyes.** Approving or denying takes a person other than its creator (person ids,
   `Principal.person`: two tokens of one user are one person), unless the fleet runs in
   one-person lab mode (`check_reviewer` raises `FourEyesError`).
4. **Approve** → CREATED (nothing assigned yet) or RUNNING (a changed rollout whose
   canary had started); **deny** (a remark is required) → APPROVAL_DENIED, final: it
   frees its devices and leaves any device it had assigned as it is, like an abort.
5. **Changes.** A change to the targets or gates of a rollout that approval applies to
   sends it back to WAITING_FOR_APPROVAL (`edgefleet.fleet.rollouts.patch`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from edgefleet.fleet.errors import FourEyesError, InvalidRequestError
from edgefleet.fleet.rollouts.model import (
    ApprovalRecord,
    Candidate,
    RolloutCommandError,
    RolloutState,
    RolloutStatus,
    TimelineEntry,
)
from edgefleet.shared.replace import replace

S = RolloutStatus


@dataclass(frozen=True)
class ApprovalRules:
    """The fleet's rollout approval settings (`FleetSettings.rollout_approval_*`)."""

    required: bool = False
    min_devices: int | None = None
    tags: tuple[str, ...] = ()


def approval_reasons(rules: ApprovalRules, selected: Iterable[Candidate]) -> tuple[str, ...]:
    """Why a rollout over ``selected`` needs approval; empty when it does not."""
    devices = list(selected)
    reasons: list[str] = []
    if rules.required:
        reasons.append("the fleet requires approval of every rollout")
    if rules.min_devices is not None and len(devices) > rules.min_devices:
        reasons.append(
            f"it selects {len(devices)} devices, more than the {rules.min_devices} that"
            " need no approval"
        )
    for tag in rules.tags:
        tagged = [d.device_id for d in devices if tag in d.tags]
        if tagged:
            shown = ", ".join(tagged[:5]) + (
                f" and {len(tagged) - 5} more" if len(tagged) > 5 else ""
            )
            reasons.append(f"it selects device(s) tagged {tag!r}: {shown}")
    return tuple(reasons)


def request_approval(
    state: RolloutState, reasons: tuple[str, ...], now: datetime
) -> tuple[RolloutState, TimelineEntry]:
    """``state`` waiting for approval for ``reasons`` (non-empty), and its history line."""
    if not reasons:
        raise ValueError("a rollout waits for approval only for some reason")
    why = "waiting for approval: " + "; ".join(reasons)
    waiting = replace(
        state,
        status=S.WAITING_FOR_APPROVAL,
        status_reason=why,
        approval=ApprovalRecord(reasons=reasons, requested_at=now),
        updated_at=now,
    )
    return waiting, TimelineEntry(at=now, event="approval_requested", message=why)


def check_reviewer(creator: str | None, reviewer: str, *, single_person_approval: bool) -> None:
    """Raises `FourEyesError` when ``reviewer`` is the rollout's ``creator`` (person ids)
    and lab mode is off."""
    if creator == reviewer and not single_person_approval:
        raise FourEyesError(
            f"four eyes: {reviewer} created this rollout and cannot approve or deny it;"
            " another person with rollout:approve must (or run the fleet with"
            " single_person_approval for a one-person lab)"
        )


def decide_approval(
    state: RolloutState,
    *,
    approve: bool,
    reviewer: str,
    reviewer_name: str,
    remark: str | None,
    single_person_approval: bool,
    now: datetime,
) -> tuple[RolloutState, TimelineEntry]:
    """The rollout approved (or denied) by ``reviewer``, and its history line.

    Raises `RolloutCommandError` for a rollout not waiting for approval, `FourEyesError`
    (see `check_reviewer`), `InvalidRequestError` for a denial without a remark.
    """
    verb = "approve" if approve else "deny"
    if state.status is not S.WAITING_FOR_APPROVAL or state.approval is None:
        raise RolloutCommandError(
            f"cannot {verb} rollout {state.rollout_id!r}: it is {state.status.value}, expected"
            f" {S.WAITING_FOR_APPROVAL.value}"
        )
    check_reviewer(state.creator, reviewer, single_person_approval=single_person_approval)
    if not approve and not (remark and remark.strip()):
        raise InvalidRequestError("denying a rollout takes a remark saying why")
    record = replace(
        state.approval,
        approved=approve,
        decided_by=reviewer,
        decided_by_name=reviewer_name,
        decided_at=now,
        remark=remark,
    )
    said = f": {remark}" if remark else ""
    if approve:
        status = S.RUNNING if state.current_wave >= 0 else S.CREATED
        new = replace(state, status=status, status_reason=None, paused_wave=None, approval=record)
        line = TimelineEntry(at=now, event="approved", message=f"approved by {reviewer_name}{said}")
    else:
        why = f"approval denied by {reviewer_name}{said}"
        new = replace(
            state, status=S.APPROVAL_DENIED, status_reason=why, approval=record, finished_at=now
        )
        line = TimelineEntry(at=now, event="approval_denied", message=why)
    return replace(new, updated_at=now), line
