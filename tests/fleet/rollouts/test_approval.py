"""Rollout approval, pure: when it applies, four eyes, approve and deny, and a change that
sends a rollout back for approval."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edgefleet.fleet.errors import FourEyesError, InvalidRequestError
from edgefleet.fleet.rollouts import (
    Candidate,
    Gate,
    RolloutCommandError,
    RolloutConflictError,
    RolloutState,
    RolloutStatus,
    Selector,
    Wave,
    decide,
    new_rollout,
)
from edgefleet.fleet.rollouts.approval import ApprovalRules, approval_reasons, decide_approval
from edgefleet.fleet.rollouts.model import Assign
from edgefleet.fleet.rollouts.patch import RolloutChange, change_rollout
from tests.fleet.rollouts.support import T0, healthy, idle, of_kind, spec

ALICE, BOB = "user:u-alice", "user:u-bob"
DEVICES = [Candidate(device_id=f"a-{i}", tags=("site-a",)) for i in range(4)] + [
    Candidate(device_id=f"p-{i}", tags=("site-b", "prod")) for i in range(2)
]
WAVES = (Wave(count=1), Wave(fraction=1.0))


def _waiting(rules: ApprovalRules | None = None, **overrides: object) -> RolloutState:
    return new_rollout(
        "r1",
        spec(waves=WAVES, **overrides),
        DEVICES,
        {},
        T0,
        creator=ALICE,
        approval=rules or ApprovalRules(required=True),
    )


# --- when approval applies ---------------------------------------------------------------


def test_no_rule_no_approval() -> None:
    assert approval_reasons(ApprovalRules(), DEVICES) == ()


def test_every_rule_that_applies_is_a_reason() -> None:
    rules = ApprovalRules(required=True, min_devices=5, tags=("prod", "lab"))
    reasons = approval_reasons(rules, DEVICES)
    assert reasons == (
        "the fleet requires approval of every rollout",
        "it selects 6 devices, more than the 5 that need no approval",
        "it selects device(s) tagged 'prod': p-0, p-1",
    )


def test_device_count_at_the_limit_needs_no_approval() -> None:
    assert approval_reasons(ApprovalRules(min_devices=6), DEVICES) == ()
    assert approval_reasons(ApprovalRules(min_devices=5), DEVICES) != ()


def test_tag_rule_applies_only_when_a_selected_device_has_the_tag() -> None:
    rules = ApprovalRules(tags=("prod",))
    assert approval_reasons(rules, DEVICES[:4]) == ()
    assert approval_reasons(rules, DEVICES[4:5]) == ("it selects device(s) tagged 'prod': p-0",)


def test_new_rollout_waits_and_assigns_nothing() -> None:
    state = _waiting()
    assert state.status is RolloutStatus.WAITING_FOR_APPROVAL
    assert state.creator == ALICE
    assert state.approval is not None
    assert state.approval.approved is None
    tick = decide(state, idle(DEVICES), None, T0 + timedelta(seconds=5))
    assert tick.state.status is RolloutStatus.WAITING_FOR_APPROVAL
    assert not tick.actions


def test_rollout_selecting_no_tagged_device_needs_no_approval() -> None:
    state = _waiting(ApprovalRules(tags=("prod",)), selector=Selector(tags=("site-a",)))
    assert state.status is RolloutStatus.CREATED
    assert state.approval is None


# --- four eyes, approve, deny ------------------------------------------------------------


def _review(
    state: RolloutState, reviewer: str, *, approve: bool = True, **kw: object
) -> RolloutState:
    values: dict[str, object] = {"remark": None, "single_person_approval": False} | kw
    new, _line = decide_approval(
        state,
        approve=approve,
        reviewer=reviewer,
        reviewer_name=reviewer.rsplit("-", maxsplit=1)[-1],
        now=T0 + timedelta(seconds=1),
        **values,  # type: ignore[arg-type]
    )
    return new


def test_creator_cannot_approve_or_deny() -> None:
    with pytest.raises(FourEyesError, match="created this rollout"):
        _review(_waiting(), ALICE)
    with pytest.raises(FourEyesError):
        _review(_waiting(), ALICE, approve=False, remark="no")


def test_creator_may_approve_in_single_person_mode() -> None:
    assert _review(_waiting(), ALICE, single_person_approval=True).status is RolloutStatus.CREATED


def test_approval_by_another_person_records_who_when_and_the_remark_and_it_runs() -> None:
    approved = _review(_waiting(), BOB, remark="looks fine")
    assert approved.status is RolloutStatus.CREATED
    assert approved.approval is not None
    assert (approved.approval.approved, approved.approval.decided_by) == (True, BOB)
    assert approved.approval.decided_at == T0 + timedelta(seconds=1)
    assert approved.approval.remark == "looks fine"
    tick = decide(approved, idle(DEVICES), None, T0 + timedelta(seconds=2))
    assert len(of_kind(tick.actions, Assign)) == 1


def test_deny_needs_a_remark_and_is_final() -> None:
    with pytest.raises(InvalidRequestError, match="remark"):
        _review(_waiting(), BOB, approve=False, remark="  ")
    denied = _review(_waiting(), BOB, approve=False, remark="not on a Friday")
    assert denied.status is RolloutStatus.APPROVAL_DENIED
    assert not denied.active  # frees its devices
    assert denied.status_reason == "approval denied by bob: not on a Friday"
    with pytest.raises(RolloutCommandError, match="approval_denied"):
        _review(denied, BOB)


def test_a_rollout_not_waiting_cannot_be_approved() -> None:
    running = _review(_waiting(), BOB)
    with pytest.raises(RolloutCommandError, match="expected waiting_for_approval"):
        _review(running, BOB)


# --- changes -----------------------------------------------------------------------------


RULES = ApprovalRules(required=True)


def _change(state: RolloutState, rules: ApprovalRules = RULES, **fields: object) -> RolloutState:
    new, _lines = change_rollout(
        state, RolloutChange(**fields), DEVICES, {}, rules=rules, now=T0 + timedelta(seconds=3)
    )
    return new


def test_changing_the_gate_of_an_approved_rollout_sends_it_back_for_approval() -> None:
    approved = _review(_waiting(), BOB)
    changed = _change(approved, gate=Gate(soak_s=60))
    assert changed.status is RolloutStatus.WAITING_FOR_APPROVAL
    assert changed.approval is not None
    assert changed.approval.approved is None
    assert changed.waves[0].gate.soak_s == 60


def test_changing_the_selector_re_plans_with_the_same_seed() -> None:
    state = _waiting()
    changed = _change(state, selector=Selector(tags=("site-a",)))
    again = new_rollout(
        "r1", spec(waves=WAVES, selector=Selector(tags=("site-a",))), DEVICES, {}, T0
    )
    assert changed.targets == again.targets
    assert set(changed.targets) == {d.device_id for d in DEVICES[:4]}


def test_a_change_that_changes_nothing_is_a_no_op() -> None:
    approved = _review(_waiting(), BOB)
    new, lines = change_rollout(
        approved, RolloutChange(waves=WAVES), DEVICES, {}, rules=RULES, now=T0
    )
    assert new == approved
    assert lines == []


def test_a_change_that_approval_does_not_apply_to_lets_a_waiting_rollout_go_on() -> None:
    rules = ApprovalRules(tags=("prod",))
    state = _waiting(rules)
    assert state.status is RolloutStatus.WAITING_FOR_APPROVAL
    changed = _change(state, rules, selector=Selector(tags=("site-a",)))
    assert changed.status is RolloutStatus.CREATED


def _running_canary() -> RolloutState:
    approved = _review(_waiting(), BOB)
    return decide(approved, idle(DEVICES), None, T0 + timedelta(seconds=2)).state


def test_a_change_may_not_drop_or_move_an_assigned_device() -> None:
    running = _running_canary()
    assigned = [d for d, r in running.devices.items() if r.touched]
    assert len(assigned) == 1
    others = Selector(device_ids=tuple(d.device_id for d in DEVICES if d.device_id != assigned[0]))
    with pytest.raises(RolloutConflictError, match=assigned[0]):
        _change(running, selector=others)


def test_a_change_during_the_canary_keeps_the_assigned_records() -> None:
    running = _running_canary()
    changed = _change(running, gate=Gate(soak_s=5))
    assert changed.status is RolloutStatus.WAITING_FOR_APPROVAL
    assert {d: r for d, r in changed.devices.items() if r.touched} == {
        d: r for d, r in running.devices.items() if r.touched
    }
    reapproved = _review(changed, BOB)
    assert reapproved.status is RolloutStatus.RUNNING


def test_a_rollout_past_its_first_wave_or_finished_cannot_change() -> None:
    running = _running_canary()
    obs = idle(DEVICES)
    for record in running.wave_members(0):
        obs[record.device_id] = healthy(record.device_id, T0 + timedelta(seconds=3))
    in_wave_1 = decide(running, obs, None, T0 + timedelta(seconds=4)).state
    assert in_wave_1.current_wave == 1
    with pytest.raises(RolloutCommandError, match="past its first wave"):
        _change(in_wave_1, gate=Gate(soak_s=5))
    denied = _review(_waiting(), BOB, approve=False, remark="no")
    with pytest.raises(RolloutCommandError, match="approval_denied"):
        _change(denied, gate=Gate(soak_s=5))


def test_an_invalid_change_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="last wave"):
        _change(_waiting(), waves=(Wave(fraction=0.5),))
