"""`pause_for_error`: the pure half of isolating a rollout whose deciding failed."""

from __future__ import annotations

from datetime import timedelta

from edgefleet.fleet.rollouts import (
    Assign,
    OperatorCommand,
    Pause,
    RolloutState,
    RolloutStatus,
    Wave,
    apply_command,
    decide,
    new_rollout,
)
from edgefleet.fleet.rollouts.model import DeviceObservation
from edgefleet.fleet.rollouts.policy import pause_for_error
from tests.fleet.rollouts.support import T0, fleet, idle, of_kind, spec

S = RolloutStatus
WHY = "paused: deciding it failed with KeyError: 'ghost'"


def _running() -> tuple[RolloutState, dict[str, DeviceObservation]]:
    devices = fleet(4)
    state = new_rollout("r-err", spec(waves=(Wave(count=2), Wave(fraction=1.0))), devices, {}, T0)
    return decide(state, idle(devices), None, T0).state, idle(devices)


def test_a_failed_decision_pauses_with_the_error_as_reason_and_a_timeline_line() -> None:
    state, _ = _running()
    later = T0 + timedelta(seconds=5)
    decision = pause_for_error(state, WHY, later)
    assert decision.state.status is S.PAUSED
    assert decision.state.status_reason == WHY
    assert decision.state.updated_at == later
    assert decision.actions == (Pause(reason=WHY),)
    assert [(t.event, t.message) for t in decision.timeline] == [("paused", WHY)]


def test_the_same_error_again_changes_nothing_and_another_one_is_recorded() -> None:
    state, _ = _running()
    paused = pause_for_error(state, WHY, T0).state
    again = pause_for_error(paused, WHY, T0 + timedelta(seconds=1))
    assert again.state == paused
    assert again.actions == ()
    assert again.timeline == ()
    other = pause_for_error(paused, "paused: deciding it failed with ValueError: x", T0)
    assert other.state.status_reason == "paused: deciding it failed with ValueError: x"


def test_a_terminal_rollout_is_left_as_it_is() -> None:
    state, _ = _running()
    aborted = apply_command(state, OperatorCommand.ABORT, T0).state
    assert pause_for_error(aborted, WHY, T0).state == aborted


def test_resume_after_an_error_pause_goes_on_assigning() -> None:
    state, obs = _running()
    paused = pause_for_error(state, WHY, T0).state
    resumed = apply_command(paused, OperatorCommand.RESUME, T0).state
    assert resumed.status is S.RUNNING
    assert resumed.status_reason is None
    assert resumed.overridden_waves == ()  # no gate was overridden: it paused on no gate
    assert of_kind(decide(resumed, obs, None, T0).actions, Assign) == []  # wave 0 kept
