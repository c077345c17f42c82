"""Properties of the rollout logic over random fleets, device outcomes, time steps and
operator commands, driven through a simulated fleet that reacts to the actions."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgefleet.fleet.rollouts import (
    Assign,
    DeviceRolloutState,
    FailurePolicy,
    Gate,
    GateDecision,
    OperatorCommand,
    RollBack,
    RolloutCommandError,
    RolloutStatus,
    Selector,
    StartWave,
    Wave,
    decide,
    new_rollout,
    unconfirmed_actions,
)
from edgefleet.fleet.rollouts.model import RolloutSpec
from edgefleet.fleet.rollouts.selector import select_targets
from tests.fleet.rollouts.support import T0, Outcome, SimFleet, fleet, spec

S = RolloutStatus
WAVE_SETS = [
    (Wave(fraction=1.0),),
    (Wave(count=1), Wave(fraction=1.0)),
    (Wave(fraction=0.01), Wave(fraction=0.1), Wave(fraction=0.5), Wave(fraction=1.0)),
    (Wave(count=2), Wave(count=5), Wave(fraction=0.6), Wave(fraction=1.0)),
]
gates = st.builds(
    Gate,
    min_success_ratio=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
    max_failure_ratio=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    soak_s=st.sampled_from([0.0, 30.0, 120.0]),
    timeout_s=st.sampled_from([60.0, 300.0]),
    timeouts_count_as_failure=st.booleans(),
)
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 25))
    outcomes: list[Outcome] = draw(
        st.lists(st.sampled_from(["healthy", "healthy", "fail", "silent"]), min_size=n, max_size=n)
    )
    steps = draw(st.lists(st.integers(1, 200), min_size=1, max_size=30))
    command = draw(st.none() | st.sampled_from(list(OperatorCommand)))
    return {
        "n": n,
        "outcomes": outcomes,
        "steps": steps,
        "offline": draw(st.lists(st.integers(0, n - 1), max_size=len(steps))),
        "fraction": draw(st.sampled_from([0.3, 0.7, 1.0])),
        "waves": draw(st.sampled_from(WAVE_SETS)),
        "gate": draw(gates),
        "policy": draw(st.sampled_from(list(FailurePolicy))),
        "command": command,
        "command_at": draw(st.integers(0, len(steps) - 1)),
        "crash_at": draw(st.integers(0, len(steps) - 1)),
        "rate": draw(st.none() | st.integers(1, 5)),
    }


def scenario_rollout(sc: dict[str, object]) -> RolloutSpec:
    """The rollout spec a drawn scenario describes."""
    return spec(
        selector=Selector(fraction=sc["fraction"]),
        waves=sc["waves"],
        gate=sc["gate"],
        failure_policy=sc["policy"],
        max_assignments_per_minute=sc["rate"],
    )


@PROPERTY_SETTINGS
@given(scenarios())
def test_rollout_invariants_hold_over_random_fleets(sc: dict[str, object]) -> None:
    devices = fleet(sc["n"])  # type: ignore[arg-type]
    outcomes: list[Outcome] = sc["outcomes"]  # type: ignore[assignment]
    rollout = scenario_rollout(sc)
    selected = set(select_targets(devices, rollout.selector, seed="r-prop"))
    state = new_rollout("r-prop", rollout, devices, {}, T0)
    sim = SimFleet({d.device_id: o for d, o in zip(devices, outcomes, strict=True)})
    offline: list[int] = sc["offline"]  # type: ignore[assignment]
    assigned: set[str] = set()
    rolled_back: set[str] = set()
    passed: set[int] = set()
    now = T0
    steps: list[int] = sc["steps"]  # type: ignore[assignment]
    for i, dt in enumerate(steps):
        now += timedelta(seconds=dt)
        if i < len(offline):  # one device flips between online and offline
            flip = sim.devices[devices[offline[i]].device_id]
            flip.online = not flip.online
        sim.advance(now)
        obs = sim.observations()
        command = sc["command"] if i == sc["command_at"] else None
        try:
            decision = decide(state, obs, None, now, command=command)  # type: ignore[arg-type]
        except RolloutCommandError:
            decision = decide(state, obs, None, now)

        for action in decision.actions:
            if isinstance(action, GateDecision) and action.passed:
                passed.add(action.wave)
            elif isinstance(action, StartWave) and action.index > 0:
                assert action.index - 1 in passed, "a wave started before its gate passed"
            elif isinstance(action, Assign):
                assert action.device_id not in assigned, "a device was assigned twice"
                assert action.device_id in selected, "assigned a device outside the selection"
                assert action.wave == 0 or action.wave - 1 in passed
                assigned.add(action.device_id)
            elif isinstance(action, RollBack):
                rolled_back.add(action.device_id)
        new = decision.state
        for record in new.devices.values():
            if record.assigned_at is not None:
                assert record.wave <= new.current_wave
        touched = {d for d, r in new.devices.items() if r.assigned_at is not None}
        assert touched == assigned
        if new.status in (S.ROLLING_BACK, S.ROLLED_BACK):
            assert touched <= rolled_back, "a rollback missed a touched device"

        again = decide(new, obs, None, now)
        assert again.actions == (), "decide repeated an action on its own output"
        assert again.state == new, "decide changed its own output"

        if i == sc["crash_at"]:
            # Crash after persisting the state, before acting: the restart re-issues
            # every effect that is not yet confirmed, and nothing else is lost.
            redo = unconfirmed_actions(new)
            for action in decision.actions:
                if isinstance(action, Assign | RollBack):
                    confirmed = new.devices[action.device_id].state in (
                        DeviceRolloutState.ROLLED_BACK,
                        DeviceRolloutState.HEALTHY,
                    )
                    assert confirmed or action in redo
            sim.apply(redo, now)
        else:
            sim.apply(decision.actions, now)
        state = new
    event(f"final status {state.status.value}")
    event(f"{'some' if rolled_back else 'no'} rollbacks")


@PROPERTY_SETTINGS
@given(
    n=st.integers(1, 40),
    waves=st.sampled_from(WAVE_SETS),
    gate=gates,
    fraction=st.sampled_from([0.5, 1.0]),
)
def test_a_fleet_that_ends_healthy_completes_the_rollout(
    n: int, waves: tuple[Wave, ...], gate: Gate, fraction: float
) -> None:
    devices = fleet(n)
    rollout = spec(waves=waves, gate=gate, selector=Selector(fraction=fraction))
    state = new_rollout("r-ok", rollout, devices, {}, T0)
    sim = SimFleet(dict.fromkeys((d.device_id for d in devices), "healthy"), install_s=5)
    now = T0
    step = timedelta(seconds=gate.soak_s + 10)
    for _ in range(2 * len(waves) + 2):
        sim.advance(now)
        decision = decide(state, sim.observations(), None, now)
        sim.apply(decision.actions, now)
        state = decision.state
        now += step
    assert state.status is S.COMPLETED
    assert all(r.state is DeviceRolloutState.HEALTHY for r in state.devices.values())
