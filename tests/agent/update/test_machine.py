"""The pure update machine: one test per transition, then properties over random runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.update.machine import Phase, UpdatePolicy, UpdateState, backoff_s, step
from edgefleet.agent.update.types import (
    Activate,
    Activated,
    ActivationFailed,
    Budget,
    Cleanup,
    Commit,
    DesiredReceived,
    DesiredRejected,
    DownloadDone,
    DownloadFailed,
    DownloadProgress,
    Effect,
    EnsureActive,
    Event,
    GoldenResult,
    InstalledModel,
    ProbationSample,
    ProbationTimerExpired,
    Report,
    Resumed,
    RollBack,
    RunGolden,
    Stage,
    Staged,
    StartDownload,
    Tick,
    UpdateTarget,
    Verified,
    Verify,
    VerifyFailed,
)
from edgefleet.shared.messages import EventKind
from edgefleet.shared.replace import replace
from tests.agent.update.support import desired

T0 = datetime(2024, 5, 1, tzinfo=UTC)
OLD = InstalledModel(name="wine", version="1.0.0", sha256="a" * 64)
POLICY = UpdatePolicy(max_download_attempts=3, retry_base_s=2, golden_timeout_s=30)
BUDGET = Budget(max_error_rate=0.2, max_latency_p95_ms=100, min_inferences=5, duration_s=60)


def target(
    seq: int = 1, sha: str = "b", version: str = "1.1.0", *, rollback: bool = False
) -> UpdateTarget:
    return UpdateTarget(
        desired_seq=seq, name="wine", version=version, sha256=sha * 64, length=10, rollback=rollback
    )


NEW = target()


def run(state: UpdateState, *events: Event, now: datetime = T0) -> tuple[UpdateState, list[Effect]]:
    effects = []
    for event in events:
        state, out = step(state, event, now, policy=POLICY)
        effects.extend(out)
    return state, effects


def reports(effects) -> list[EventKind]:
    return [e.event for e in effects if isinstance(e, Report)]


def idle() -> UpdateState:
    return UpdateState(active=OLD, last_desired_seq=0)


def at(phase: Phase, t: UpdateTarget = NEW) -> UpdateState:
    """Drive the machine through real transitions to ``phase``."""
    sha = t.sha256
    path: list[Event] = [desired(t)]
    if phase is not Phase.DOWNLOADING:
        path.append(DownloadDone(sha256=sha))
    if phase in (Phase.STAGED, Phase.ACTIVATING, Phase.PROBATION):
        path += [Verified(sha256=sha), Staged(sha256=sha, budget=BUDGET)]
    if phase in (Phase.ACTIVATING, Phase.PROBATION):
        path.append(Tick(now=T0))
    if phase is Phase.PROBATION:
        path.append(Activated(sha256=sha))
    state, _ = run(idle(), *path)
    assert state.phase is phase
    return state


def test_new_desired_while_idle_starts_downloading():
    state, effects = run(idle(), desired(NEW))
    assert state.phase is Phase.DOWNLOADING
    assert effects[1] == StartDownload(target=NEW)
    assert reports(effects) == [EventKind.DOWNLOADING]
    assert state.history[-1].to_phase is Phase.DOWNLOADING


def test_desired_equal_to_active_is_a_no_op():
    same = UpdateTarget(desired_seq=1, name="wine", version="1.0.0", sha256=OLD.sha256, length=1)
    state, effects = run(idle(), desired(same))
    assert state.phase is Phase.IDLE
    assert state.last_desired_seq == 1
    assert not [e for e in effects if not isinstance(e, Report)]


@pytest.mark.parametrize("seq", [0, -1])
def test_replayed_desired_state_is_rejected(seq: int):
    start = replace(idle(), last_desired_seq=5)
    offer = desired(target(seq=5 + seq))
    state, effects = run(start, offer)
    assert reports(effects) == ([] if seq == 0 else [EventKind.REJECTED])
    assert [e for e in effects if not isinstance(e, Report)] == []
    if seq == 0:
        assert state == start
    else:  # only the rejection is remembered, so its redelivery is not reported again
        assert replace(state, last_error=None, last_rejected_envelope=None) == start
        assert state.last_rejected_envelope == offer.envelope_sha256
        assert "seq 4 is not newer than the last accepted 5" in (state.last_error or "")


def test_retained_rejected_desired_state_is_reported_once():
    expired = desired(target(seq=1), expires_at=T0 - timedelta(minutes=1))
    state, effects = run(idle(), expired, expired)
    assert reports(effects) == [EventKind.REJECTED]
    assert "expired at" in (effects[0].reason or "")
    assert state.phase is Phase.IDLE
    assert state.last_desired_seq == 0


def test_envelope_that_did_not_open_is_reported_once():
    forged = DesiredRejected(reason="signed by unknown key(s) ab12", envelope_sha256="f" * 64)
    state, effects = run(idle(), forged, forged)
    assert effects == [
        Report(event=EventKind.REJECTED, reason=forged.reason, detail={"desired_seq": None})
    ]
    assert state.last_error == forged.reason


def test_unsigned_downgrade_is_rejected_before_anything_is_downloaded():
    older = target(seq=1, version="0.9.0")
    state, effects = run(idle(), desired(older))
    assert state.phase is Phase.FAILED
    assert reports(effects) == [EventKind.REJECTED]
    assert "0.9.0 is older than the active 1.0.0" in (effects[0].reason or "")
    assert not [e for e in effects if isinstance(e, StartDownload)]
    assert run(state, desired(older)) == (state, []), "its redelivery is no new rejection"


def test_signed_rollback_to_an_older_model_downloads_it():
    state, effects = run(idle(), desired(target(seq=1, version="0.9.0", rollback=True)))
    assert state.phase is Phase.DOWNLOADING
    assert any(isinstance(e, StartDownload) for e in effects)


@pytest.mark.parametrize(
    ("golden_passed", "expected"), [(True, Phase.FAILED), (False, Phase.DOWNLOADING)]
)
def test_queued_target_is_judged_against_the_model_active_when_it_starts(
    golden_passed: bool, expected: Phase
):
    # 1.0.5 is newer than OLD (1.0.0) but older than NEW (1.1.0), on probation now.
    between = target(seq=2, sha="c", version="1.0.5")
    state, _ = run(at(Phase.PROBATION), desired(between))
    assert state.pending == between
    samples = [ProbationSample(ok=True, latency_ms=1) for _ in range(5)]
    golden = GoldenResult(sha256=NEW.sha256, passed=golden_passed)
    state, effects = run(state, golden, *samples)
    assert state.phase is expected  # committed 1.1.0: a downgrade; rolled back: an upgrade
    assert state.target == between
    if expected is Phase.FAILED:
        assert "1.0.5 is older than the active 1.1.0" in (state.last_error or "")
        assert not [e for e in effects if isinstance(e, StartDownload)]
    else:
        assert StartDownload(target=between) in effects


@pytest.mark.parametrize(
    ("phase", "event", "expected_phase", "expected_effect", "report"),
    [
        (Phase.DOWNLOADING, DownloadDone(sha256=NEW.sha256), Phase.VERIFYING, Verify, "info"),
        (Phase.VERIFYING, Verified(sha256=NEW.sha256), Phase.VERIFYING, Stage, "verified"),
        (
            Phase.VERIFYING,
            VerifyFailed(sha256=NEW.sha256, reason="bad"),
            Phase.FAILED,
            Cleanup,
            "rejected",
        ),
        (Phase.STAGED, Tick(now=T0), Phase.ACTIVATING, Activate, "info"),
        (Phase.ACTIVATING, Activated(sha256=NEW.sha256), Phase.PROBATION, RunGolden, "activated"),
        (
            Phase.ACTIVATING,
            ActivationFailed(sha256=NEW.sha256, reason="x"),
            Phase.ROLLED_BACK,
            RollBack,
            "rolled_back",
        ),
        (
            Phase.PROBATION,
            GoldenResult(sha256=NEW.sha256, passed=False, detail="d"),
            Phase.ROLLED_BACK,
            RollBack,
            "rolled_back",
        ),
        (
            Phase.DOWNLOADING,
            DownloadFailed(sha256=NEW.sha256, transient=False, reason="too long", jitter=0.0),
            Phase.FAILED,
            Cleanup,
            "rejected",
        ),
    ],
)
def test_transition_table(phase, event, expected_phase, expected_effect, report):
    state, effects = run(at(phase), event)
    assert state.phase is expected_phase
    assert any(isinstance(e, expected_effect) for e in effects)
    assert report in reports(effects)


def test_staged_records_the_budget_and_reports():
    state, effects = run(
        at(Phase.VERIFYING), Verified(sha256=NEW.sha256), Staged(sha256=NEW.sha256, budget=BUDGET)
    )
    assert state.phase is Phase.STAGED
    assert state.budget == BUDGET
    assert EventKind.STAGED in reports(effects)


def test_event_about_another_target_is_ignored():
    state = at(Phase.DOWNLOADING)
    assert run(state, DownloadDone(sha256="c" * 64)) == (state, [])


def test_transient_download_failures_retry_with_backoff_then_fail():
    state = at(Phase.DOWNLOADING)
    # A draw of 0 takes nothing off: the full exponential backoff.
    fail = DownloadFailed(sha256=NEW.sha256, transient=True, reason="timeout", jitter=0.0)
    state, _ = run(state, DownloadProgress(sha256=NEW.sha256, downloaded_bytes=4), fail)
    assert state.retry_at == T0 + timedelta(seconds=2)
    assert run(state, Tick(now=T0 + timedelta(seconds=1)))[1] == []
    state, effects = run(state, Tick(now=T0 + timedelta(seconds=2)))
    assert effects == [StartDownload(target=NEW)]
    state, _ = run(state, fail)
    assert state.retry_at == T0 + timedelta(seconds=4)
    state, effects = run(state, Tick(now=T0 + timedelta(seconds=4)), fail)
    assert state.phase is Phase.FAILED
    assert EventKind.FAILED in reports(effects)


@given(attempt=st.integers(1, 12), jitter=st.floats(0, 1, exclude_max=True))
def test_retry_delay_stays_within_its_bounds(attempt: int, jitter: float):
    ceiling = min(POLICY.retry_max_s, POLICY.retry_base_s * 2 ** (attempt - 1))
    delay = backoff_s(attempt, POLICY, jitter)
    assert ceiling * (1 - POLICY.retry_jitter) <= delay <= ceiling


def test_retry_delay_follows_the_draw():
    failed = at(Phase.DOWNLOADING)
    retry_at = []
    for jitter in (0.1, 0.9):
        fail = DownloadFailed(sha256=NEW.sha256, transient=True, reason="reset", jitter=jitter)
        retry_at.append(run(failed, fail)[0].retry_at)
    # retry_base_s 2 and retry_jitter 0.5: 2 * (1 - 0.5 * jitter) seconds.
    assert retry_at == [T0 + timedelta(seconds=1.9), T0 + timedelta(seconds=1.1)]


def test_probation_commits_after_golden_and_budget():
    state, effects = run(at(Phase.PROBATION), GoldenResult(sha256=NEW.sha256, passed=True))
    assert state.phase is Phase.PROBATION  # the window is not over yet
    samples = [ProbationSample(ok=True, latency_ms=10) for _ in range(5)]
    state, effects = run(state, *samples)
    assert state.phase is Phase.COMMITTED
    assert Commit(model=NEW.model) in effects
    assert reports(effects)[-2:] == [EventKind.HEALTHY, EventKind.COMMITTED]
    assert state.active == NEW.model
    assert state.previous == OLD


def test_probation_rolls_back_on_errors_beyond_the_budget():
    state, effects = run(
        at(Phase.PROBATION),
        GoldenResult(sha256=NEW.sha256, passed=True),
        ProbationSample(ok=False, latency_ms=1),
        ProbationSample(ok=False, latency_ms=1),
    )
    assert state.phase is Phase.ROLLED_BACK
    rollback = next(e for e in effects if isinstance(e, RollBack))
    assert rollback.restore == OLD
    assert "2 errors" in rollback.reason
    assert state.active == OLD


def test_probation_rolls_back_on_slow_latency_p95():
    slow = [ProbationSample(ok=True, latency_ms=500) for _ in range(5)]
    state, _ = run(at(Phase.PROBATION), GoldenResult(sha256=NEW.sha256, passed=True), *slow)
    assert state.phase is Phase.ROLLED_BACK
    assert "latency p95 500.0 ms" in (state.last_error or "")


def test_probation_without_traffic_commits_on_golden_when_the_window_ends():
    state, _ = run(at(Phase.PROBATION), GoldenResult(sha256=NEW.sha256, passed=True))
    state, _ = run(state, Tick(now=T0 + timedelta(seconds=59)))
    assert state.phase is Phase.PROBATION
    state, _ = run(state, Tick(now=T0 + timedelta(seconds=60)))
    assert state.phase is Phase.COMMITTED


def test_golden_that_never_answers_rolls_back():
    state, _ = run(at(Phase.PROBATION), ProbationTimerExpired())
    assert state.phase is Phase.PROBATION
    state, _ = run(state, Tick(now=T0 + timedelta(seconds=91)))
    assert state.phase is Phase.ROLLED_BACK
    assert "no result" in (state.last_error or "")


def test_newer_desired_aborts_an_update_that_has_not_activated():
    newer = target(seq=2, sha="c", version="1.2.0")
    state, effects = run(at(Phase.STAGED), desired(newer))
    assert state.phase is Phase.DOWNLOADING
    assert state.target == newer
    assert Cleanup(sha256=NEW.sha256) in effects


def test_newer_desired_during_probation_waits_then_starts():
    newer = target(seq=2, sha="c", version="1.2.0")
    state, _ = run(at(Phase.PROBATION), desired(newer))
    assert state.phase is Phase.PROBATION
    assert state.pending == newer
    samples = [ProbationSample(ok=True, latency_ms=1) for _ in range(5)]
    state, effects = run(state, GoldenResult(sha256=NEW.sha256, passed=True), *samples)
    assert state.phase is Phase.DOWNLOADING
    assert state.target == newer
    assert Commit(model=NEW.model) in effects


def test_desired_asking_for_previous_model_during_probation_rolls_back_at_once():
    back = UpdateTarget(
        desired_seq=2, name="wine", version="1.0.0", sha256=OLD.sha256, length=1, rollback=True
    )
    state, effects = run(at(Phase.PROBATION), desired(back))
    assert state.phase is Phase.ROLLED_BACK
    assert state.active == OLD
    assert any(isinstance(e, RollBack) for e in effects)


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (Phase.DOWNLOADING, StartDownload),
        (Phase.VERIFYING, Verify),
        (Phase.ACTIVATING, Activate),
        (Phase.PROBATION, RunGolden),
    ],
)
def test_resumed_redoes_the_interrupted_step(phase: Phase, expected: type):
    state, effects = run(at(phase), Resumed())
    assert state.phase is phase
    assert any(isinstance(e, expected) for e in effects)


def test_resumed_in_staged_activates_on_the_next_tick():
    state, effects = run(at(Phase.STAGED), Resumed())
    assert effects == [EnsureActive(model=OLD)]
    state, effects = run(state, Tick(now=T0))
    assert state.phase is Phase.ACTIVATING


def test_agent_that_keeps_crashing_in_probation_rolls_back():
    state, effects = run(at(Phase.PROBATION), Resumed(), Resumed(), Resumed())
    assert state.phase is Phase.ROLLED_BACK
    assert "restarted 3 times" in (state.last_error or "")
    assert any(isinstance(e, RollBack) for e in effects)


def test_activation_interrupted_too_often_rolls_back_to_the_old_model():
    state, effects = run(at(Phase.ACTIVATING), Resumed(), Resumed(), Resumed())
    assert state.phase is Phase.ROLLED_BACK
    assert next(e for e in effects if isinstance(e, RollBack)).restore == OLD


# --- properties -------------------------------------------------------------------------

SHAS = ["a" * 64, "b" * 64, "c" * 64]
VERSIONS = dict(zip(SHAS, ["1.0.0", "0.9.0", "1.1.0"], strict=True))  # b is a downgrade


def _events() -> st.SearchStrategy[Event]:
    sha = st.sampled_from(SHAS)
    t = st.builds(
        lambda seq, s, back: UpdateTarget(
            desired_seq=seq, name="wine", version=VERSIONS[s], sha256=s, length=10, rollback=back
        ),
        st.integers(0, 8),
        sha,
        st.booleans(),
    )
    expiry = st.sampled_from([T0 - timedelta(minutes=1), T0 + timedelta(days=1)])
    return st.one_of(
        st.builds(lambda t, e: desired(t, expires_at=e), t, expiry),
        st.builds(DownloadProgress, sha256=sha, downloaded_bytes=st.integers(0, 20)),
        st.builds(DownloadDone, sha256=sha),
        st.builds(
            DownloadFailed,
            sha256=sha,
            transient=st.booleans(),
            reason=st.just("r"),
            jitter=st.floats(0, 1, exclude_max=True),
        ),
        st.builds(Verified, sha256=sha),
        st.builds(VerifyFailed, sha256=sha, reason=st.just("r")),
        st.builds(Staged, sha256=sha, budget=st.just(BUDGET)),
        st.builds(Activated, sha256=sha),
        st.builds(ActivationFailed, sha256=sha, reason=st.just("r")),
        st.builds(ProbationSample, ok=st.booleans(), latency_ms=st.floats(0, 300)),
        st.builds(GoldenResult, sha256=sha, passed=st.booleans()),
        st.just(ProbationTimerExpired()),
        st.builds(Tick, now=st.just(T0)),
        st.just(Resumed()),
    )


def _check_invariants(state: UpdateState) -> None:
    if state.phase is Phase.IDLE:
        assert state.pending is None
        return
    assert state.target is not None
    if state.phase is Phase.PROBATION:
        assert state.probation is not None
        assert state.active == state.target.model
    if state.phase is Phase.COMMITTED:
        assert state.active == state.target.model
        assert state.probation is not None
        assert state.probation.golden_passed
        assert state.probation.budget_violation() is None
    if state.phase is Phase.ROLLED_BACK:
        assert state.active != state.target.model
    if state.pending is not None:
        assert state.phase in (Phase.ACTIVATING, Phase.PROBATION)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_events(), max_size=40), minutes=st.lists(st.integers(0, 5), max_size=40))
def test_no_event_sequence_reaches_an_impossible_state(events, minutes):
    state = UpdateState(active=InstalledModel(name="wine", version="1.0.0", sha256=SHAS[0]))
    now = T0
    for i, event in enumerate(events):
        now += timedelta(minutes=minutes[i] if i < len(minutes) else 0)
        # Without history the records this step appends are exactly state.history.
        before = replace(state, history=())
        state, effects = step(before, event, now, policy=POLICY)
        _check_invariants(state)
        assert state.last_desired_seq >= before.last_desired_seq
        if any(t.to_phase is Phase.ROLLED_BACK for t in state.history):
            assert any(isinstance(e, RollBack) for e in effects)
        if (
            isinstance(event, DesiredReceived)
            and event.target.desired_seq <= before.last_desired_seq
        ):
            # Ignored or rejected: nothing changes but the memory of the rejection.
            kept = replace(
                state,
                last_error=before.last_error,
                last_rejected_envelope=before.last_rejected_envelope,
            )
            assert kept == before
            assert not [e for e in effects if not isinstance(e, Report)]
        if state.history and not isinstance(event, Resumed):
            assert any(isinstance(e, Report) for e in effects)
