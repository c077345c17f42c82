"""The fleet's Prometheus metrics: one `FleetMetrics` per service, on the registry it owns.

Each group is handed to the I/O shell that records it (the orchestrator, the drift
monitor, the director, the repository's HTTP layer, the ingester); the pure cores
(`edgefleet.fleet.rollouts.policy`, `edgefleet.fleet.drift.alerts`) know nothing of
metrics. A registry per service, never the global one, so two replicas (or two tests) in
one process do not collide.

Label cardinality is bounded by construction, so a large fleet cannot blow up the
scrape:

- no label ever holds a device id;
- enum labels (device state, rollout status, gate result, alert kind, channel, HTTP
  status) take the enum's values, and are created at zero up front so every series
  exists from the first scrape;
- the drift score's ``model``/``version``/``slice`` labels name only slices of several
  devices (``fleet``, ``tag:<t>``, ``hardware:<h>``; the ``device:<id>`` slices are left
  out), only versions with windows in the monitor's lookback, and are replaced at every
  evaluation (a version or slice no longer seen loses its series); above
  `MAX_DRIFT_SCORE_SERIES` the rest are counted in
  ``edgefleet_drift_score_series_dropped_total`` instead of exported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgefleet.fleet.drift.alerts import AlertKind, Severity
from edgefleet.fleet.ingest.metrics import IngestMetrics
from edgefleet.fleet.rollouts.model import (
    Decision,
    DeviceRolloutState,
    GateDecision,
    RolloutState,
    RolloutStatus,
)
from edgefleet.shared.drift import DriftReport

# Drift score series (model x version x slice x score) one service exports at most.
MAX_DRIFT_SCORE_SERIES = 2000
DRIFT_SCORES = ("psi", "js", "ks")
ALERT_KINDS = tuple(kind.value for kind in AlertKind)
SEVERITIES: tuple[str, ...] = get_args(Severity)
REPOSITORY_KINDS = ("metadata", "target", "other")
# Seconds: a wave of a lab rollout takes seconds, a production one hours or days.
WAVE_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 259200)
PUBLISH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
EVALUATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RolloutMetrics:
    """Devices per state, rollouts per status, gate decisions and wave durations."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.devices = Gauge(
            "edgefleet_rollout_devices",
            "devices of active rollouts by rollout state (as of the orchestrator's last "
            "tick; 0 on a replica that does not hold the orchestrator lease)",
            ["state"],
            registry=registry,
        )
        self.rollouts = Gauge(
            "edgefleet_rollouts_active",
            "active rollouts by status (0 on a replica without the orchestrator lease)",
            ["status"],
            registry=registry,
        )
        self.gate_decisions = Counter(
            "edgefleet_rollout_gate_decisions",
            "wave gates judged by the orchestrator, by result",
            ["result"],
            registry=registry,
        )
        self.wave_seconds = Histogram(
            "edgefleet_rollout_wave_duration_seconds",
            "from a wave's start to its gate's decision, by result",
            ["result"],
            buckets=WAVE_BUCKETS_S,
            registry=registry,
        )
        self.lease_held = Gauge(
            "edgefleet_rollout_lease_held",
            "1 while this replica holds the orchestrator lease",
            registry=registry,
        )
        for state in DeviceRolloutState:
            self.devices.labels(state.value)
        for status in RolloutStatus:
            self.rollouts.labels(status.value)
        for result in ("passed", "failed"):
            self.gate_decisions.labels(result)
            self.wave_seconds.labels(result)

    def set_active(self, states: Iterable[RolloutState] | None) -> None:
        """The gauges for these active rollouts; None: this replica drives none."""
        devices = dict.fromkeys(DeviceRolloutState, 0)
        statuses = dict.fromkeys(RolloutStatus, 0)
        for state in states or ():
            statuses[state.status] += 1
            for record in state.devices.values():
                devices[record.state] += 1
        for device_state, n in devices.items():
            self.devices.labels(device_state.value).set(n)
        for status, n in statuses.items():
            self.rollouts.labels(status.value).set(n)
        self.lease_held.set(0 if states is None else 1)

    def record(self, before: RolloutState, decision: Decision, now: datetime) -> None:
        """Count the gate decisions of a stored decision, with the wave's duration."""
        for action in decision.actions:
            if not isinstance(action, GateDecision):
                continue
            result = "passed" if action.passed else "failed"
            self.gate_decisions.labels(result).inc()
            started = before.wave_started_at
            if started is not None and action.wave == before.current_wave:
                self.wave_seconds.labels(result).observe(max(0.0, (now - started).total_seconds()))


