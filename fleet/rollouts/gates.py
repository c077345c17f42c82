"""Pure gate evaluation of one wave: pass, fail, or wait, with the reasons.

Ratios are over the wave's own devices. A timed-out device counts as failed, or leaves
the denominator, per ``Gate.timeouts_count_as_failure``. A failure ratio can only grow
as devices settle, so a wave over ``max_failure_ratio`` fails at once, without waiting
for its last devices. Metric guards act only on enough samples (``min_metric_samples``
on each side); a guard that compares with the previous version is skipped when the wave
ran no previous version (``WaveMetrics.baseline is None``). The drift guard has no
baseline side: the new version's score is already a comparison with its reference
profile, so it needs only the new version's samples and a score.

Durations never overflow: a gate's spans are compared with the time elapsed since a
moment (``now - since``, always representable), never added to a time, and each span goes
through `span_s` first, so a stored gate with an absurd ``soak_s`` or ``timeout_s`` (1e15,
infinity: the schema once allowed them) means "never" instead of an `OverflowError`, and
a device reporting a far-future timestamp cannot push a sum past ``datetime.max`` either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from edgefleet.fleet.rollouts.model import (
    DeviceRecord,
    DeviceRolloutState,
    Gate,
    VersionMetrics,
    WaveMetrics,
)

_EPS = 1e-9
# Longer than any two datetimes can be apart (years 1 to 9999), so a span clamped to it
# still reads "never" while staying a finite float that arithmetic can use.
MAX_SPAN_S = 10_000 * 366 * 24 * 3600.0


def span_s(seconds: float) -> float:
    """``seconds`` as a duration the core can compare with: within ``[0, MAX_SPAN_S]``,
    NaN and infinity (and anything longer) taken as `MAX_SPAN_S` ("never"). Raises nothing."""
    if math.isnan(seconds) or seconds > MAX_SPAN_S:
        return MAX_SPAN_S
    return max(seconds, 0.0)


def elapsed_s(since: datetime, now: datetime) -> float:
    """Seconds from ``since`` to ``now`` (negative if ``since`` is later). Raises nothing for
    aware datetimes: their difference always fits a `timedelta`."""
    return (now - since).total_seconds()


@dataclass(frozen=True)
class WaveCounts:
    """A wave's devices by outcome, with the denominator the gate's ratios use."""

    total: int
    healthy: int
    failed: int
    timed_out: int
    counted_failed: int
    denominator: int

    @property
    def unsettled(self) -> int:
        return self.total - self.healthy - self.failed - self.timed_out

    @classmethod
    def of(cls, members: Sequence[DeviceRecord], gate: Gate) -> WaveCounts:
        healthy = sum(1 for r in members if r.state is DeviceRolloutState.HEALTHY)
        timed_out = sum(1 for r in members if r.timed_out)
        failed = sum(1 for r in members if r.failure is not None and not r.timed_out)
        if gate.timeouts_count_as_failure:
            return cls(len(members), healthy, failed, timed_out, failed + timed_out, len(members))
        return cls(len(members), healthy, failed, timed_out, failed, len(members) - timed_out)


@dataclass(frozen=True)
class GateVerdict:
    """``passed`` is None while the gate waits; ``soaking`` once only time or metrics
    are missing."""

    passed: bool | None
    reasons: list[str] = field(default_factory=list)
    soaking: bool = False


def failure_reasons(members: Sequence[DeviceRecord], gate: Gate) -> list[str]:
    """Why the wave's failures exceed ``max_failure_ratio`` (empty if they do not)."""
    counts = WaveCounts.of(members, gate)
    if counts.counted_failed > gate.max_failure_ratio * counts.denominator + _EPS:
        what = "failed or timed out" if gate.timeouts_count_as_failure else "failed"
        return [
            f"{counts.counted_failed}/{counts.denominator} device(s) {what}, above the "
            f"maximum failure ratio {gate.max_failure_ratio:g}"
        ]
    return []


