"""Valid device messages for fleet tests, built from the shared wire models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgefleet.shared.messages import (
    EventKind,
    EventMessage,
    LatencyPercentiles,
    ModelRef,
    StateMessage,
    TelemetryMessage,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def state(device_id: str, seq: int, *, online: bool = True, **fields: object) -> StateMessage:
    values: dict[str, object] = {
        "ts": T0,
        "agent_version": "0.1.0",
        "hardware": "rpi4",
        "tags": ["lab", "line-1"],
        "runtimes": ["onnx"],
        "active_model": ModelRef(name="wine", version="1.0.0"),
    }
    values.update(fields)
    if not online:
        values = {"ts": T0, "reason": "will"} | fields
    return StateMessage(device_id=device_id, seq=seq, online=online, **values)  # type: ignore[arg-type]


def telemetry(device_id: str, seq: int, *, ts: datetime | None = None) -> TelemetryMessage:
    return TelemetryMessage(
        device_id=device_id,
        seq=seq,
        ts=ts or T0 + timedelta(seconds=seq % 10**6),
        interval_s=10.0,
        inferences=seq,
        errors=0,
        inferences_total=100 * seq,
        errors_total=0,
        latency=LatencyPercentiles(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0),
        cpu_percent=12.5,
        rss_bytes=5_000_000_000,
        disk_free_bytes=10**10,
        outbox_depth=0,
    )


def event(device_id: str, seq: int) -> EventMessage:
    return EventMessage(
        device_id=device_id,
        seq=seq,
        ts=T0,
        kind=EventKind.FAILED,
        reason="hash mismatch",
        model=ModelRef(name="wine", version="1.1.0"),
        detail={"expected": "ab", "found": "cd"},
    )
