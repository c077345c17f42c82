"""Map validated device messages to table rows. Pure.

A row is a tuple in the order of its ``*_COLUMNS`` constant (the writer hands tuples
straight to the driver's ``executemany``); times stay `datetime` here and are converted
for the dialect by `edgefleet.fleet.ingest.bulk`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from edgefleet.fleet.store.types import as_utc
from edgefleet.shared.messages import DriftMessage, EventMessage, StateMessage, TelemetryMessage

Row = tuple[Any, ...]

TELEMETRY_COLUMNS: Final = (
    "device_id",
    "seq",
    "ts",
    "received_at",
    "interval_s",
    "inferences",
    "errors",
    "inferences_total",
    "errors_total",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "cpu_percent",
    "rss_bytes",
    "disk_free_bytes",
    "outbox_depth",
    "outbox_dropped_total",
    "uptime_s",
    "model_name",
    "model_version",
)


def telemetry_row(message: TelemetryMessage, received_at: datetime) -> Row:
    """The `TelemetryRow` values of ``message``, in `TELEMETRY_COLUMNS` order."""
    latency = message.latency
    model = message.active_model
    return (
        message.device_id,
        message.seq,
        message.ts,
        received_at,
        message.interval_s,
        message.inferences,
        message.errors,
        message.inferences_total,
        message.errors_total,
        latency.p50_ms if latency else None,
        latency.p95_ms if latency else None,
        latency.p99_ms if latency else None,
        message.cpu_percent,
        message.rss_bytes,
        message.disk_free_bytes,
        message.outbox_depth,
        message.outbox_dropped_total,
        message.uptime_s,
        model.name if model else None,
        model.version if model else None,
    )


EVENT_COLUMNS: Final = (
    "device_id",
    "seq",
    "ts",
    "received_at",
    "kind",
    "model_name",
    "model_version",
    "model_sha256",
    "desired_seq",
    "rollout_id",
    "reason",
    "detail",
)


def event_row(message: EventMessage, received_at: datetime) -> Row:
    """The `EventRow` values of ``message``, in `EVENT_COLUMNS` order."""
    model = message.model
    return (
        message.device_id,
        message.seq,
        message.ts,
        received_at,
        message.kind.value,
        model.name if model else None,
        model.version if model else None,
        model.sha256 if model else None,
        message.desired_seq,
        message.rollout_id,
        message.reason,
        message.detail,
    )


DRIFT_COLUMNS: Final = (
    "device_id",
    "seq",
    "ts",
    "received_at",
    "model_name",
    "model_version",
    "window_start",
    "window_end",
    "count",
    "sketch",
)


def drift_row(message: DriftMessage, received_at: datetime) -> Row:
    """The `DriftWindowRow` values of ``message``, in `DRIFT_COLUMNS` order.

    The sketch is stored as its JSON form (what `edgefleet.fleet.drift.store` validates back).
    """
    model = message.model
    sketch = message.sketch
    return (
        message.device_id,
        message.seq,
        message.ts,
        received_at,
        model.name if model else None,
        model.version if model else None,
        message.window_start,
        message.window_end,
        message.count,
        sketch.model_dump(mode="json") if sketch is not None else None,
    )


def state_values(message: StateMessage) -> dict[str, Any]:
    """The `Device` columns a state message sets.

    An offline state (usually the last will, set at connect time) only flips ``online``:
    it must not blank out the hardware, tags or model that the birth reported.
    """
    values: dict[str, Any] = {
        "online": message.online,
        "last_state_seq": message.seq,
        "state_ts": message.ts,
        "offline_reason": None if message.online else (message.reason or "offline"),
    }
    if message.online:
        model = message.active_model
        values |= {
            "agent_version": message.agent_version,
            "hardware": message.hardware,
            "tags": list(message.tags),
            "platform": message.platform.model_dump(),
            "runtimes": list(message.runtimes),
            "model_name": model.name if model else None,
            "model_version": model.version if model else None,
            "model_sha256": model.sha256 if model else None,
        }
    return values


def seen_at(message_ts: datetime, received_at: datetime, *, retained: bool) -> datetime:
    """When a message shows the device was alive.

    A retained message is delivered again at every subscription, long after the device
    sent it, so its own timestamp (never later than now) counts, not the receive time.
    """
    if retained:
        return min(as_utc(message_ts), received_at)
    return received_at
