"""The rollout policy and the model lifecycle: an unapproved version runs its canary wave
and is held there; a rejected or retired one pauses the rollout; resume past the canary
is refused for either. Pure: the version's state is an input of `decide`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edgefleet.fleet.governance.lifecycle import ModelState
from edgefleet.fleet.rollouts import (
    Assign,
    DeviceObservation,
    OperatorCommand,
    RolloutCommandError,
    RolloutState,
    RolloutStatus,
    StartWave,
    Wave,
    apply_command,
    decide,
    new_rollout,
)
from edgefleet.fleet.rollouts.model import Hold
from tests.fleet.rollouts.support import T0, fleet, healthy, idle, of_kind, spec

WAVES = (Wave(count=2), Wave(fraction=1.0))
DEVICES = fleet(6)


def _planned(**overrides: object) -> RolloutState:
    return new_rollout("r1", spec(waves=WAVES, **overrides), DEVICES, {}, T0)


def _canary_healthy(state: RolloutState) -> dict[str, DeviceObservation]:
    """Observations with the canary devices healthy on the new version."""
    obs = idle(DEVICES)
    for record in state.wave_members(0):
        obs[record.device_id] = healthy(record.device_id, T0 + timedelta(seconds=1))
    return obs


def _run_canary(model_state: ModelState) -> RolloutState:
    started = decide(_planned(), idle(DEVICES), None, T0, model_state=model_state)
    assert len(of_kind(started.actions, Assign)) == 2  # the canary runs whatever the state
    return started.state


def test_unapproved_version_is_held_after_its_canary_and_says_why_once() -> None:
    state = _run_canary(ModelState.UPLOADED)
    obs = _canary_healthy(state)

    held = decide(state, obs, None, T0 + timedelta(seconds=2), model_state=ModelState.UPLOADED)

    assert held.state.current_wave == 0
    assert held.state.status is RolloutStatus.RUNNING
    assert held.state.held == "waiting for model approval of wine 2.0.0"
    assert held.state.status_reason == held.state.held
    assert not of_kind(held.actions, StartWave)
    assert not of_kind(held.actions, Assign)
    assert of_kind(held.actions, Hold) == [Hold(reason="waiting for model approval of wine 2.0.0")]
    assert [e.event for e in held.timeline].count("held") == 1
    again = decide(
        held.state, obs, None, T0 + timedelta(seconds=30), model_state=ModelState.UPLOADED
    )
    assert again.state == held.state
    assert not again.actions
    assert not again.timeline


def test_held_rollout_goes_on_once_the_version_is_approved() -> None:
    state = _run_canary(ModelState.UPLOADED)
    obs = _canary_healthy(state)
    held = decide(state, obs, None, T0 + timedelta(seconds=2), model_state=ModelState.UPLOADED)

    approved = decide(
        held.state, obs, None, T0 + timedelta(seconds=3), model_state=ModelState.APPROVED
    )

    assert approved.state.current_wave == 1
    assert approved.state.held is None
    assert approved.state.status_reason is None
    assert of_kind(approved.actions, StartWave) == [StartWave(index=1)]
    assert len(of_kind(approved.actions, Assign)) == 4


def test_single_wave_rollout_of_an_unapproved_version_does_not_complete() -> None:
    state = new_rollout("r1", spec(waves=(Wave(fraction=1.0),)), DEVICES, {}, T0)
    state = decide(state, idle(DEVICES), None, T0, model_state=ModelState.UPLOADED).state
    obs = {d.device_id: healthy(d.device_id, T0 + timedelta(seconds=1)) for d in DEVICES}

    held = decide(state, obs, None, T0 + timedelta(seconds=2), model_state=ModelState.UPLOADED)

    assert held.state.status is RolloutStatus.RUNNING
    assert held.state.held is not None
    done = decide(held.state, obs, None, T0 + timedelta(seconds=3))
    assert done.state.status is RolloutStatus.COMPLETED


@pytest.mark.parametrize("became", [ModelState.REJECTED, ModelState.RETIRED])
def test_version_rejected_or_retired_mid_rollout_pauses_it_with_the_reason(
    became: ModelState,
) -> None:
    state = _run_canary(ModelState.APPROVED)

    paused = decide(state, idle(DEVICES), None, T0 + timedelta(seconds=1), model_state=became)

    assert paused.state.status is RolloutStatus.PAUSED
    assert paused.state.status_reason == f"model wine 2.0.0 became {became.value}"
    assert not of_kind(paused.actions, Assign)
    again = decide(paused.state, idle(DEVICES), None, T0 + timedelta(seconds=9), model_state=became)
    assert again.state == paused.state


def test_a_created_rollout_of_a_retired_version_assigns_nothing() -> None:
    paused = decide(_planned(), idle(DEVICES), None, T0, model_state=ModelState.RETIRED)
    assert paused.state.status is RolloutStatus.PAUSED
    assert not of_kind(paused.actions, Assign)


def test_held_rollout_of_a_version_then_retired_pauses() -> None:
    state = _run_canary(ModelState.UPLOADED)
    obs = _canary_healthy(state)
    held = decide(state, obs, None, T0 + timedelta(seconds=2), model_state=ModelState.UPLOADED)

    paused = decide(
        held.state, obs, None, T0 + timedelta(seconds=3), model_state=ModelState.RETIRED
    )

    assert paused.state.status is RolloutStatus.PAUSED
    assert paused.state.held is None
    assert "retired" in (paused.state.status_reason or "")


@pytest.mark.parametrize("model_state", [ModelState.REJECTED, ModelState.RETIRED])
def test_resume_is_refused_for_a_rejected_or_retired_version(model_state: ModelState) -> None:
    paused = apply_command(_run_canary(ModelState.APPROVED), OperatorCommand.PAUSE, T0).state

    with pytest.raises(RolloutCommandError, match=f"wine 2.0.0 is {model_state.value}"):
        apply_command(paused, OperatorCommand.RESUME, T0, model_state=model_state)


def test_resume_past_the_canary_is_refused_for_an_unapproved_version() -> None:
    approved_run = _run_canary(ModelState.APPROVED)
    obs = _canary_healthy(approved_run)
    in_wave_1 = decide(approved_run, obs, None, T0 + timedelta(seconds=2)).state
    assert in_wave_1.current_wave == 1
    paused = apply_command(in_wave_1, OperatorCommand.PAUSE, T0).state

    with pytest.raises(RolloutCommandError, match="not approved"):
        apply_command(paused, OperatorCommand.RESUME, T0, model_state=ModelState.UPLOADED)
    resumed = apply_command(paused, OperatorCommand.RESUME, T0, model_state=ModelState.APPROVED)
    assert resumed.state.status is RolloutStatus.RUNNING


def test_resume_over_a_failed_canary_gate_is_refused_for_an_unapproved_version() -> None:
    state = _run_canary(ModelState.UPLOADED)
    obs = idle(DEVICES)
    failed_at = T0 + timedelta(seconds=1)
    for record in state.wave_members(0):
        obs[record.device_id] = DeviceObservation(
            device_id=record.device_id,
            online=True,
            current_version="1.0.0",
            last_event_kind="failed",
            last_event_at=failed_at,
        )
    paused = decide(state, obs, None, failed_at, model_state=ModelState.UPLOADED).state
    assert paused.status is RolloutStatus.PAUSED
    assert paused.paused_wave == 0

    with pytest.raises(RolloutCommandError, match="canary wave"):
        apply_command(paused, OperatorCommand.RESUME, T0, model_state=ModelState.UPLOADED)


def test_resume_within_the_canary_is_allowed_for_an_unapproved_version() -> None:
    paused = apply_command(_run_canary(ModelState.UPLOADED), OperatorCommand.PAUSE, T0).state
    resumed = apply_command(paused, OperatorCommand.RESUME, T0, model_state=ModelState.UPLOADED)
    assert resumed.state.status is RolloutStatus.RUNNING
