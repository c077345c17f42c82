"""Map validated device messages to table rows (plain dicts for bulk Core inserts). Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fleet.store.types import as_utc
from shared.messages import DriftMessage, EventMessage, StateMessage, TelemetryMessage


def telemetry_row(message: TelemetryMessage, received_at: datetime) -> dict[str, Any]:
    latency = message.latency
    model = message.active_model
    return {
        "device_id": message.device_id,
        "seq": message.seq,
        "ts": message.ts,
        "received_at": received_at,
        "interval_s": message.interval_s,
        "inferences": message.inferences,
        "errors": message.errors,
        "inferences_total": message.inferences_total,
        "errors_total": message.errors_total,
        "latency_p50_ms": latency.p50_ms if latency else None,
        "latency_p95_ms": latency.p95_ms if latency else None,
        "latency_p99_ms": latency.p99_ms if latency else None,
        "cpu_percent": message.cpu_percent,
        "rss_bytes": message.rss_bytes,
        "disk_free_bytes": message.disk_free_bytes,
        "outbox_depth": message.outbox_depth,
        "outbox_dropped_total": message.outbox_dropped_total,
        "uptime_s": message.uptime_s,
        "model_name": model.name if model else None,
        "model_version": model.version if model else None,
    }


def event_row(message: EventMessage, received_at: datetime) -> dict[str, Any]:
    model = message.model
    return {
        "device_id": message.device_id,
        "seq": message.seq,
        "ts": message.ts,
        "received_at": received_at,
        "kind": message.kind.value,
        "model_name": model.name if model else None,
        "model_version": model.version if model else None,
        "model_sha256": model.sha256 if model else None,
        "desired_seq": message.desired_seq,
        "rollout_id": message.rollout_id,
        "reason": message.reason,
        "detail": message.detail,
    }


def drift_row(message: DriftMessage, received_at: datetime) -> dict[str, Any]:
    model = message.model
    return {
        "device_id": message.device_id,
        "seq": message.seq,
        "ts": message.ts,
        "received_at": received_at,
        "model_name": model.name if model else None,
        "model_version": model.version if model else None,
        "window_start": message.window_start,
        "window_end": message.window_end,
        "count": message.count,
        "sketch": message.sketch,
    }


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
