"""The rollout decision logic: a pure function from (rollout, observations, metrics, now)
to (new rollout state, actions).

No I/O, no clock, no randomness: `decide` reads only its arguments. The orchestrator
persists ``Decision.state`` *before* it carries out ``Decision.actions``; every action is
derived from the state, so a restarted orchestrator neither skips a wave nor repeats an
assignment, and `decide` applied to its own output with the same inputs returns no new
action (it iterates to a fixed point within one call). After a crash between persisting
and acting, `unconfirmed_actions` lists what must be (re-)done; doing it twice is harmless
(re-publish the stored signed desired state).

Rules:

1. **Plan.** `new_rollout` selects the targets (`edgefleet.fleet.rollouts.selector`: a stable hash
   order), refuses devices held by another active rollout, and fixes the waves. Devices
   that join the fleet later are not added.
2. **Assignment.** Devices of waves up to the current one are assigned (``Assign``) in
   plan order, only while the rollout is RUNNING or SOAKING, only inside the maintenance
   window, and at most ``max_assignments_per_minute`` in any 60 s. Offline devices are
   assigned too: the retained desired state reaches them when they reconnect. A device
   is assigned at most once; the version it ran then is kept for a rollback.
3. **Device progress** comes from the latest event received *after* the assignment:
   ``failed``, ``rejected`` or ``rolled_back`` → FAILED (sticky; a HEALTHY device that
   later reports one becomes FAILED); running the target version with ``healthy`` or
   ``committed`` as its last event (or already running it when assigned) → HEALTHY;
   otherwise OFFLINE, DOWNLOADING, INSTALLED or ASSIGNED. A device neither healthy nor
   failed ``timeout_s`` after its assignment becomes TIMED_OUT (``MarkTimedOut``) and
   counts as failed, or leaves the ratios' denominator, per ``timeouts_count_as_failure``;
   it becomes HEALTHY or FAILED if it reports later. Durations are compared with the
   time elapsed (`edgefleet.fleet.rollouts.gates.span_s`), never added to a time: a
   stored spec with an absurd ``timeout_s`` means "never", not an `OverflowError`.
4. **Gate** of a wave, over the wave's own devices: it *fails* at once when the failure
   ratio exceeds ``max_failure_ratio``, when a metric guard is violated, when every
   device has settled below ``min_success_ratio``, or when guards still lack samples
   ``metrics_timeout_s`` after the soak. It *passes* when the success ratio is reached,
   ``soak_s`` has elapsed since the wave's last device became healthy, and every metric
   guard holds. Guards: error rate of the new version minus that of the previous version
   on the same wave ≤ ``max_error_rate_increase``; p95 latency new / old ≤
   ``max_latency_p95_ratio``; drift score of the new version ≤ ``max_drift_score``.
   Comparing guards are skipped (and the gate says so) when the wave ran no previous
   version. Earlier waves keep being watched: a late failure that takes a passed wave
   over its failure ratio fails that wave's gate.
5. **Next wave** (``StartWave``) only after ``GateDecision(passed=True)`` of the current
   one; the last wave's pass completes the rollout (``Complete``).
6. **Failure policy** on a failed gate: PAUSE → PAUSED; ROLLBACK_ALL → ROLLING_BACK, a
   ``RollBack`` to each touched device's previous version; ROLLBACK_FAILED → ``RollBack``
   of the failed and timed-out devices, then PAUSED.
7. **Rolling back** ends ROLLED_BACK once every touched device runs its previous
   version again, or FAILED once each one left has had ``timeout_s`` to do so. Rollbacks
   ignore the maintenance window: undoing harm does not wait.
8. **Operator commands** (`apply_command`): pause (RUNNING, SOAKING, CREATED → PAUSED);
   resume (PAUSED → RUNNING; resuming past a failed gate records it as passed by the
   operator); abort (→ ABORTED: stop assigning, leave devices as they are); rollback
   (from any status, also COMPLETED or ABORTED → ROLLING_BACK). Repeating a command is a
   no-op; a command the status forbids raises `RolloutCommandError`. A rollout whose
   deciding failed is paused with the error as its reason (`pause_for_error`).
9. **Model lifecycle** (``model_state``, the version's `ModelState`, read by the
   orchestrator each tick): the first (canary) wave runs whatever the version's state,
   but a rollout goes on past a passed gate (next wave, or completion) only while its
   version is APPROVED; until then it stays RUNNING, ``held`` naming why ("waiting for
   model approval of NAME VERSION", one ``held`` history line and one ``Hold`` action),
   and goes on at the first tick that sees the version approved. A version that becomes
   REJECTED or RETIRED pauses every started rollout of it with the reason, whatever its
   failure policy: devices are left as they are and an operator decides (roll back, or
   abort). Resuming is refused (`RolloutCommandError`) for a rejected or retired version,
   and for an unapproved one when the resume would go past the canary wave (the rollout
   is past wave 0, or resumes over wave 0's failed gate).
10. **Approval** (`edgefleet.fleet.rollouts.approval`): a WAITING_FOR_APPROVAL rollout
   assigns nothing; APPROVAL_DENIED is terminal. Pause and resume do not apply to a
   waiting rollout; abort and rollback do.
11. A rollout in a terminal status (COMPLETED, ABORTED, ROLLED_BACK, FAILED) holds no
   devices and assigns nothing; it still records rollback confirmations and, unless
   aborted, how its in-flight devices end (a gate with ``min_success_ratio`` below 1 can
   complete a rollout before every device has settled).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edgefleet.fleet.governance.lifecycle import ModelState, may_pass_first_wave
from edgefleet.fleet.rollouts.approval import ApprovalRules, approval_reasons, request_approval
from edgefleet.fleet.rollouts.gates import (
    GateVerdict,
    elapsed_s,
    evaluate_gate,
    failure_reasons,
    span_s,
)
from edgefleet.fleet.rollouts.model import (
    TERMINAL_STATUSES,
    Action,
    Assign,
    Candidate,
    Complete,
    Decision,
    DeviceObservation,
    DeviceRecord,
    DeviceRolloutState,
    FailurePolicy,
    GateDecision,
    Hold,
    MarkTimedOut,
    OperatorCommand,
    Pause,
    RollBack,
    RolloutCommandError,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    StartWave,
    TimelineEntry,
    WaveMetrics,
)
from edgefleet.fleet.rollouts.selector import check_overlap, plan_waves, select_targets, split_waves
from edgefleet.shared.messages import EventKind
from edgefleet.shared.replace import replace

S = RolloutStatus
D = DeviceRolloutState
FAILURE_EVENTS = frozenset({EventKind.FAILED, EventKind.REJECTED, EventKind.ROLLED_BACK})
HEALTHY_EVENTS = frozenset({EventKind.HEALTHY, EventKind.COMMITTED})
PROGRESS = {
    EventKind.DOWNLOADING: D.DOWNLOADING,
    EventKind.VERIFIED: D.DOWNLOADING,
    EventKind.STAGED: D.DOWNLOADING,
    EventKind.ACTIVATED: D.INSTALLED,
}
IN_FLIGHT = frozenset({D.ASSIGNED, D.DOWNLOADING, D.INSTALLED, D.OFFLINE})


def new_rollout(
    rollout_id: str,
    spec: RolloutSpec,
    candidates: Iterable[Candidate],
    active: Mapping[str, Collection[str]],
    now: datetime,
    *,
    creator: str | None = None,
    approval: ApprovalRules | None = None,
) -> RolloutState:
    """A CREATED rollout with its targets and waves fixed, or WAITING_FOR_APPROVAL when
    ``approval`` applies to its targets (`edgefleet.fleet.rollouts.approval`).

    ``active`` maps each other active rollout's id to the devices it holds (`held_devices`);
    ``creator`` is the creating person's id. Raises `SelectionError` when the selector
    matches nothing or names unknown devices, and `RolloutOverlapError` when a target
    belongs to another active rollout.
    """
    _require_aware(now)
    seed = spec.seed or rollout_id
    by_id = {c.device_id: c for c in candidates}
    targets = select_targets(by_id.values(), spec.selector, seed=seed)
    check_overlap(targets, {rid: held for rid, held in active.items() if rid != rollout_id})
    waves = plan_waves(spec.waves, len(targets), spec.gate)
    devices = {
        device_id: DeviceRecord(device_id=device_id, wave=index)
        for index, members in enumerate(split_waves(targets, waves))
        for device_id in members
    }
    state = RolloutState(
        rollout_id=rollout_id,
        spec=spec,
        seed=seed,
        targets=tuple(targets),
        waves=waves,
        devices=devices,
        created_at=now,
        updated_at=now,
        creator=creator,
    )
    reasons = approval_reasons(approval, (by_id[d] for d in targets)) if approval else ()
    return request_approval(state, reasons, now)[0] if reasons else state


def held_devices(state: RolloutState) -> frozenset[str]:
    """The devices this rollout keeps from other rollouts: all its targets while active."""
    return frozenset(state.targets) if state.active else frozenset()


@dataclass
class _Tick:
    now: datetime
    observations: Mapping[str, DeviceObservation]
    metrics: WaveMetrics | None
    model_state: ModelState = ModelState.APPROVED
    actions: list[Action] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    # The records `_refresh` left as they were, and the status it saw then. A device's
    # progress depends only on its record, its observation, ``now``, the plan and the
    # status, and the others stay the same within one tick, so such a record needs no
    # second look (decide iterates to a fixed point) until the status changes.
    settled: dict[str, DeviceRecord] = field(default_factory=dict)
    settled_status: RolloutStatus | None = None

    def note(
        self, event: str, message: str, *, wave: int | None = None, device_id: str | None = None
    ) -> None:
        self.timeline.append(
            TimelineEntry(at=self.now, event=event, message=message, wave=wave, device_id=device_id)
        )


def decide(
    rollout: RolloutState,
    observations: Mapping[str, DeviceObservation],
    metrics: WaveMetrics | None,
    now: datetime,
    *,
    command: OperatorCommand | None = None,
    model_state: ModelState = ModelState.APPROVED,
) -> Decision:
    """One tick of the rollout: apply ``command`` if any, then the rules above.

    ``metrics`` are used only if they are for the current wave; ``model_state`` is the
    lifecycle state of the version rolled out (rule 9; the orchestrator always passes
    it). Raises `ValueError` for a naive ``now`` and `RolloutCommandError` for a command
    the status (or the version's state) forbids.
    """
    _require_aware(now)
    tick = _Tick(now=now, observations=observations, metrics=metrics, model_state=model_state)
    state = rollout
    if command is not None:
        state = _command(state, command, tick)
    for _ in range(len(state.waves) + 8):
        before = state
        state = _advance(_refresh(state, tick), tick)
        if state == before:
            break
    if state != rollout:
        state = replace(state, updated_at=now)
    return Decision(state=state, actions=tuple(tick.actions), timeline=tuple(tick.timeline))


def apply_command(
    state: RolloutState,
    command: OperatorCommand,
    now: datetime,
    *,
    model_state: ModelState = ModelState.APPROVED,
) -> Decision:
    """The rollout after an operator's command, without waiting for the next tick.

    Raises `RolloutCommandError` naming the command and the status (or the version's
    ``model_state``, rule 9) that forbids it, and `ValueError` for a naive ``now``.
    """
    _require_aware(now)
    tick = _Tick(now=now, observations={}, metrics=None, model_state=model_state)
    new = _command(state, command, tick)
    if new != state:
        new = replace(new, updated_at=now)
    return Decision(state=new, actions=tuple(tick.actions), timeline=tuple(tick.timeline))


def pause_for_error(state: RolloutState, reason: str, now: datetime) -> Decision:
    """The rollout paused because deciding it failed (the orchestrator caught ``reason``).

    A rollout already paused for this same reason is left as it is, so an error that
    repeats at every tick is recorded once. A terminal rollout is left as it is. Raises
    `ValueError` for a naive ``now``.
    """
    _require_aware(now)
    if not state.active or (state.status is S.PAUSED and state.status_reason == reason):
        return Decision(state=state)
    tick = _Tick(now=now, observations={}, metrics=None)
    paused = replace(_pause(state, reason, None, tick), updated_at=now)
    return Decision(state=paused, actions=tuple(tick.actions), timeline=tuple(tick.timeline))


def unconfirmed_actions(state: RolloutState) -> list[Action]:
    """What a restarted orchestrator must make sure was done: the assignment of every
    in-flight device (unless the rollout was aborted; a completed rollout with a low
    success ratio can still have some) and the rollback of every device not yet confirmed
    rolled back."""
    actions: list[Action] = []
    for device_id in state.targets:
        record = state.devices[device_id]
        if record.rollback_requested_at is not None:
            if record.state is not D.ROLLED_BACK:
                actions.append(RollBack(device_id=device_id, to_version=record.from_version))
        elif state.status is not S.ABORTED and record.state in IN_FLIGHT:
            actions.append(Assign(device_id=device_id, wave=record.wave))
    return actions


# --- operator commands ------------------------------------------------------------------


def _command(state: RolloutState, command: OperatorCommand, tick: _Tick) -> RolloutState:
    no_op, allowed, handler = _COMMANDS[command]
    if state.status in no_op:
        return state
    if state.status not in allowed:
        raise RolloutCommandError(
            f"cannot {command.value} rollout {state.rollout_id!r}: it is {state.status.value}, "
            f"expected one of {', '.join(sorted(s.value for s in allowed))}"
        )
    return handler(state, tick)


def _operator_pause(state: RolloutState, tick: _Tick) -> RolloutState:
    return _pause(state, "paused by operator", None, tick)


def _operator_resume(state: RolloutState, tick: _Tick) -> RolloutState:
    refused = resume_refusal(state, tick.model_state)
    if refused is not None:
        raise RolloutCommandError(f"cannot resume rollout {state.rollout_id!r}: {refused}")
    overridden = state.overridden_waves
    if state.paused_wave is not None:
        reason = "operator resumed past the failed gate"
        tick.actions.append(GateDecision(wave=state.paused_wave, passed=True, reasons=(reason,)))
        overridden = (*overridden, state.paused_wave)
    tick.note("resumed", "resumed by operator", wave=state.paused_wave)
    return replace(
        state,
        status=S.RUNNING if state.current_wave >= 0 else S.CREATED,
        status_reason=None,
        paused_wave=None,
        overridden_waves=overridden,
    )


def _operator_abort(state: RolloutState, tick: _Tick) -> RolloutState:
    tick.note("aborted", "aborted by operator: no new assignment, devices left as they are")
    return _finish(state, S.ABORTED, "aborted by operator", tick)


def _operator_rollback(state: RolloutState, tick: _Tick) -> RolloutState:
    tick.note("rolling_back", "rollback requested by operator")
    retry = {  # after a FAILED rollback, ask the stragglers again and restart their clocks
        d: replace(r, rollback_requested_at=None)
        for d, r in state.devices.items()
        if r.rollback_requested_at is not None and r.state is not D.ROLLED_BACK
    }
    return replace(
        state,
        status=S.ROLLING_BACK,
        status_reason="rollback requested by operator",
        finished_at=None,
        devices={**state.devices, **retry},
    )


def resume_refusal(state: RolloutState, model_state: ModelState) -> str | None:
    """Why resuming ``state`` is refused for its version's ``model_state`` (rule 9), or
    None when it may resume."""
    what = _version(state)
    if model_state in (ModelState.REJECTED, ModelState.RETIRED):
        return f"model {what} is {model_state.value}; roll back or abort instead"
    past_canary = state.current_wave >= 1 or state.paused_wave == 0
    if past_canary and not may_pass_first_wave(model_state):
        return (
            f"model {what} is {model_state.value}, not approved: a rollout goes past its"
            " canary wave only with an approved version"
        )
    return None


def _version(state: RolloutState) -> str:
    return f"{state.spec.model.name} {state.spec.model.version}"


_Handler = Callable[[RolloutState, _Tick], RolloutState]
_STARTED = frozenset({S.CREATED, S.RUNNING, S.SOAKING})
# command -> (statuses where it is a no-op, statuses where it applies, handler)
_COMMANDS: dict[OperatorCommand, tuple[frozenset[S], frozenset[S], _Handler]] = {
    OperatorCommand.PAUSE: (frozenset({S.PAUSED}), _STARTED, _operator_pause),
    OperatorCommand.RESUME: (_STARTED, frozenset({S.PAUSED}), _operator_resume),
    OperatorCommand.ABORT: (
        frozenset({S.ABORTED}),
        frozenset(S) - TERMINAL_STATUSES,
        _operator_abort,
    ),
    OperatorCommand.ROLLBACK: (
        frozenset({S.ROLLING_BACK, S.ROLLED_BACK}),
        frozenset(S) - {S.ROLLING_BACK, S.ROLLED_BACK},
        _operator_rollback,
    ),
}


# --- device progress --------------------------------------------------------------------


def _refresh(state: RolloutState, tick: _Tick) -> RolloutState:
    if tick.settled_status is not state.status:
        tick.settled.clear()
        tick.settled_status = state.status
    settled = tick.settled
    changed: dict[str, DeviceRecord] = {}
    for device_id, record in state.devices.items():
        if settled.get(device_id) is record:
            continue
        new = _refresh_device(state, record, tick)
        if new is record:
            settled[device_id] = record
        else:
            changed[device_id] = new
    if not changed:
        return state
    return replace(state, devices={**state.devices, **changed})


def _refresh_device(state: RolloutState, record: DeviceRecord, tick: _Tick) -> DeviceRecord:
    obs = tick.observations.get(record.device_id)
    target = state.spec.model.version
    if record.assigned_at is None:
        if obs is None or obs.assigned_at is None or not state.active:
            return record
        # Our own state lost this assignment (crash before persisting): adopt it rather
        # than assign again.
        before = obs.previous_version if obs.current_version == target else obs.current_version
        record = replace(record, state=D.ASSIGNED, assigned_at=obs.assigned_at, from_version=before)
        tick.note(
            "adopted",
            "assignment recovered from the director's record",
            wave=record.wave,
            device_id=record.device_id,
        )
    if record.rollback_requested_at is not None:
        if (
            record.state is not D.ROLLED_BACK
            and obs is not None
            and obs.current_version == record.from_version
        ):
            tick.note(
                "device_rolled_back",
                f"back on {record.from_version}",
                wave=record.wave,
                device_id=record.device_id,
            )
            return replace(record, state=D.ROLLED_BACK)
        return record
    if state.status is S.ABORTED or (not state.active and record.state not in IN_FLIGHT):
        return record
    return _classify(state, record, obs, tick)


def _classify(  # noqa: PLR0911 - one return per progress rule
    state: RolloutState, record: DeviceRecord, obs: DeviceObservation | None, tick: _Tick
) -> DeviceRecord:
    assert record.assigned_at is not None
    target = state.spec.model.version
    since = record.healthy_at if record.state is D.HEALTHY else record.assigned_at
    recent = (
        obs.last_event_kind
        if obs is not None
        and obs.last_event_at is not None
        and since is not None
        and obs.last_event_at >= since
        else None
    )
    if record.state is D.FAILED:
        return record
    if recent in FAILURE_EVENTS:
        reason = f"device reported {recent}"
        tick.note("device_failed", reason, wave=record.wave, device_id=record.device_id)
        return replace(record, state=D.FAILED, failure=reason, timed_out=False)
    if record.state is D.HEALTHY:
        return record
    if (
        obs is not None
        and obs.current_version == target
        and (obs.last_event_kind in HEALTHY_EVENTS or record.from_version == target)
    ):
        at = max(record.assigned_at, obs.last_event_at or record.assigned_at)
        return replace(record, state=D.HEALTHY, healthy_at=at, failure=None, timed_out=False)
    if record.state is D.TIMED_OUT:
        return record
    timeout_s = state.waves[record.wave].gate.timeout_s
    if elapsed_s(record.assigned_at, tick.now) >= span_s(timeout_s):
        reason = f"not healthy within {timeout_s:g} s of assignment"
        tick.actions.append(MarkTimedOut(device_id=record.device_id))
        tick.note("device_timed_out", reason, wave=record.wave, device_id=record.device_id)
        return replace(record, state=D.TIMED_OUT, failure=reason, timed_out=True)
    if obs is None or not obs.online:
        progress = D.OFFLINE
    else:
        progress = PROGRESS.get(recent, D.ASSIGNED) if recent is not None else D.ASSIGNED
    return record if progress is record.state else replace(record, state=progress)


# --- the rollout ------------------------------------------------------------------------


def _advance(state: RolloutState, tick: _Tick) -> RolloutState:
    if state.status in (S.CREATED, S.RUNNING, S.SOAKING) and tick.model_state in (
        ModelState.REJECTED,
        ModelState.RETIRED,
    ):
        why = f"model {_version(state)} became {tick.model_state.value}"
        return _pause(replace(state, held=None, held_wave=None), why, None, tick)
    if state.status is S.CREATED:
        return _start_wave(state, 0, tick)
    if state.status in (S.RUNNING, S.SOAKING):
        return _run(state, tick)
    if state.status is S.ROLLING_BACK:
        return _roll_back(state, tick)
    return state


def _start_wave(state: RolloutState, index: int, tick: _Tick) -> RolloutState:
    tick.actions.append(StartWave(index=index))
    size = state.waves[index].end - (state.waves[index - 1].end if index else 0)
    tick.note("wave_started", f"wave {index} started: {size} device(s)", wave=index)
    return replace(state, status=S.RUNNING, current_wave=index, wave_started_at=tick.now)


def _run(state: RolloutState, tick: _Tick) -> RolloutState:
    for wave in range(state.current_wave):
        if wave not in state.overridden_waves:
            late = failure_reasons(state.wave_members(wave), state.waves[wave].gate)
            if late:
                return _gate_failed(
                    state, wave, [f"after its gate passed: {r}" for r in late], tick
                )
    state = _assign(state, tick)
    wave = state.current_wave
    if state.held_wave == wave:  # its gate passed; it waits for the version's approval
        late = failure_reasons(state.wave_members(wave), state.waves[wave].gate)
        if late:
            held = replace(state, held=None, held_wave=None)
            return _gate_failed(held, wave, [f"after its gate passed: {r}" for r in late], tick)
        return _go_on(state, wave, tick)
    metrics = tick.metrics if tick.metrics is not None and tick.metrics.wave == wave else None
    if wave in state.overridden_waves:  # the operator resumed past this wave's failed gate
        verdict = GateVerdict(True)
    else:
        verdict = evaluate_gate(
            state.wave_members(wave),
            state.waves[wave].gate,
            metrics,
            wave_started_at=state.wave_started_at or tick.now,
            now=tick.now,
        )
    if verdict.passed is None:
        status = S.SOAKING if verdict.soaking else S.RUNNING
        return state if status is state.status else replace(state, status=status)
    if not verdict.passed:
        return _gate_failed(state, wave, verdict.reasons, tick)
    if wave not in state.overridden_waves:  # the resume already recorded this pass
        tick.actions.append(GateDecision(wave=wave, passed=True, reasons=tuple(verdict.reasons)))
        tick.note("gate_passed", "; ".join(verdict.reasons), wave=wave)
    return _go_on(state, wave, tick)


def _go_on(state: RolloutState, wave: int, tick: _Tick) -> RolloutState:
    """After ``wave``'s gate passed: the next wave or completion, once the version is
    approved (rule 9); held until then."""
    if not may_pass_first_wave(tick.model_state):
        if state.held_wave == wave:
            return state
        why = f"waiting for model approval of {_version(state)}"
        tick.actions.append(Hold(reason=why))
        tick.note("held", why, wave=wave)
        status = S.RUNNING
        return replace(state, status=status, status_reason=why, held=why, held_wave=wave)
    if state.held_wave is not None:
        state = replace(state, held=None, held_wave=None, status_reason=None)
    if wave + 1 < len(state.waves):
        return _start_wave(state, wave + 1, tick)
    tick.actions.append(Complete())
    tick.note("completed", f"all {len(state.targets)} target device(s) done")
    return _finish(state, S.COMPLETED, None, tick)


def _assign(state: RolloutState, tick: _Tick) -> RolloutState:
    window = state.spec.maintenance_window
    if window is not None and not window.contains(tick.now):
        return state
    budget = len(state.targets)
    if state.spec.max_assignments_per_minute is not None:
        minute_ago = tick.now - timedelta(seconds=60)
        recent = sum(
            1 for r in state.devices.values() if r.assigned_at and r.assigned_at > minute_ago
        )
        budget = state.spec.max_assignments_per_minute - recent
    assigned: dict[str, DeviceRecord] = {}
    for device_id in state.targets[: state.waves[state.current_wave].end]:
        if len(assigned) >= budget:
            break
        record = state.devices[device_id]
        if record.assigned_at is not None:
            continue
        obs = tick.observations.get(device_id)
        assigned[device_id] = replace(
            record,
            state=D.ASSIGNED,
            assigned_at=tick.now,
            from_version=obs.current_version if obs is not None else None,
        )
        tick.actions.append(Assign(device_id=device_id, wave=record.wave))
    if not assigned:
        return state
    return replace(state, devices={**state.devices, **assigned})


def _gate_failed(state: RolloutState, wave: int, reasons: list[str], tick: _Tick) -> RolloutState:
    tick.actions.append(GateDecision(wave=wave, passed=False, reasons=tuple(reasons)))
    why = f"gate of wave {wave} failed: " + "; ".join(reasons)
    tick.note("gate_failed", why, wave=wave)
    policy = state.spec.failure_policy
    if policy is FailurePolicy.ROLLBACK_ALL:
        tick.note("rolling_back", "rolling back every touched device")
        return replace(state, status=S.ROLLING_BACK, status_reason=why)
    if policy is FailurePolicy.ROLLBACK_FAILED:
        failed = [r for r in state.devices.values() if r.failure is not None]
        state = _request_rollbacks(state, failed, tick)
    return _pause(state, why, wave, tick)


def _pause(state: RolloutState, reason: str, wave: int | None, tick: _Tick) -> RolloutState:
    tick.actions.append(Pause(reason=reason))
    tick.note("paused", reason, wave=wave)
    return replace(state, status=S.PAUSED, status_reason=reason, paused_wave=wave)


def _request_rollbacks(
    state: RolloutState, records: Iterable[DeviceRecord], tick: _Tick
) -> RolloutState:
    requested: dict[str, DeviceRecord] = {}
    for record in records:
        if record.assigned_at is None or record.rollback_requested_at is not None:
            continue
        tick.actions.append(RollBack(device_id=record.device_id, to_version=record.from_version))
        requested[record.device_id] = replace(record, rollback_requested_at=tick.now)
    if not requested:
        return state
    return replace(state, devices={**state.devices, **requested})


def _roll_back(state: RolloutState, tick: _Tick) -> RolloutState:
    state = _request_rollbacks(state, (state.devices[d] for d in state.targets), tick)
    left = [
        r
        for r in state.devices.values()
        if r.assigned_at is not None and r.state is not D.ROLLED_BACK
    ]
    if not left:
        tick.note("rolled_back", "every touched device runs its previous version again")
        return _finish(state, S.ROLLED_BACK, state.status_reason, tick)

    def expired(r: DeviceRecord) -> bool:
        assert r.rollback_requested_at is not None
        limit_s = span_s(state.waves[r.wave].gate.timeout_s)
        return elapsed_s(r.rollback_requested_at, tick.now) >= limit_s

    if all(expired(r) for r in left):
        names = ", ".join(r.device_id for r in left[:10])
        why = f"{len(left)} device(s) did not confirm the rollback in time: {names}"
        tick.note("failed", why)
        return _finish(state, S.FAILED, why, tick)
    return state


def _finish(
    state: RolloutState, status: RolloutStatus, reason: str | None, tick: _Tick
) -> RolloutState:
    return replace(state, status=status, status_reason=reason, finished_at=tick.now)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware (UTC), found naive {now.isoformat()}")