def evaluate_gate(  # noqa: PLR0911 - one return per gate rule
    members: Sequence[DeviceRecord],
    gate: Gate,
    metrics: WaveMetrics | None,
    *,
    wave_started_at: datetime,
    now: datetime,
) -> GateVerdict:
    """The gate of one wave at ``now``; ``metrics`` must be this wave's (or None)."""
    failures = failure_reasons(members, gate)
    if failures:
        return GateVerdict(False, failures)
    counts = WaveCounts.of(members, gate)
    healthy_enough = counts.healthy >= gate.min_success_ratio * counts.denominator - _EPS
    success = (
        f"{counts.healthy}/{counts.denominator} device(s) healthy "
        f"(minimum ratio {gate.min_success_ratio:g})"
    )
    if not healthy_enough or (counts.denominator == 0 and gate.min_success_ratio > 0):
        if counts.unsettled == 0:
            return GateVerdict(False, [f"wave settled with only {success}"])
        return GateVerdict(None, [f"waiting: {success}, {counts.unsettled} unsettled"])
    reasons = [success]
    if counts.timed_out and not gate.timeouts_count_as_failure:
        reasons.append(f"{counts.timed_out} timed-out device(s) excluded")
    violations, missing, notes = _guards(gate, metrics)
    if violations:
        return GateVerdict(False, violations)
    healthy_times = [r.healthy_at for r in members if r.healthy_at is not None]
    soak_s = span_s(gate.soak_s)
    soaked_s = elapsed_s(max(healthy_times, default=wave_started_at), now)
    if soaked_s < soak_s:
        left = soak_s - soaked_s
        return GateVerdict(None, [f"soaking: {left:g} s left"], soaking=True)
    if missing:
        if soaked_s - soak_s >= span_s(gate.metrics_timeout_s):
            waited = gate.metrics_timeout_s
            return GateVerdict(False, [f"{m} {waited:g} s after the soak" for m in missing])
        return GateVerdict(None, [f"waiting for metrics: {m}" for m in missing], soaking=True)
    if gate.soak_s:
        reasons.append(f"soaked {gate.soak_s:g} s")
    return GateVerdict(True, reasons + notes)


def _guards(gate: Gate, metrics: WaveMetrics | None) -> tuple[list[str], list[str], list[str]]:
    """(violations, missing samples, notes) of the gate's metric guards."""
    violations: list[str] = []
    missing: list[str] = []
    notes: list[str] = []
    if not gate.has_metric_guards:
        return violations, missing, notes
    if metrics is None:
        return violations, ["no metrics for this wave"], notes
    new, old, need = metrics.candidate, metrics.baseline, gate.min_metric_samples
    comparing = gate.max_error_rate_increase is not None or gate.max_latency_p95_ratio is not None
    if comparing:
        if new.inference_samples < need:
            missing.append(f"new version {new.version} has {new.inference_samples}/{need} samples")
        if old is None:
            notes.append("no previous version on this wave: error-rate and latency guards skipped")
        elif old.inference_samples < need:
            missing.append(
                f"previous version {old.version} has {old.inference_samples}/{need} samples"
            )
        elif new.inference_samples >= need:
            violations += _compare(gate, metrics, missing, notes)
    if gate.max_drift_score is not None:
        violations += _drift(gate.max_drift_score, new, need, missing, notes)
    return violations, missing, notes


def _drift(
    limit: float, new: VersionMetrics, need: int, missing: list[str], notes: list[str]
) -> list[str]:
    """The drift guard: the new version's own score against ``limit`` (no baseline)."""
    if new.drift_score is None or new.drift_samples < need:
        why = f" ({new.drift_unavailable})" if new.drift_unavailable else ""
        missing.append(
            f"new version {new.version} has {new.drift_samples}/{need} drift samples{why}"
        )
        return []
    where = f": PSI of {new.drift_feature}" if new.drift_feature else ""
    if new.drift_score > limit + _EPS:
        return [f"drift score {new.drift_score:g} above the maximum {limit:g}{where}"]
    notes.append(f"drift score {new.drift_score:g} <= {limit:g}{where}")
    return []


def _compare(gate: Gate, metrics: WaveMetrics, missing: list[str], notes: list[str]) -> list[str]:
    new, old = metrics.candidate, metrics.baseline
    assert old is not None
    violations: list[str] = []
    limit = gate.max_error_rate_increase
    if limit is not None:
        if new.error_rate is None or old.error_rate is None:
            missing.append("error rates not reported")
        else:
            increase = new.error_rate - old.error_rate
            text = (
                f"error rate {new.error_rate:g} vs {old.error_rate:g} of {old.version} "
                f"(+{increase:g}, maximum +{limit:g})"
            )
            (violations if increase > limit + _EPS else notes).append(text)
    ratio_limit = gate.max_latency_p95_ratio
    if ratio_limit is not None:
        if new.latency_p95_ms is None or old.latency_p95_ms is None:
            missing.append("latency p95 not reported")
        else:
            ratio = (
                new.latency_p95_ms / old.latency_p95_ms
                if old.latency_p95_ms > 0
                else (1.0 if new.latency_p95_ms == 0 else float("inf"))
            )
            text = (
                f"latency p95 {new.latency_p95_ms:g} ms vs {old.latency_p95_ms:g} ms "
                f"(x{ratio:.3g}, maximum x{ratio_limit:g})"
            )
            (violations if ratio > ratio_limit + _EPS else notes).append(text)
    return violations
