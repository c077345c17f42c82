"""The agent's ``GET /metrics``: a snapshot of its own counters in Prometheus text format.

Rendered here rather than with prometheus-client: the agent already keeps every value
(lock-free inference tallies in `edgefleet.agent.metrics`, the outbox's depth, the update
runner's phase), so the library would only format a dozen lines, while adding a
dependency to every device and a second set of counters on the inference path. The
format is the text exposition format 0.0.4; the tests parse it with prometheus-client's
own parser.

`AgentSample` is what the daemon reads at scrape time; `render` is pure. Every label
takes values from a closed set (the update phases, three quantiles), plus the one active
model's name and version.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edgefleet.agent.update.policy import Phase
from edgefleet.shared.messages import LatencyPercentiles, ModelRef

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))


@dataclass(frozen=True, slots=True)
class AgentSample:
    """The agent's values at one scrape; None where a part is not running."""

    inferences_total: int
    errors_total: int
    latency: LatencyPercentiles | None
    outbox_depth: int
    outbox_dropped_total: int
    drift_windows_total: int
    connected: bool
    uptime_s: float
    active_model: ModelRef | None
    update_phase: Phase | None = None
    phases: Sequence[Phase] = field(default=tuple(Phase))


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its name, type, help line and samples as (labels, value)."""

    name: str
    kind: str
    help: str
    samples: tuple[tuple[tuple[tuple[str, str], ...], float], ...]


def families(sample: AgentSample) -> list[Family]:
    """The metric families of one snapshot."""

    def one(name: str, kind: str, text: str, value: float) -> Family:
        return Family(name, kind, text, (((), float(value)),))

    out = [
        one(
            "edgefleet_agent_inferences_total",
            "counter",
            "inferences that completed",
            sample.inferences_total,
        ),
        one(
            "edgefleet_agent_inference_errors_total",
            "counter",
            "inferences the runtime failed to complete",
            sample.errors_total,
        ),
    ]
    if sample.latency is not None:
        out.append(
            Family(
                "edgefleet_agent_inference_latency_seconds",
                "gauge",
                "inference latency percentiles over the last telemetry interval",
                tuple(
                    ((("quantile", q),), getattr(sample.latency, attr) / 1000.0)
                    for q, attr in QUANTILES
                ),
            )
        )
    out += [
        one(
            "edgefleet_agent_outbox_depth",
            "gauge",
            "messages in the outbox, not yet acknowledged by the broker",
            sample.outbox_depth,
        ),
        one(
            "edgefleet_agent_outbox_dropped_total",
            "counter",
            "messages the outbox could not keep (full, or a storage error)",
            sample.outbox_dropped_total,
        ),
        one(
            "edgefleet_agent_drift_windows_total",
            "counter",
            "drift windows queued for the fleet (the outbox delivers them)",
            sample.drift_windows_total,
        ),
        one(
            "edgefleet_agent_broker_connected",
            "gauge",
            "1 while connected to the broker",
            1 if sample.connected else 0,
        ),
        one("edgefleet_agent_uptime_seconds", "gauge", "seconds since start", sample.uptime_s),
    ]
    if sample.active_model is not None:
        labels = (("name", sample.active_model.name), ("version", sample.active_model.version))
        out.append(
            Family("edgefleet_agent_model_info", "gauge", "the model serving", ((labels, 1.0),))
        )
    if sample.update_phase is not None:
        out.append(
            Family(
                "edgefleet_agent_update_phase",
                "gauge",
                "1 for the signed-update runner's current phase, 0 for the others",
                tuple(
                    ((("phase", phase.value),), 1.0 if phase is sample.update_phase else 0.0)
                    for phase in sample.phases
                ),
            )
        )
    return out


def render(found: Iterable[Family]) -> bytes:
    """The text exposition of ``found``."""
    lines: list[str] = []
    for family in found:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            lines.append(
                f"{family.name}{{{rendered}}} {_number(value)}"
                if labels
                else f"{family.name} {_number(value)}"
            )
    return ("\n".join(lines) + "\n").encode()


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
