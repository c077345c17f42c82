"""The update state machine: a pure function from (state, event, now) to (state, effects).

No I/O, no clock, no randomness: `step` only reads its arguments, so every transition can
be tested from a table and replayed. The runner (`edgefleet.agent.update.runner`) persists the
returned state atomically *before* it carries out the effects, so a crash between the
two is resolved by `Resumed`, which re-issues the effects of the persisted phase (all
effects are idempotent).

The phases::

    IDLE ─desired→ DOWNLOADING ─done→ VERIFYING ─verified, staged→ STAGED ─tick→ ACTIVATING
      ─activated→ PROBATION ─golden passed and budget held→ COMMITTED
                            └─golden failed, budget broken, activation failed→ ROLLED_BACK
    any step before ACTIVATING ─rejected or out of retries→ FAILED

Policies:
- whether a desired state is taken at all (redelivery, replay, expiry) and whether a
  target may replace the active model (downgrade) is `edgefleet.agent.update.acceptance`'s
  verdict, asked when a desired state arrives and when a target is about to start; a
  refused one changes no model and is reported as rejected, once;
- a desired state equal to the active model is a no-op (the seq is still recorded);
- a newer desired state *during* an update: before ACTIVATING nothing on the device has
  changed, so the current update is **aborted** and the new one starts; during
  ACTIVATING or PROBATION the current update **finishes** (commit or roll back) first and
  the newer target is kept in ``pending`` and started right after; except that a desired
  state asking for the previous model during probation rolls back at once;
- probation ends after ``min_inferences`` samples or ``duration_s`` seconds, whichever
  comes first; the model is committed only if its golden samples passed and the samples
  seen stayed within the error-rate and latency-p95 budgets (a device that served no
  inference in the window commits on its golden samples alone). Errors that already
  exceed what the window allows roll back early;
- transient download failures retry with exponential backoff, less a random share of
  up to ``retry_jitter`` of it (drawn by the runner, carried by the event), up to
  ``max_download_attempts``, then FAILED; a restart during probation restarts it, but
  more than ``max_probation_restarts`` restarts (a model that crashes the agent) roll
  back.

Invariants (checked by the property tests): PROBATION has a target that is the active
model and probation stats; COMMITTED's target is the active model and its golden samples
passed within budget; every entry into ROLLED_BACK emits a `RollBack`; ``last_desired_seq``
never decreases; each phase change appends one `Transition` to the bounded history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field

from edgefleet.agent.update.acceptance import Accepted, Rejected, judge, judge_install
from edgefleet.agent.update.policy import Frozen, Phase, UpdatePolicy
from edgefleet.agent.update.types import (
    Activate,
    Activated,
    ActivationFailed,
    Budget,
    Cleanup,
    CollectGarbage,
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
    StageFailed,
    StartDownload,
    Tick,
    UpdateTarget,
    Verified,
    Verify,
    VerifyFailed,
)
from edgefleet.shared.messages import EventKind
from edgefleet.shared.replace import replace

AT_REST = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED})
ABORTABLE = frozenset({Phase.DOWNLOADING, Phase.VERIFYING, Phase.STAGED})


DEFAULT_POLICY = UpdatePolicy()
HISTORY_SIZE = 20


class ProbationStats(Frozen):
    """What the model on probation has shown so far."""

    started_at: datetime
    budget: Budget
    samples: int = 0
    errors: int = 0
    latencies_ms: tuple[float, ...] = ()
    golden_passed: bool | None = None
    golden_detail: str = ""

    @property
    def error_rate(self) -> float:
        return self.errors / self.samples if self.samples else 0.0

    @property
    def latency_p95_ms(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def budget_violation(self) -> str | None:
        """Why the samples seen break the budget, or None if they keep it."""
        if self.samples and self.error_rate > self.budget.max_error_rate:
            return (
                f"error rate {self.error_rate:.3f} ({self.errors}/{self.samples}) is above "
                f"the budget {self.budget.max_error_rate:.3f}"
            )
        p95 = self.latency_p95_ms
        if p95 is not None and p95 > self.budget.max_latency_p95_ms:
            return (
                f"latency p95 {p95:.1f} ms is above the budget "
                f"{self.budget.max_latency_p95_ms:.1f} ms"
            )
        return None

    def summary(self) -> dict[str, float | int | str | None]:
        return {
            "samples": self.samples,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "latency_p95_ms": self.latency_p95_ms,
            "golden": self.golden_detail,
        }


class Transition(Frozen):
    at: datetime
    from_phase: Phase
    to_phase: Phase
    event: str
    reason: str | None = None


class UpdateState(Frozen):
    """Everything the agent must remember about updates across restarts."""

    phase: Phase = Phase.IDLE
    target: UpdateTarget | None = Field(default=None, description="being worked on, or last")
    pending: UpdateTarget | None = Field(default=None, description="newer, after this one")
    active: InstalledModel | None = Field(default=None, description="what should be serving")
    previous: InstalledModel | None = Field(default=None, description="active before target")
    last_desired_seq: int = -1
    download_attempts: int = 0
    retry_at: datetime | None = None
    downloaded_bytes: int = 0
    verified: bool = False
    budget: Budget | None = None
    activation_attempts: int = 0
    probation: ProbationStats | None = None
    probation_restarts: int = 0
    last_error: str | None = None
    last_rejected_envelope: str | None = Field(
        default=None, description="sha256 of the desired-state payload rejected last"
    )
    history: tuple[Transition, ...] = ()


Step = tuple[UpdateState, list[Effect]]


def step(  # noqa: PLR0911 - one return per row of the transition table
    state: UpdateState, event: Event, now: datetime, *, policy: UpdatePolicy = DEFAULT_POLICY
) -> Step:
    """The next state and the effects the runner must carry out, in order.

    Events that do not apply to the current phase, or that name another target than the
    one being worked on (late news of a superseded update), leave the state unchanged and
    return no effects. Never raises for any event in any state.
    """
    match event:
        case DesiredReceived() | DesiredRejected():
            return _on_offer(state, event, now)
        case Resumed():
            return _on_resumed(state, now, policy)
        case Tick(now=tick_now):
            return _on_tick(state, max(now, tick_now), policy)
        case ProbationSample(ok=ok, latency_ms=latency_ms):
            return _on_sample(state, ok, latency_ms, now, policy)
        case ProbationTimerExpired():
            if state.phase is not Phase.PROBATION:
                return state, []
            return _evaluate(state, now, policy, window_over=True)
    if state.target is None or getattr(event, "sha256", None) != state.target.sha256:
        return state, []
    return _on_target_event(state, state.target, event, now, policy)


def _on_target_event(  # noqa: PLR0911 - one return per transition
    state: UpdateState, target: UpdateTarget, event: Event, now: datetime, policy: UpdatePolicy
) -> Step:
    phase = state.phase
    match event:
        case DownloadProgress(downloaded_bytes=n) if phase is Phase.DOWNLOADING:
            done = max(state.downloaded_bytes, min(n, target.length))
            return replace(state, downloaded_bytes=done), []
        case DownloadDone() if phase is Phase.DOWNLOADING and state.retry_at is None:
            new = _go(state, Phase.VERIFYING, event, now, downloaded_bytes=target.length)
            return new, [_report(EventKind.INFO, target, "downloaded"), Verify(target=target)]
        case DownloadFailed(transient=True) if phase is Phase.DOWNLOADING:
            return _on_transient_failure(state, target, event, now, policy)
        case DownloadFailed(reason=reason) if phase is Phase.DOWNLOADING:
            return _fail(state, target, event, now, kind=EventKind.REJECTED, reason=reason)
        case Verified() if phase is Phase.VERIFYING and not state.verified:
            new = replace(state, verified=True)
            return new, [_report(EventKind.VERIFIED, target), Stage(target=target)]
        case VerifyFailed(reason=reason) if phase is Phase.VERIFYING:
            return _fail(state, target, event, now, kind=EventKind.REJECTED, reason=reason)
        case Staged(budget=budget) if phase is Phase.VERIFYING and state.verified:
            new = _go(state, Phase.STAGED, event, now, budget=budget)
            return new, [_report(EventKind.STAGED, target)]
        case StageFailed(reason=reason) if phase is Phase.VERIFYING:
            return _fail(state, target, event, now, kind=EventKind.FAILED, reason=reason)
        case Activated() if phase is Phase.ACTIVATING:
            return _on_activated(state, target, event, now, policy)
        case ActivationFailed(reason=reason) if phase in (Phase.ACTIVATING, Phase.PROBATION):
            return _roll_back(state, target, event, now, f"activation failed: {reason}")
        case GoldenResult(passed=passed, detail=detail) if phase is Phase.PROBATION:
            assert state.probation is not None
            stats = replace(state.probation, golden_passed=passed, golden_detail=detail)
            new = replace(state, probation=stats)
            if not passed:
                return _roll_back(new, target, event, now, f"golden samples failed: {detail}")
            return _evaluate(new, now, policy, window_over=False)
    return state, []


# --- desired states ---------------------------------------------------------------------


def _on_offer(state: UpdateState, offer: DesiredReceived | DesiredRejected, now: datetime) -> Step:
    verdict = judge(
        offer,
        last_seq=state.last_desired_seq,
        held=(state.target, state.pending),
        last_rejected=state.last_rejected_envelope,
        now=now,
    )
    match verdict:
        case Accepted(target=target):
            return _on_desired(state, target, now)
        case Rejected(reason=reason, desired_seq=seq):
            new = replace(state, last_error=reason, last_rejected_envelope=offer.envelope_sha256)
            return new, [_report(EventKind.REJECTED, None, reason, {"desired_seq": seq})]
    return state, []


def _on_desired(  # noqa: PLR0911 - one return per policy case
    state: UpdateState, desired: UpdateTarget, now: datetime
) -> Step:
    accepted = replace(state, last_desired_seq=desired.desired_seq)
    phase, current = state.phase, state.target
    if current is not None and phase not in AT_REST and desired.sha256 == current.sha256:
        return replace(accepted, target=desired), []
    if phase in AT_REST:
        if state.active is not None and desired.sha256 == state.active.sha256:
            return accepted, [_report(EventKind.INFO, desired, "already active")]
        return _start(accepted, desired, now, "desired")
    assert current is not None
    if phase in ABORTABLE:
        reason = f"superseded by desired seq {desired.desired_seq}"
        effects: list[Effect] = [
            Cleanup(sha256=current.sha256),
            _report(EventKind.INFO, current, reason),
        ]
        if state.active is not None and desired.sha256 == state.active.sha256:
            new = _go(accepted, Phase.IDLE, "desired", now, reason, **_fresh(None))
            return new, [*effects, _report(EventKind.INFO, desired, "already active")]
        new, started = _start(accepted, desired, now, "desired")
        return new, effects + started
    if (
        phase is Phase.PROBATION
        and state.previous is not None
        and desired.sha256 == state.previous.sha256
    ):
        reason = f"desired seq {desired.desired_seq} asks for the previous model again"
        superseding = replace(accepted, pending=None)
        return _roll_back(superseding, current, "desired", now, reason)
    reason = f"queued until the update to {current.version} finishes"
    return replace(accepted, pending=desired), [_report(EventKind.INFO, desired, reason)]


def _fresh(target: UpdateTarget | None) -> dict[str, Any]:
    return {
        "target": target,
        "pending": None,
        "download_attempts": 0,
        "retry_at": None,
        "downloaded_bytes": 0,
        "verified": False,
        "budget": None,
        "activation_attempts": 0,
        "probation": None,
        "probation_restarts": 0,
        "last_error": None,
    }


def _start(state: UpdateState, target: UpdateTarget, now: datetime, event: str) -> Step:
    refused = judge_install(target, active=state.active)
    if refused is not None:
        why = refused.reason
        new = _go(state, Phase.FAILED, event, now, why, **{**_fresh(target), "last_error": why})
        return new, [_report(EventKind.REJECTED, target, why)]
    new = _go(state, Phase.DOWNLOADING, event, now, **_fresh(target))
    return new, [_report(EventKind.DOWNLOADING, target), StartDownload(target=target)]


# --- downloading ------------------------------------------------------------------------


def backoff_s(attempt: int, policy: UpdatePolicy, jitter: float) -> float:
    """Seconds to wait before download attempt ``attempt + 1`` (``attempt`` >= 1).

    The exponential backoff ``d`` (capped at ``retry_max_s``), less ``jitter`` (a uniform
    draw in [0, 1)) times its random share ``retry_jitter``: within
    ``[d * (1 - retry_jitter), d]``.
    """
    ceiling = min(policy.retry_max_s, policy.retry_base_s * 2 ** (attempt - 1))
    return float(ceiling * (1 - policy.retry_jitter * jitter))


def _on_transient_failure(
    state: UpdateState,
    target: UpdateTarget,
    failure: DownloadFailed,
    now: datetime,
    policy: UpdatePolicy,
) -> Step:
    reason = failure.reason
    attempts = state.download_attempts + 1
    if attempts >= policy.max_download_attempts:
        why = f"download failed {attempts} times, giving up: {reason}"
        return _fail(state, target, "download_failed", now, kind=EventKind.FAILED, reason=why)
    delay = backoff_s(attempts, policy, failure.jitter)
    new = replace(
        state,
        download_attempts=attempts,
        retry_at=now + timedelta(seconds=delay),
        last_error=reason,
    )
    why = f"download failed ({reason}), retry in {delay:.3g}s"
    return new, [_report(EventKind.INFO, target, why)]


def _fail(
    state: UpdateState,
    target: UpdateTarget,
    event: Event | str,
    now: datetime,
    *,
    kind: EventKind,
    reason: str,
) -> Step:
    new = _go(state, Phase.FAILED, event, now, reason, last_error=reason, retry_at=None)
    return _then_pending(new, [Cleanup(sha256=target.sha256), _report(kind, target, reason)], now)


# --- activation and probation -----------------------------------------------------------


def _on_activated(
    state: UpdateState, target: UpdateTarget, event: Event, now: datetime, policy: UpdatePolicy
) -> Step:
    stats = ProbationStats(started_at=now, budget=state.budget or Budget())
    new = _go(
        state,
        Phase.PROBATION,
        event,
        now,
        previous=state.active,
        active=target.model,
        probation=stats,
    )
    effects: list[Effect] = [_report(EventKind.ACTIVATED, target), RunGolden(target=target)]
    pending = state.pending
    if pending is not None and state.active is not None and pending.sha256 == state.active.sha256:
        reason = f"desired seq {pending.desired_seq} asks for the previous model again"
        rolled, more = _roll_back(new, target, event, now, reason)
        return rolled, effects + more
    return new, effects


def _on_sample(
    state: UpdateState, ok: bool, latency_ms: float, now: datetime, policy: UpdatePolicy
) -> Step:
    stats = state.probation
    if state.phase is not Phase.PROBATION or stats is None:
        return state, []
    window = stats.budget.min_inferences
    if window and stats.samples >= window:
        return _evaluate(state, now, policy, window_over=True)  # only the first N count
    latencies = stats.latencies_ms
    if len(latencies) < policy.max_latency_samples:
        latencies = (*latencies, latency_ms)
    stats = replace(
        stats,
        samples=stats.samples + 1,
        errors=stats.errors + (0 if ok else 1),
        latencies_ms=latencies,
    )
    new = replace(state, probation=stats)
    allowed_errors = math.floor(stats.budget.max_error_rate * window)
    if window and stats.errors > allowed_errors:
        assert new.target is not None
        reason = (
            f"{stats.errors} errors in the first {stats.samples} inferences; the budget "
            f"allows {allowed_errors} in {window}"
        )
        return _roll_back(new, new.target, "probation_sample", now, reason)
    return _evaluate(new, now, policy, window_over=False)


def _evaluate(
    state: UpdateState, now: datetime, policy: UpdatePolicy, *, window_over: bool
) -> Step:
    stats, target = state.probation, state.target
    assert stats is not None
    assert target is not None
    budget = stats.budget
    window_end = stats.started_at + timedelta(seconds=budget.duration_s)
    over = (
        window_over
        or now >= window_end
        or (budget.min_inferences > 0 and stats.samples >= budget.min_inferences)
    )
    if not over:
        return state, []
    violation = stats.budget_violation()
    if violation is not None:
        return _roll_back(state, target, "probation", now, violation)
    if stats.golden_passed:
        return _commit(state, target, now, policy)
    if now >= window_end + timedelta(seconds=policy.golden_timeout_s):
        reason = f"golden samples gave no result within {policy.golden_timeout_s}s"
        return _roll_back(state, target, "probation", now, reason)
    return state, []


def _commit(state: UpdateState, target: UpdateTarget, now: datetime, policy: UpdatePolicy) -> Step:
    assert state.probation is not None
    new = _go(state, Phase.COMMITTED, "probation", now, last_error=None)
    detail = dict(state.probation.summary())
    effects: list[Effect] = [
        Commit(model=target.model),
        _report(EventKind.HEALTHY, target, None, detail),
        _report(EventKind.COMMITTED, target),
    ]
    return _then_pending(new, effects, now)


def _roll_back(
    state: UpdateState, target: UpdateTarget, event: Event | str, now: datetime, reason: str
) -> Step:
    # In probation the new model is active and `previous` is what it replaced; before
    # that (activation failed or was interrupted) `active` was never switched.
    restore = state.previous if state.phase is Phase.PROBATION else state.active
    new = _go(state, Phase.ROLLED_BACK, event, now, reason, active=restore, last_error=reason)
    effects: list[Effect] = [
        RollBack(reason=reason, failed=target.model, restore=restore),
        Cleanup(sha256=target.sha256),
        _report(EventKind.ROLLED_BACK, target, reason),
    ]
    return _then_pending(new, effects, now)


def _then_pending(state: UpdateState, effects: list[Effect], now: datetime) -> Step:
    pending = state.pending
    if pending is None:
        return state, effects
    cleared = replace(state, pending=None)
    if cleared.active is not None and pending.sha256 == cleared.active.sha256:
        return cleared, effects
    started, more = _start(cleared, pending, now, "pending")
    return started, effects + more


# --- time and restarts ------------------------------------------------------------------


def _on_tick(state: UpdateState, now: datetime, policy: UpdatePolicy) -> Step:
    target = state.target
    if target is None:
        return state, []
    if state.phase is Phase.DOWNLOADING and state.retry_at is not None and now >= state.retry_at:
        return replace(state, retry_at=None), [StartDownload(target=target)]
    if state.phase is Phase.STAGED:
        return _activate(state, target, "tick", now, policy)
    if state.phase is Phase.PROBATION:
        return _evaluate(state, now, policy, window_over=False)
    return state, []


def _activate(
    state: UpdateState, target: UpdateTarget, event: str, now: datetime, policy: UpdatePolicy
) -> Step:
    attempts = state.activation_attempts + 1
    if attempts > policy.max_activation_attempts:
        reason = f"activation interrupted {state.activation_attempts} times"
        return _roll_back(state, target, event, now, reason)
    new = _go(state, Phase.ACTIVATING, event, now, activation_attempts=attempts)
    return new, [_report(EventKind.INFO, target, "activating"), Activate(target=target)]


def _on_resumed(  # noqa: PLR0911 - one return per phase
    state: UpdateState, now: datetime, policy: UpdatePolicy
) -> Step:
    target, phase = state.target, state.phase
    ensure: list[Effect] = [EnsureActive(model=state.active)]
    if phase in AT_REST:
        return state, [*ensure, CollectGarbage()]
    if target is None:
        return state, ensure
    if phase is Phase.DOWNLOADING:
        attempts = state.download_attempts + 1
        if attempts >= policy.max_download_attempts:
            why = f"download interrupted {attempts} times"
            failed, effects = _fail(
                state, target, "resumed", now, kind=EventKind.FAILED, reason=why
            )
            return failed, ensure + effects
        new = replace(state, retry_at=None, download_attempts=attempts)
        return new, [*ensure, StartDownload(target=target)]
    if phase is Phase.VERIFYING:
        return replace(state, verified=False), [*ensure, Verify(target=target)]
    if phase is Phase.STAGED:
        return state, ensure  # the next tick activates it
    if phase is Phase.ACTIVATING:
        # Whether the slot switch happened is unknown: Activate re-verifies the staged
        # model and switches only if needed, and a failure rolls back to `active`.
        return _activate(state, target, "resumed", now, policy)
    assert state.probation is not None
    restarts = state.probation_restarts + 1
    if restarts > policy.max_probation_restarts:
        reason = f"the agent restarted {restarts} times during probation"
        return _roll_back(state, target, "resumed", now, reason)
    stats = ProbationStats(started_at=now, budget=state.probation.budget)
    new = replace(state, probation=stats, probation_restarts=restarts)
    return new, [
        EnsureActive(model=target.model),
        _report(EventKind.INFO, target, "probation restarted after a restart of the agent"),
        RunGolden(target=target),
    ]


# --- helpers ----------------------------------------------------------------------------


def _report(
    kind: EventKind,
    target: UpdateTarget | None,
    reason: str | None = None,
    detail: Mapping[str, object] | None = None,
) -> Report:
    return Report(event=kind, target=target, reason=reason, detail=dict(detail or {}))


def _go(
    state: UpdateState,
    phase: Phase,
    event: Event | str,
    now: datetime,
    reason: str | None = None,
    **changes: object,
) -> UpdateState:
    name = event if isinstance(event, str) else event.kind
    record = Transition(at=now, from_phase=state.phase, to_phase=phase, event=name, reason=reason)
    history = (*state.history, record)[-HISTORY_SIZE:]
    return replace(state, **changes, phase=phase, history=history)
