"""`decide` skips, within one tick, the device records an earlier pass left unchanged;
over random fleets it decides exactly what looking at every record in every pass does."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from hypothesis import given

from edgefleet.fleet.rollouts import (
    Decision,
    DeviceObservation,
    DeviceRecord,
    OperatorCommand,
    RolloutCommandError,
    RolloutState,
    decide,
    new_rollout,
    policy,
)
from tests.fleet.rollouts.support import T0, Outcome, SimFleet, fleet
from tests.fleet.rollouts.test_properties import PROPERTY_SETTINGS, scenario_rollout, scenarios


def decide_looking_at_every_record(
    rollout: RolloutState,
    observations: Mapping[str, DeviceObservation],
    now: datetime,
    command: OperatorCommand | None = None,
) -> Decision:
    """`decide` as written before the shortcut (no metrics: the fleet has none here)."""
    tick = policy._Tick(now=now, observations=observations, metrics=None)
    state = rollout
    if command is not None:
        state = policy._command(state, command, tick)
    for _ in range(len(state.waves) + 8):
        before = state
        changed: dict[str, DeviceRecord] = {}
        for device_id, record in state.devices.items():
            new = policy._refresh_device(state, record, tick)
            if new is not record:
                changed[device_id] = new
        if changed:
            state = state.model_copy(update={"devices": {**state.devices, **changed}})
        state = policy._advance(state, tick)
        if state == before:
            break
    if state != rollout:
        state = state.model_copy(update={"updated_at": now})
    return Decision(state=state, actions=tuple(tick.actions), timeline=tuple(tick.timeline))


@PROPERTY_SETTINGS
@given(scenarios())
def test_skipping_settled_records_decides_the_same(sc: dict[str, object]) -> None:
    devices = fleet(sc["n"])  # type: ignore[arg-type]
    outcomes: list[Outcome] = sc["outcomes"]  # type: ignore[assignment]
    rollout = scenario_rollout(sc)
    state = new_rollout("r-settled", rollout, devices, {}, T0)
    sim = SimFleet({d.device_id: o for d, o in zip(devices, outcomes, strict=True)})
    offline: list[int] = sc["offline"]  # type: ignore[assignment]
    steps: list[int] = sc["steps"]  # type: ignore[assignment]
    now = T0
    for i, dt in enumerate(steps):
        now += timedelta(seconds=dt)
        if i < len(offline):
            flip = sim.devices[devices[offline[i]].device_id]
            flip.online = not flip.online
        sim.advance(now)
        obs = sim.observations()
        command: OperatorCommand | None = sc["command"] if i == sc["command_at"] else None  # type: ignore[assignment]
        try:
            decision = decide(state, obs, None, now, command=command)
        except RolloutCommandError:
            command = None
            decision = decide(state, obs, None, now)
        assert decision == decide_looking_at_every_record(state, obs, now, command)
        sim.apply(decision.actions, now)
        state = decision.state
