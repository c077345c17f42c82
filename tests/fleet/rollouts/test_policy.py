"""The rollout rules, one at a time, on small hand-built fleets."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from edgefleet.fleet.rollouts import (
    Assign,
    Complete,
    FailurePolicy,
    Gate,
    GateDecision,
    MaintenanceWindow,
    MarkTimedOut,
    OperatorCommand,
    Pause,
    RollBack,
    RolloutCommandError,
    RolloutState,
    RolloutStatus,
    StartWave,
    VersionMetrics,
    Wave,
    WaveMetrics,
    apply_command,
    decide,
    held_devices,
    new_rollout,
    unconfirmed_actions,
)
from edgefleet.fleet.rollouts.model import DeviceObservation, RolloutSpec
from edgefleet.shared.messages import EventKind
from tests.fleet.rollouts.support import (
    NEW,
    OLD,
    T0,
    failed,
    fleet,
    healthy,
    idle,
    observe,
    of_kind,
    spec,
)

S = RolloutStatus
TWO_WAVES = (Wave(count=2), Wave(fraction=1.0))


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def start(n: int = 6, **overrides: object) -> tuple[RolloutState, dict[str, DeviceObservation]]:
    """A rollout over ``n`` devices, after its first tick."""
    overrides.setdefault("waves", TWO_WAVES)
    devices = fleet(n)
    state = new_rollout("r-1", spec(**overrides), devices, {}, T0)
    obs = idle(devices)
    return decide(state, obs, None, T0).state, obs


def wave(state: RolloutState, index: int) -> list[str]:
    return [r.device_id for r in state.wave_members(index)]


def test_first_tick_starts_wave_zero_and_assigns_only_its_devices() -> None:
    devices = fleet(6)
    state = new_rollout("r-1", spec(waves=TWO_WAVES), devices, {}, T0)
    decision = decide(state, idle(devices), None, T0)
    assert decision.actions[0] == StartWave(index=0)
    assert [a.device_id for a in of_kind(decision.actions, Assign)] == wave(state, 0)
    assert decision.state.status is S.RUNNING
    assert {decision.state.devices[d].from_version for d in wave(state, 0)} == {OLD}


def test_deciding_again_on_the_same_inputs_assigns_nothing() -> None:
    state, obs = start()
    again = decide(state, obs, None, T0)
    assert again.actions == ()
    assert again.state == state
    # A restarted orchestrator re-deciding later still does not repeat the assignment.
    assert of_kind(decide(state, obs, None, s(30)).actions, Assign) == []


def test_next_wave_waits_for_success_and_soak() -> None:
    state, obs = start(gate=Gate(soak_s=600))
    first = wave(state, 0)
    obs[first[0]] = healthy(first[0], s(10))
    one_healthy = decide(state, obs, None, s(20))
    assert one_healthy.actions == ()
    assert one_healthy.state.status is S.RUNNING
    obs[first[1]] = healthy(first[1], s(100))
    soaking = decide(one_healthy.state, obs, None, s(650))  # 550 s after the last healthy
    assert soaking.actions == ()
    assert soaking.state.status is S.SOAKING
    passed = decide(soaking.state, obs, None, s(700))
    assert passed.actions[:2] == (
        GateDecision(wave=0, passed=True, reasons=passed.actions[0].reasons),  # type: ignore[union-attr]
        StartWave(index=1),
    )
    assert {a.device_id for a in of_kind(passed.actions, Assign)} == set(wave(state, 1))


def test_last_wave_passing_completes_the_rollout() -> None:
    state, obs = start(n=3, waves=(Wave(fraction=1.0),))
    for d in state.targets:
        obs[d] = healthy(d, s(5))
    done = decide(state, obs, None, s(10))
    assert isinstance(done.actions[-1], Complete)
    assert done.state.status is S.COMPLETED
    assert done.state.finished_at == s(10)
    assert held_devices(done.state) == frozenset()


@pytest.mark.parametrize(
    ("policy", "status", "rolled_back"),
    [
        (FailurePolicy.PAUSE, S.PAUSED, set()),
        (FailurePolicy.ROLLBACK_FAILED, S.PAUSED, {"failed"}),
        (FailurePolicy.ROLLBACK_ALL, S.ROLLING_BACK, {"failed", "healthy"}),
    ],
)
def test_failed_gate_applies_the_failure_policy(
    policy: FailurePolicy, status: RolloutStatus, rolled_back: set[str]
) -> None:
    state, obs = start(failure_policy=policy)
    good, bad = wave(state, 0)
    obs[good], obs[bad] = healthy(good, s(5)), failed(bad, s(6))
    decision = decide(state, obs, None, s(10))
    gate = of_kind(decision.actions, GateDecision)
    assert [(g.wave, g.passed) for g in gate] == [(0, False)]
    assert (
        "1/2 device(s) failed or timed out, above the maximum failure ratio 0" in gate[0].reasons[0]
    )
    assert decision.state.status is status
    names = {"failed": bad, "healthy": good}
    expected = {RollBack(device_id=names[k], to_version=OLD) for k in rolled_back}
    assert set(of_kind(decision.actions, RollBack)) == expected
    assert of_kind(decision.actions, Assign) == []
    if status is S.PAUSED:
        assert of_kind(decision.actions, Pause)[0].reason.startswith("gate of wave 0 failed")


def test_rollback_all_ends_rolled_back_when_every_touched_device_is_back() -> None:
    state, obs = start(failure_policy=FailurePolicy.ROLLBACK_ALL)
    good, bad = wave(state, 0)
    obs[good], obs[bad] = healthy(good, s(5)), failed(bad, s(6))
    rolling = decide(state, obs, None, s(10)).state
    obs[good] = observe(good, version=OLD)
    finished = decide(rolling, obs, None, s(20))
    assert finished.state.status is S.ROLLED_BACK
    assert {r.device_id for r in finished.state.devices.values() if r.state == "rolled_back"} == {
        good,
        bad,
    }


def test_rollback_that_devices_never_confirm_ends_failed_and_names_them() -> None:
    state, obs = start(failure_policy=FailurePolicy.ROLLBACK_ALL, gate=Gate(timeout_s=60))
    good, bad = wave(state, 0)
    obs[good], obs[bad] = healthy(good, s(5)), failed(bad, s(6))
    rolling = decide(state, obs, None, s(10)).state
    obs[good] = observe(good, online=False, version=NEW)
    assert decide(rolling, obs, None, s(69)).state.status is S.ROLLING_BACK
    ended = decide(rolling, obs, None, s(70)).state
    assert ended.status is S.FAILED
    assert ended.status_reason == f"1 device(s) did not confirm the rollback in time: {good}"


def test_offline_device_stays_pending_until_its_timeout() -> None:
    state, obs = start(gate=Gate(timeout_s=300))
    good, away = wave(state, 0)
    obs[good], obs[away] = healthy(good, s(5)), observe(away, online=False)
    waiting = decide(state, obs, None, s(299))
    assert waiting.actions == ()
    assert waiting.state.devices[away].state == "offline"
    timed_out = decide(waiting.state, obs, None, s(300))
    assert MarkTimedOut(device_id=away) in timed_out.actions
    assert timed_out.state.devices[away].state == "timed_out"


@pytest.mark.parametrize(("count_as_failure", "passed"), [(True, False), (False, True)])
def test_timeouts_count_as_failure_or_are_excluded(count_as_failure: bool, passed: bool) -> None:
    gate = Gate(timeout_s=300, min_success_ratio=1.0, timeouts_count_as_failure=count_as_failure)
    state, obs = start(gate=gate)
    good, away = wave(state, 0)
    obs[good], obs[away] = healthy(good, s(5)), observe(away, online=False)
    decision = decide(state, obs, None, s(300))
    assert of_kind(decision.actions, GateDecision)[0].passed is passed
    assert (StartWave(index=1) in decision.actions) is passed


def test_timed_out_device_that_reports_healthy_later_counts_as_healthy() -> None:
    state, obs = start(gate=Gate(timeout_s=300, timeouts_count_as_failure=False))
    good, late = wave(state, 0)
    obs[good] = healthy(good, s(5))
    obs[late] = observe(late, online=False)
    state = decide(state, obs, None, s(300)).state
    obs[late] = healthy(late, s(400))
    assert decide(state, obs, None, s(401)).state.devices[late].state == "healthy"


def test_events_from_before_the_assignment_are_ignored() -> None:
    state, obs = start()
    first = wave(state, 0)
    obs[first[0]] = failed(first[0], s(-3600))  # an earlier deployment's failure
    decision = decide(state, obs, None, s(10))
    assert decision.actions == ()
    assert decision.state.devices[first[0]].state == "assigned"


def test_device_already_on_the_target_version_is_healthy_at_once() -> None:
    devices = fleet(2)
    state = new_rollout("r-1", spec(waves=(Wave(fraction=1.0),)), devices, {}, T0)
    obs = {d.device_id: observe(d.device_id, version=NEW) for d in devices}
    decision = decide(state, obs, None, T0)
    assert decision.state.status is S.COMPLETED


def test_progress_events_move_the_device_state() -> None:
    state, obs = start()
    d = wave(state, 0)[0]
    for kind, expected in [
        (EventKind.DOWNLOADING, "downloading"),
        (EventKind.STAGED, "downloading"),
        (EventKind.ACTIVATED, "installed"),
    ]:
        obs[d] = observe(d, event=kind, at=s(5))
        assert decide(state, obs, None, s(6)).state.devices[d].state == expected


def test_late_failure_in_a_passed_wave_fails_its_gate() -> None:
    state, obs = start()
    first = wave(state, 0)
    for d in first:
        obs[d] = healthy(d, s(5))
    state = decide(state, obs, None, s(10)).state
    assert state.current_wave == 1
    obs[first[0]] = observe(first[0], version=OLD, event=EventKind.ROLLED_BACK, at=s(20))
    decision = decide(state, obs, None, s(30))
    gate = of_kind(decision.actions, GateDecision)[0]
    assert (gate.wave, gate.passed) == (0, False)
    assert gate.reasons[0].startswith("after its gate passed: 1/2 device(s) failed")
    assert decision.state.status is S.PAUSED


def test_settling_below_the_success_ratio_fails_the_gate() -> None:
    gate = Gate(min_success_ratio=1.0, max_failure_ratio=0.5, timeout_s=60)
    state, obs = start(gate=gate)
    good, away = wave(state, 0)
    obs[good], obs[away] = healthy(good, s(5)), observe(away, online=False)
    decision = decide(state, obs, None, s(60))
    verdict = of_kind(decision.actions, GateDecision)[0]
    assert not verdict.passed
    assert verdict.reasons == ("wave settled with only 1/2 device(s) healthy (minimum ratio 1)",)


OUTSIDE, INSIDE = datetime(2024, 3, 1, 12, tzinfo=UTC), datetime(2024, 3, 1, 23, tzinfo=UTC)


@pytest.mark.parametrize(("now", "assigns"), [(OUTSIDE, False), (INSIDE, True)])
def test_assignments_happen_only_inside_the_maintenance_window(
    now: datetime, assigns: bool
) -> None:
    window = MaintenanceWindow(start=time(22), end=time(4))
    devices = fleet(4)
    state = new_rollout("r-1", spec(maintenance_window=window, waves=TWO_WAVES), devices, {}, now)
    decision = decide(state, idle(devices), None, now)
    assert StartWave(index=0) in decision.actions
    assert bool(of_kind(decision.actions, Assign)) is assigns


@pytest.mark.parametrize(
    ("start_", "end", "inside", "outside"),
    [
        (time(22), time(4), [time(22), time(3, 59)], [time(4), time(12)]),
        (time(1), time(5), [time(1), time(4)], [time(0, 59), time(5)]),
    ],
)
def test_maintenance_window_bounds(
    start_: time, end: time, inside: list[time], outside: list[time]
) -> None:
    window = MaintenanceWindow(start=start_, end=end)
    day = datetime(2024, 3, 1, tzinfo=UTC)
    assert all(window.contains(datetime.combine(day, t, UTC)) for t in inside)
    assert not any(window.contains(datetime.combine(day, t, UTC)) for t in outside)


def test_rate_limit_spreads_assignments_over_minutes() -> None:
    devices = fleet(10)
    rollout = spec(waves=(Wave(fraction=1.0),), max_assignments_per_minute=4)
    state = new_rollout("r-1", rollout, devices, {}, T0)
    obs = idle(devices)
    counts = []
    for t in (0, 30, 60, 61, 125):
        decision = decide(state, obs, None, s(t))
        counts.append(len(of_kind(decision.actions, Assign)))
        state = decision.state
    assert counts == [4, 0, 4, 0, 2]


def metrics(**kwargs: object) -> WaveMetrics:
    new = {
        "version": NEW,
        "error_rate": 0.01,
        "latency_p95_ms": 20.0,
        "inference_samples": 500,
        "drift_score": 0.05,
        "drift_samples": 500,
    }
    old = {"version": OLD, "error_rate": 0.01, "latency_p95_ms": 20.0, "inference_samples": 500}
    new.update({k[4:]: v for k, v in kwargs.items() if k.startswith("new_")})
    old.update({k[4:]: v for k, v in kwargs.items() if k.startswith("old_")})
    baseline = None if kwargs.get("no_baseline") else VersionMetrics.model_validate(old)
    return WaveMetrics(wave=0, candidate=VersionMetrics.model_validate(new), baseline=baseline)


GUARDS = Gate(max_error_rate_increase=0.02, max_latency_p95_ratio=1.5, max_drift_score=0.2)


@pytest.mark.parametrize(
    ("wave_metrics", "passed", "reason"),
    [
        (metrics(), True, "error rate 0.01 vs 0.01"),
        (metrics(new_error_rate=0.05), False, "(+0.04, maximum +0.02)"),
        (
            metrics(new_latency_p95_ms=31.0),
            False,
            "latency p95 31 ms vs 20 ms (x1.55, maximum x1.5)",
        ),
        (metrics(new_drift_score=0.3), False, "drift score 0.3 above the maximum 0.2"),
        (metrics(no_baseline=True, new_error_rate=0.5), True, "guards skipped"),
    ],
)
def test_metric_guards_compare_with_the_previous_version(
    wave_metrics: WaveMetrics, passed: bool, reason: str
) -> None:
    state, obs = start(gate=GUARDS)
    for d in wave(state, 0):
        obs[d] = healthy(d, s(5))
    verdict = of_kind(decide(state, obs, wave_metrics, s(10)).actions, GateDecision)[0]
    assert verdict.passed is passed
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_guards_wait_for_samples_then_fail_after_the_metrics_timeout() -> None:
    gate = Gate(max_error_rate_increase=0.02, soak_s=60, metrics_timeout_s=600)
    state, obs = start(gate=gate)
    for d in wave(state, 0):
        obs[d] = healthy(d, s(5))
    few = metrics(new_inference_samples=10)
    waiting = decide(state, obs, few, s(600))
    assert waiting.actions == ()
    assert waiting.state.status is S.SOAKING
    # Metrics of another wave are not this wave's evidence.
    other = metrics().model_copy(update={"wave": 1})
    assert decide(state, obs, other, s(600)).actions == ()
    verdict = of_kind(decide(state, obs, few, s(665)).actions, GateDecision)[0]
    assert not verdict.passed
    assert verdict.reasons == ("new version 2.0.0 has 10/100 samples 600 s after the soak",)


def test_operator_pause_stops_assignment_and_resume_continues() -> None:
    state, obs = start(gate=Gate())
    for d in wave(state, 0):
        obs[d] = healthy(d, s(5))
    paused = decide(state, obs, None, s(1), command=OperatorCommand.PAUSE)
    assert paused.state.status is S.PAUSED
    assert Pause(reason="paused by operator") in paused.actions
    assert decide(paused.state, obs, None, s(10)).actions == ()
    resumed = decide(paused.state, obs, None, s(20), command=OperatorCommand.RESUME)
    assert StartWave(index=1) in resumed.actions
    assert of_kind(resumed.actions, Assign)


def test_resume_after_a_failed_gate_records_the_operator_override() -> None:
    state, obs = start()
    good, bad = wave(state, 0)
    obs[good], obs[bad] = healthy(good, s(5)), failed(bad, s(6))
    paused = decide(state, obs, None, s(10)).state
    resumed = decide(paused, obs, None, s(20), command=OperatorCommand.RESUME)
    assert resumed.actions[0] == GateDecision(
        wave=0, passed=True, reasons=("operator resumed past the failed gate",)
    )
    assert StartWave(index=1) in resumed.actions
    assert resumed.state.status is S.RUNNING
    assert resumed.state.overridden_waves == (0,)


def test_abort_stops_assigning_and_leaves_devices() -> None:
    state, obs = start()
    aborted = decide(state, obs, None, s(5), command=OperatorCommand.ABORT)
    assert aborted.state.status is S.ABORTED
    assert aborted.actions == ()
    for d in wave(state, 0):
        obs[d] = healthy(d, s(6))
    assert decide(aborted.state, obs, None, s(7)).actions == ()
    assert held_devices(aborted.state) == frozenset()


def test_operator_rollback_after_completion_covers_every_touched_device() -> None:
    state, obs = start(n=3, waves=(Wave(fraction=1.0),))
    obs = {d: healthy(d, s(5)) for d in state.targets}
    done = decide(state, obs, None, s(10)).state
    rolling = decide(done, obs, None, s(20), command=OperatorCommand.ROLLBACK)
    assert set(of_kind(rolling.actions, RollBack)) == {
        RollBack(device_id=d, to_version=OLD) for d in state.targets
    }
    assert rolling.state.status is S.ROLLING_BACK


@pytest.mark.parametrize(
    ("status", "command"),
    [
        (S.COMPLETED, OperatorCommand.PAUSE),
        (S.COMPLETED, OperatorCommand.RESUME),
        (S.RUNNING, OperatorCommand.RESUME),  # no-op, not an error
        (S.ROLLED_BACK, OperatorCommand.ABORT),
        (S.ROLLING_BACK, OperatorCommand.PAUSE),
    ],
)
def test_commands_the_status_forbids_are_refused(
    status: RolloutStatus, command: OperatorCommand
) -> None:
    state, _ = start()
    state = state.model_copy(update={"status": status})
    if status is S.RUNNING:
        assert apply_command(state, command, s(1)).state == state
        return
    with pytest.raises(
        RolloutCommandError, match=f"cannot {command.value} rollout 'r-1': it is {status.value}"
    ):
        apply_command(state, command, s(1))


def test_lost_assignment_is_adopted_not_repeated() -> None:
    devices = fleet(4)
    state = new_rollout("r-1", spec(waves=TWO_WAVES), devices, {}, T0)
    obs = idle(devices)
    first = wave(state, 0)
    # The orchestrator published the canary's desired state, then crashed before saving.
    obs[first[0]] = observe(first[0], assigned_at=T0)
    decision = decide(state, obs, None, s(1))
    assert [a.device_id for a in of_kind(decision.actions, Assign)] == [first[1]]
    assert decision.state.devices[first[0]].assigned_at == T0


def test_unconfirmed_actions_reissue_in_flight_assignments_and_rollbacks() -> None:
    state, obs = start(failure_policy=FailurePolicy.ROLLBACK_FAILED)
    good, bad = wave(state, 0)
    assert unconfirmed_actions(state) == [
        Assign(device_id=good, wave=0),
        Assign(device_id=bad, wave=0),
    ]
    # The bad device activated the new version, then failed on it.
    obs[good] = healthy(good, s(5))
    obs[bad] = observe(bad, version=NEW, event=EventKind.FAILED, at=s(6))
    paused = decide(state, obs, None, s(10)).state
    assert unconfirmed_actions(paused) == [RollBack(device_id=bad, to_version=OLD)]
    obs[bad] = observe(bad, version=OLD)
    assert unconfirmed_actions(decide(paused, obs, None, s(11)).state) == []


def test_naive_time_is_refused() -> None:
    state, obs = start()
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(state, obs, None, datetime(2024, 1, 1))


def test_new_rollout_refuses_devices_held_by_another_active_rollout() -> None:
    devices = fleet(4)
    other = new_rollout("r-0", spec(selector={"device_ids": ["dev-001"]}), devices, {}, T0)
    from edgefleet.fleet.rollouts import RolloutOverlapError

    with pytest.raises(RolloutOverlapError, match="dev-001 \\(held by active rollout 'r-0'\\)"):
        new_rollout("r-1", spec(), devices, {"r-0": held_devices(other)}, T0)


def test_rollout_state_round_trips_through_json() -> None:
    state, _ = start(maintenance_window=MaintenanceWindow(start=time(1), end=time(5)))
    assert RolloutState.model_validate_json(state.model_dump_json()) == state
    assert RolloutSpec.model_validate_json(state.spec.model_dump_json()) == state.spec
