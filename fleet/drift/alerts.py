"""From drift reports to alert decisions, with a cool-down. Pure: the clock is an argument.

Kinds, from one slice's `edgefleet.shared.drift.DriftReport`:

- ``data_drift``: the inputs moved away from the reference (the report's verdict);
- ``prediction_drift``: the model's outputs moved;
- ``performance_drop``: labelled predictions score worse than the baseline *and* the
  inputs drifted, so the data explains it (retrain on the new data);
- ``concept_drift``: labelled predictions score worse while the inputs look like the
  reference: the relation between inputs and labels changed, which no input monitor
  can see (retrain with new labels, or revisit the features).

Cool-down: a decision is dropped when the same (model, version, kind, slice) alerted
less than ``cooldown_s`` ago, so a slice that keeps drifting alerts once per cool-down,
not once per evaluation. Only alerts that were raised count: a slice that recovers and
drifts again inside the cool-down stays quiet until it ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from edgefleet.fleet.drift.rollup import slice_fields
from edgefleet.shared.drift import DriftReport

Severity = Literal["info", "warning", "critical"]


class AlertKind(StrEnum):
    """What an alert is about."""

    DATA_DRIFT = "data_drift"
    PREDICTION_DRIFT = "prediction_drift"
    PERFORMANCE_DROP = "performance_drop"
    CONCEPT_DRIFT = "concept_drift"


SEVERITY: dict[AlertKind, Severity] = {
    AlertKind.DATA_DRIFT: "warning",
    AlertKind.PREDICTION_DRIFT: "warning",
    AlertKind.PERFORMANCE_DROP: "critical",
    AlertKind.CONCEPT_DRIFT: "critical",
}


class AlertDecision(BaseModel):
    """One alert to raise: which kind, on which slice, why, with the numbers."""

    model_config = ConfigDict(frozen=True)

    kind: AlertKind
    severity: Severity
    model_name: str
    model_version: str
    slice_key: str
    message: str
    evidence: dict[str, Any]

    @property
    def dedupe_key(self) -> tuple[str, str, str, str]:
        return (self.model_name, self.model_version, self.kind.value, self.slice_key)


def _top_features(report: DriftReport, names: list[str]) -> list[dict[str, Any]]:
    verdicts = [v for v in report.features if v.scores.name in names and v.status == "alert"]
    return [
        {
            "name": v.scores.name,
            "role": v.scores.role,
            "crossed": v.crossed,
            "psi": v.scores.psi,
            "ks": v.scores.ks,
            "ks_pvalue": v.scores.ks_pvalue,
            "js": v.scores.js,
            "mean": v.scores.mean,
            "reference_mean": v.scores.reference_mean,
        }
        for v in verdicts
    ]


def decide(
    report: DriftReport,
    *,
    model_name: str,
    model_version: str,
    slice_key: str,
    context: Mapping[str, Any] | None = None,
) -> list[AlertDecision]:
    """The alerts ``report`` calls for on one slice (none when it was not judged).

    ``context`` (window range, device count, ...) is copied into every evidence.
    """
    where = f"{model_name} {model_version} on {slice_key}"
    base: dict[str, Any] = {
        "slice": slice_fields(slice_key),
        "profile_id": report.profile_id,
        "count": report.count,
        "labelled": report.labelled,
        **(context or {}),
    }
    out: list[AlertDecision] = []

    def add(kind: AlertKind, message: str, **evidence: Any) -> None:
        out.append(
            AlertDecision(
                kind=kind,
                severity=SEVERITY[kind],
                model_name=model_name,
                model_version=model_version,
                slice_key=slice_key,
                message=message,
                evidence=base | evidence,
            )
        )

    if report.data_drift:
        add(
            AlertKind.DATA_DRIFT,
            f"input drift on {where}: {', '.join(report.drifted_inputs)}",
            drifted_inputs=report.drifted_inputs,
            features=_top_features(report, report.drifted_inputs),
        )
    if report.prediction_drift:
        add(
            AlertKind.PREDICTION_DRIFT,
            f"prediction drift on {where}: {', '.join(report.drifted_outputs)}",
            drifted_outputs=report.drifted_outputs,
            features=_top_features(report, report.drifted_outputs),
        )
    if report.performance_drop:
        dropped = [d for d in report.metric_drops if d.dropped]
        summary = ", ".join(f"{d.metric} {d.baseline:.3f} -> {d.current:.3f}" for d in dropped)
        drops = [d.model_dump() for d in dropped]
        if report.drifted_inputs:
            add(
                AlertKind.PERFORMANCE_DROP,
                f"performance drop on {where} with input drift: {summary}",
                metric_drops=drops,
                metrics=report.metrics,
                drifted_inputs=report.drifted_inputs,
            )
        else:
            add(
                AlertKind.CONCEPT_DRIFT,
                f"concept drift on {where}: {summary} while the inputs match the reference",
                metric_drops=drops,
                metrics=report.metrics,
                drifted_inputs=[],
            )
    return out


def apply_cooldown(
    decisions: list[AlertDecision],
    last_alerted: Mapping[tuple[str, str, str, str], datetime],
    *,
    now: datetime,
    cooldown_s: float,
) -> list[AlertDecision]:
    """The decisions whose (model, version, kind, slice) has not alerted in ``cooldown_s``.

    ``last_alerted`` maps `AlertDecision.dedupe_key` to the newest alert's time.
    """
    window = timedelta(seconds=cooldown_s)
    kept: list[AlertDecision] = []
    seen: set[tuple[str, str, str, str]] = set()
    for decision in decisions:
        key = decision.dedupe_key
        last = last_alerted.get(key)
        if key in seen or (last is not None and now - last < window):
            continue
        seen.add(key)
        kept.append(decision)
    return kept