class DriftMetrics:
    """Drift scores per model version and slice, alerts raised, evaluation time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.score = Gauge(
            "edgefleet_drift_score",
            "the highest score over a slice's features at the last evaluation "
            "(fleet, tag and hardware slices; device slices are not exported)",
            ["model", "version", "slice", "score"],
            registry=registry,
        )
        self.series_dropped = Counter(
            "edgefleet_drift_score_series_dropped",
            f"drift score series left out: more than {MAX_DRIFT_SCORE_SERIES} at once",
            registry=registry,
        )
        self.unjudged = Gauge(
            "edgefleet_drift_unjudged_slices",
            "slices (devices included) with windows in the lookback but fewer rows than "
            "the thresholds' min_count, so without a verdict at the last evaluation",
            ["model", "version"],
            registry=registry,
        )
        self.alerts = Counter(
            "edgefleet_drift_alerts",
            "drift alerts raised (after the cool-down), by kind and severity",
            ["kind", "severity"],
            registry=registry,
        )
        self.evaluation_seconds = Histogram(
            "edgefleet_drift_evaluation_seconds",
            "one drift evaluation of every model version with recent windows",
            buckets=EVALUATION_BUCKETS_S,
            registry=registry,
        )
        for kind in ALERT_KINDS:
            for severity in SEVERITIES:
                self.alerts.labels(kind, severity)
        self._exported: set[tuple[str, str, str, str]] = set()
        self._unjudged_exported: set[tuple[str, str]] = set()

    def set_scores(self, reports: Mapping[tuple[str, str, str], DriftReport]) -> None:
        """Replace the score series with these ``(model, version, slice)`` reports."""
        values: dict[tuple[str, str, str, str], float] = {}
        dropped = 0
        unjudged: dict[tuple[str, str], int] = {}
        for (model, version, slice_key), report in sorted(reports.items()):
            unjudged[(model, version)] = unjudged.get((model, version), 0) + (not report.judged)
            if slice_key.startswith("device:"):
                continue  # a device id is not a label
            for score, value in _max_scores(report).items():
                if len(values) >= MAX_DRIFT_SCORE_SERIES:
                    dropped += 1
                    continue
                values[(model, version, slice_key, score)] = value
        for stale in self._exported - values.keys():
            self.score.remove(*stale)
        for labels, value in values.items():
            self.score.labels(*labels).set(value)
        self._exported = set(values)
        for stale_version in self._unjudged_exported - unjudged.keys():
            self.unjudged.remove(*stale_version)
        for version_labels, count in unjudged.items():
            self.unjudged.labels(*version_labels).set(count)
        self._unjudged_exported = set(unjudged)
        if dropped:
            self.series_dropped.inc(dropped)

    def record_alerts(self, alerts: Iterable[tuple[str, str]]) -> None:
        """Count raised alerts, given as ``(kind, severity)``."""
        for kind, severity in alerts:
            self.alerts.labels(kind, severity).inc()


def _max_scores(report: DriftReport) -> dict[str, float]:
    out: dict[str, float] = {}
    for verdict in report.features:
        for name in DRIFT_SCORES:
            value = getattr(verdict.scores, name, None)
            if value is not None and math.isfinite(value):  # NaN: nothing was comparable
                out[name] = max(out.get(name, 0.0), float(value))
    return out


class DirectorMetrics:
    """Desired states published and how long the broker took to acknowledge them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "edgefleet_director_desired_published",
            "desired-state publishes (retained, QoS 1) by outcome: ok (acknowledged) or "
            "failed (stored, delivered by a later publish)",
            ["outcome"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "edgefleet_director_publish_seconds",
            "one batch of desired-state publishes, until the broker acknowledged them all",
            buckets=PUBLISH_BUCKETS_S,
            registry=registry,
        )
        for outcome in ("ok", "failed"):
            self.published.labels(outcome)

    def record(self, elapsed_s: float, ok: int, failed: int) -> None:
        self.publish_seconds.observe(elapsed_s)
        self.published.labels("ok").inc(ok)
        self.published.labels("failed").inc(failed)


class RepositoryMetrics:
    """The image repository's HTTP traffic: requests by status and bytes sent."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "edgefleet_repository_requests",
            "requests to /v1/repository by kind (metadata, target, other) and HTTP status",
            ["kind", "status"],
            registry=registry,
        )
        self.bytes = Counter(
            "edgefleet_repository_sent_bytes",
            "response body bytes sent by /v1/repository, by kind",
            ["kind"],
            registry=registry,
        )
        for kind in REPOSITORY_KINDS:
            self.bytes.labels(kind)
            self.requests.labels(kind, "200")

    def record(self, kind: str, status: int, sent_bytes: int) -> None:
        self.requests.labels(kind, str(status)).inc()
        self.bytes.labels(kind).inc(sent_bytes)


class FleetMetrics:
    """Every metric one fleet service exports, grouped by the component that records it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ingest = IngestMetrics(registry)
        self.rollouts = RolloutMetrics(registry)
        self.drift = DriftMetrics(registry)
        self.director = DirectorMetrics(registry)
        self.repository = RepositoryMetrics(registry)
